"""`invoke verify TOPIC`: would a rebuild from nothing give the same image?

The topic's layers (base, framework, topic) are rebuilt with no layer cache and empty package
caches (the kit's own BuildKit cache mounts for uv, pip and apt are pruned first, found by
the kit's build steps that made them; other projects' caches on the daemon stay) on the same root
filesystem, and the rebuilt image's content manifest (every path with its type, mode, size
and sha256, or a link's target) is compared with the existing image's. Modification times
are left out: Debian's engine 20.10 (BuildKit 0.8) cannot pin them, see README.

The existing tags stay on the existing images throughout: the rebuild is moved to a scratch
tag, compared, and removed (kept with `keep`). A rebuild that fails part way is removed too:
every layer it made, whichever step failed.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mlsyskit import IMAGE_PREFIX
from mlsyskit.data.catalog import Catalog, Topic
from mlsyskit.data.config import Config
from mlsyskit.engine import CacheRecord, Engine
from mlsyskit.errors import UsageError
from mlsyskit.images import sbom
from mlsyskit.images.build import build_topics
from mlsyskit.images.ensure import built_image
from mlsyskit.images.plan import freshness, topic_alias

# Paths whose content cannot be made the same from one build to the next, and why. Empty is
# the goal; every entry must say what makes it differ.
UNSTABLE: dict[str, str] = {}

Log = Callable[[str], None]
Entry = tuple[str, int, int, str]  # type, mode, size, sha256 (a link: its target)
# Every RUN step of the kit's Dockerfiles that has a cache mount starts by sourcing this file;
# BuildKit describes a cache mount by the step that made it ("cached mount TARGET from exec
# CMD"), which is how the kit's own are told apart from everyone else's on a shared daemon.
KIT_STEP_MARKER = "/usr/local/lib/mlsyskit/net.sh"


def kit_cache_mounts(records: Iterable[CacheRecord]) -> list[CacheRecord]:
    """The BuildKit cache mounts the kit's builds made (uv, pip, apt), not in use."""
    return [r for r in records if r.description.startswith("cached mount ") and KIT_STEP_MARKER in r.description and not r.in_use]


def empty_kit_cache_mounts(engine: Engine) -> int:
    """Remove the kit's cache mounts, one by one by ID; returns how many."""
    found = kit_cache_mounts(engine.build_cache_records())
    for record in found:
        engine.remove_build_cache_record(record.id)
    return len(found)


class _ChunkReader(io.RawIOBase):
    """A file object over an iterator of chunks (docker export's stream), for tarfile."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self.chunks: Iterator[bytes] = iter(chunks)
        self.pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        while not self.pending:
            self.pending = next(self.chunks, b"")
            if not self.pending:
                return 0
        n = min(len(buffer), len(self.pending))
        buffer[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        return n


def content_manifest(chunks: Iterable[bytes]) -> dict[str, Entry]:
    """{path: (type, mode, size, sha256 or link target)} of a filesystem tar stream."""
    found: dict[str, Entry] = {}
    with tarfile.open(fileobj=io.BufferedReader(_ChunkReader(chunks), 1 << 20), mode="r|") as archive:
        for member in archive:
            path = "/" + member.name.lstrip("./")
            if member.isfile():
                stream = archive.extractfile(member)
                assert stream is not None
                digest = hashlib.sha256()
                for block in iter(lambda: stream.read(1 << 20), b""):  # noqa: B023 (read at once)
                    digest.update(block)
                found[path] = ("file", member.mode, member.size, digest.hexdigest())
            elif member.issym() or member.islnk():
                found[path] = ("link" if member.issym() else "hardlink", member.mode, 0, member.linkname)
            else:
                found[path] = ("dir" if member.isdir() else "other", member.mode, 0, "")
    return found


@dataclass
class Comparison:
    compared: int
    only_before: list[str] = field(default_factory=list)
    only_after: list[str] = field(default_factory=list)
    changed: dict[str, list[str]] = field(default_factory=dict)  # path -> what differs

    def unexplained(self) -> list[str]:
        return [p for p in [*self.only_before, *self.only_after, *self.changed] if not unstable_reason(p)]

    def differing(self) -> int:
        return len(self.only_before) + len(self.only_after) + len(self.changed)


def unstable_reason(path: str) -> str:
    return next((why for pattern, why in UNSTABLE.items() if fnmatch.fnmatch(path, pattern)), "")


def compare(before: dict[str, Entry], after: dict[str, Entry]) -> Comparison:
    result = Comparison(compared=len(set(before) | set(after)))
    result.only_before = sorted(set(before) - set(after))
    result.only_after = sorted(set(after) - set(before))
    for path in sorted(set(before) & set(after)):
        if before[path] != after[path]:
            names = ("type", "mode", "size", "content")
            result.changed[path] = [n for n, a, b in zip(names, before[path], after[path]) if a != b]
    return result


def verify_topic(engine: Engine, catalog: Catalog, config: Config, topic: Topic, base_name: str, log: Log, keep: bool = False) -> Comparison:
    alias = topic_alias(topic.name, base_name)
    info = built_image(engine, topic, alias)
    if not freshness(catalog, config, topic, catalog.base(base_name), info.labels).current:
        raise UsageError(f"image {alias} is not what today's files build", fix=f"invoke build {topic.name} first, then verify it")
    chain = [info, *sbom.parents(engine, info)]
    tags = {tag: image.id for image in chain for tag in image.tags if tag.startswith(f"{IMAGE_PREFIX}/")}
    log(f"reading {alias} ({info.id[7:19]}): every file's mode, size and sha256")
    before = content_manifest(engine.image_files(alias))
    scratch = f"{IMAGE_PREFIX}/verify-{topic.name}:{base_name}"
    log("emptying the kit's BuildKit package caches (uv, pip, apt) and rebuilding with no layer cache")
    log(f"  removed {empty_kit_cache_mounts(engine)} cache mount(s) of the kit's builds")
    rebuilt_ids: set[str] = set()
    kept = ""  # the rebuild's own ID, once it is whole and kept
    try:
        try:
            build_topics(engine, catalog, config, [topic], base_name=base_name, no_cache=True, log=log)
            rebuilt = engine.image(alias)
            assert rebuilt is not None
            rebuilt_ids.add(rebuilt.id)
            engine.tag(rebuilt.id, scratch)
        finally:
            # the existing images keep their tags, whatever happened to the rebuild
            for tag, image_id in tags.items():
                now = engine.image(tag)
                if now is not None and now.id != image_id:
                    rebuilt_ids.add(now.id)
                engine.tag(image_id, tag)
        log(f"reading the rebuild {scratch} ({rebuilt.id[7:19]})")
        after = content_manifest(engine.image_files(scratch))
        if keep:
            kept = rebuilt.id
    finally:
        # the rebuilt layers, untagged now (BuildKit images name no parent to prune), whether
        # the rebuild failed part way or not; with `keep`, a whole rebuild stays on its scratch tag
        leftovers = sorted(rebuilt_ids - {kept} - set(tags.values()))
        engine.remove_images([*([] if kept else [scratch]), *leftovers])
    return compare(before, after)


def report(comparison: Comparison, limit: int = 20) -> str:
    lines = [f"compared {comparison.compared} paths: {comparison.differing()} differ, {len(comparison.unexplained())} outside the documented list"]
    groups = [("only in the existing image", comparison.only_before), ("only in the rebuild", comparison.only_after)]
    for title, paths in groups:
        if paths:
            lines.append(f"{title} ({len(paths)}):")
            lines += [f"  {p}" for p in paths[:limit]]
    if comparison.changed:
        lines.append(f"different ({len(comparison.changed)}):")
        for path, what in list(comparison.changed.items())[:limit]:
            why = unstable_reason(path)
            lines.append(f"  {path}: {', '.join(what)}" + (f"  [{why}]" if why else ""))
    return "\n".join(lines)


def write_json(comparison: Comparison, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"compared": comparison.compared, "only_before": comparison.only_before, "only_after": comparison.only_after, "changed": comparison.changed}
    path.write_text(json.dumps(data, indent=1) + "\n")
