"""Offline bundles: one file that carries topics (or a stack) to a machine with no network.

A bundle is a plain tar (no compression: the image layers are mostly compressed wheels
already, and 2 cores would spend minutes on gzip for little):

    mlsyskit-bundle/images.tar         `docker save` of every image together: each layer once
    mlsyskit-bundle/sbom/*.cdx.json    one CycloneDX SBOM per topic image
    mlsyskit-bundle/locks/...          the uv locks the images were installed from
    mlsyskit-bundle/compose/...        a stack's compose file, its scripts and the smoke tests
    mlsyskit-bundle/manifest.json      last: kit version, images (ID, tags, labels), and the
                                       size and sha256 of every other member

images.tar is streamed from `docker save` straight into the bundle (its header is written
when its size is known), so writing needs no second copy on disk. Loading reads the file
twice: first every checksum against the manifest (a truncated, damaged or foreign file is
refused before anything reaches the engine), then `docker load`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from mlsyskit import IMAGE_PREFIX, KIT_VERSION, LABEL_PREFIX, REPO_ROOT
from mlsyskit.data.catalog import Catalog, Topic
from mlsyskit.engine import Engine, ImageInfo
from mlsyskit.errors import KitError, UsageError
from mlsyskit.images import sbom
from mlsyskit.images.plan import topic_alias
from mlsyskit.report import size as human_size

FORMAT = "mlsyskit-bundle/1"
ROOT = "mlsyskit-bundle"
IMAGES = f"{ROOT}/images.tar"
MANIFEST = f"{ROOT}/manifest.json"
BLOCK = 512
RECORD = 20 * BLOCK
CHUNK = 1 << 20
RECOPY = "copy the bundle again and compare its size and sha256 with the sender's (`ls -l`, `sha256sum`)"

Log = Callable[[str], None]


class Progress:
    """One line every 5% or every 10 s of a long copy: how far, how fast."""

    def __init__(self, log: Log, what: str, total: int) -> None:
        self.log, self.what, self.total = log, what, max(total, 1)
        self.start = self.last_time = time.monotonic()
        self.last_share = 0.0
        self.done_bytes = 0

    def add(self, n: int) -> None:
        self.done_bytes += n
        now, share = time.monotonic(), self.done_bytes / self.total
        if share - self.last_share >= 0.05 or now - self.last_time >= 10:
            self.last_share, self.last_time = share, now
            self.log(f"{self.what}: {human_size(self.done_bytes)} of ~{human_size(self.total)} ({min(share, 1):.0%}) at {self.rate()}")

    def rate(self) -> str:
        return f"{human_size(int(self.done_bytes / max(time.monotonic() - self.start, 1e-3)))}/s"

    def seconds(self) -> float:
        return time.monotonic() - self.start


@dataclass(frozen=True)
class Contents:
    """What a bundle carries: topic images (and their parents), a stack's files."""

    topics: list[Topic]
    stack: str  # "" when topics were named
    base: str


def resolve(catalog: Catalog, names: list[str], base: str) -> Contents:
    """`TOPIC[,TOPIC]` or one `STACK` name."""
    from mlsyskit.compose.stacks import load_stack, stack_names

    if not names:
        raise UsageError("name the topics or the stack to bundle", fix="e.g. `invoke bundle docs -o docs.bundle`")
    if len(names) == 1 and names[0] in stack_names() and names[0] not in catalog.topics:
        stack = load_stack(names[0])
        return Contents([catalog.topic(t) for t in stack.topics()], stack.name, base)
    return Contents(catalog.select(names), "", base)


def image_chain(engine: Engine, topic: Topic, base: str) -> list[ImageInfo]:
    """The topic image and its parents, as the engine has them (all needed: `invoke build`
    on the other side then finds every layer current)."""
    alias = topic_alias(topic.name, base)
    info = engine.image(alias)
    if info is None:
        raise UsageError(f"image {alias} is not built", fix=f"invoke build {topic.name}")
    return [info, *sbom.parents(engine, info)]


def _header(name: str, size: int, mtime: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, mtime, 0o644
    info.uname = info.gname = "root"
    # GNU format: one 512-byte header whatever the size (images pass ustar's 8 GiB limit)
    header = info.tobuf(format=tarfile.GNU_FORMAT)
    assert len(header) == BLOCK, name
    return header


def _write_member(out: IO[bytes], name: str, data: bytes, mtime: int) -> dict[str, Any]:
    out.write(_header(name, len(data), mtime) + data + b"\0" * (-len(data) % BLOCK))
    return {"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _stream_member(out: IO[bytes], name: str, chunks: Iterable[bytes], mtime: int, progress: Progress) -> dict[str, Any]:
    """A member whose size is known only at its end: a placeholder header, the data, then
    the real header written over the placeholder."""
    start = out.tell()
    out.write(b"\0" * BLOCK)
    digest, size = hashlib.sha256(), 0
    for chunk in chunks:
        out.write(chunk)
        digest.update(chunk)
        size += len(chunk)
        progress.add(len(chunk))
    out.write(b"\0" * (-size % BLOCK))
    end = out.tell()
    out.seek(start)
    out.write(_header(name, size, mtime))
    out.seek(end)
    return {"name": name, "size": size, "sha256": digest.hexdigest()}


def _kit_files(contents: Contents, catalog: Catalog) -> dict[str, Path]:
    """{name in the bundle: file}: the locks, and a stack's compose file with what it mounts."""
    files: dict[str, Path] = {"locks/uv.lock": catalog.root / "uv.lock"}
    for topic in contents.topics:
        for path in sbom.image_locks(catalog, topic)[1:]:
            files[f"locks/{path.parent.relative_to(catalog.root)}/uv.lock"] = path
    if contents.stack:
        compose = catalog.root / "compose"
        files[f"compose/{contents.stack}.yml"] = compose / f"{contents.stack}.yml"
        for path in sorted((compose / "scripts").iterdir()):
            files[f"compose/scripts/{path.name}"] = path
        for path in sorted((catalog.root / "smoke_tests").glob("*.py")):
            files[f"smoke_tests/{path.name}"] = path
    return files


def write_bundle(engine: Engine, catalog: Catalog, contents: Contents, out: Path, log: Log) -> dict[str, Any]:
    """Write the bundle to `out` (through a temporary file beside it, renamed at the end: an
    interrupted run leaves no file that looks whole). Returns the manifest."""
    chains = {t.name: image_chain(engine, t, contents.base) for t in contents.topics}
    images: dict[str, ImageInfo] = {}
    for chain in chains.values():
        for info in chain:
            images.setdefault(info.id, info)
    refs = sorted({tag for info in images.values() for tag in info.tags if tag.startswith(f"{IMAGE_PREFIX}/")})
    # what `docker save` will write, near enough: each image's size beyond its parent's
    by_ref = {tag: info for info in images.values() for tag in info.tags}
    estimate = sum(info.size - (by_ref[p].size if (p := info.labels.get(sbom.PARENT_LABEL, "")) in by_ref else 0) for info in images.values())
    newest = max(int(t.timestamp()) if (t := sbom.image_time(info.created)) else 0 for info in images.values())

    out.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(out.parent).free
    if free < estimate * 1.05:
        raise KitError(
            f"not enough space for the bundle in {out.parent}: it needs about {human_size(estimate)}, {human_size(free)} is free",
            fix="free space there, or write it elsewhere with -o",
        )
    with tempfile.TemporaryDirectory(prefix="mlsyskit-sbom-") as scratch:
        sboms = {}
        for topic in contents.topics:
            path = Path(scratch) / f"{topic.name}-{contents.base}.cdx.json"
            sbom.write_sbom(engine, catalog, topic, topic_alias(topic.name, contents.base), path, log=log)
            sboms[f"sbom/{path.name}"] = path
        partial = out.with_name(out.name + ".partial")
        try:
            with partial.open("wb") as handle:
                log(f"saving {len(images)} images ({', '.join(refs)}) into {out}")
                progress = Progress(log, "bundle", estimate)
                files = [_stream_member(handle, IMAGES, engine.save(refs), newest, progress)]
                for name, path in [*sorted(sboms.items()), *sorted(_kit_files(contents, catalog).items())]:
                    files.append(_write_member(handle, f"{ROOT}/{name}", path.read_bytes(), newest))
                manifest = {
                    "format": FORMAT,
                    "kit_version": KIT_VERSION,
                    "base": contents.base,
                    "topics": [t.name for t in contents.topics],
                    "stack": contents.stack,
                    "images": [
                        {"id": info.id, "tags": sorted(info.tags), "labels": {k: v for k, v in sorted(info.labels.items()) if k.startswith(LABEL_PREFIX)}}
                        for info in sorted(images.values(), key=lambda i: sorted(i.tags))
                    ],
                    "files": files,
                }
                _write_member(handle, MANIFEST, json.dumps(manifest, indent=1).encode() + b"\n", newest)
                handle.write(b"\0" * (2 * BLOCK))
                handle.write(b"\0" * (-handle.tell() % RECORD))
            partial.replace(out)
        except OSError as exc:  # a full disk, a lost mount: one line, no half-written file
            partial.unlink(missing_ok=True)
            raise KitError(f"cannot write {out}: {exc.strerror or exc}", fix="free space there, or write it elsewhere with -o") from None
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    log(f"bundle written in {progress.seconds():.0f} s ({progress.rate()})")
    return manifest


# --- load ----------------------------------------------------------------------------------


def _chunks(stream: IO[bytes], progress: Progress | None = None) -> Iterator[bytes]:
    for chunk in iter(lambda: stream.read(CHUNK), b""):
        if progress is not None:
            progress.add(len(chunk))
        yield chunk


def verify(path: Path, log: Log) -> dict[str, Any]:
    """Read the whole bundle once: every member's size and sha256 against the manifest, and
    the manifest's format and kit version. Returns the manifest; raises a one-line error."""
    if not path.is_file():
        raise UsageError(f"no bundle at {path}", fix="give the path of a file written by `invoke bundle`")
    found: dict[str, dict[str, Any]] = {}
    manifest: dict[str, Any] | None = None
    progress = Progress(log, "checking", path.stat().st_size)
    try:
        with tarfile.open(path, "r:") as archive:
            for member in archive:
                stream = archive.extractfile(member)
                if stream is None:
                    raise KitError(f"{path}: unexpected entry {member.name} (not a kit bundle)", fix=RECOPY)
                if member.name == MANIFEST:
                    manifest = json.loads(stream.read())
                    continue
                digest, size = hashlib.sha256(), 0
                for chunk in _chunks(stream, progress):
                    digest.update(chunk)
                    size += len(chunk)
                found[member.name] = {"size": size, "sha256": digest.hexdigest()}
    except (tarfile.TarError, EOFError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise KitError(f"{path} is truncated or not a kit bundle ({exc})", fix=RECOPY) from None
    if manifest is None:
        raise KitError(f"{path} is truncated or not a kit bundle (no {MANIFEST} at its end)", fix=RECOPY)
    if manifest.get("format") != FORMAT:
        raise UsageError(f"{path} is a {manifest.get('format')!r} bundle; this kit reads {FORMAT}", fix="load it with the kit that wrote it")
    if manifest.get("kit_version") != KIT_VERSION:
        raise UsageError(
            f"{path} was written by mlsyskit {manifest.get('kit_version')}; this kit is {KIT_VERSION}",
            fix=f"load it with mlsyskit {manifest.get('kit_version')}, or write the bundle again with this kit",
        )
    expected = {f["name"]: f for f in manifest["files"]}
    for name in sorted(set(expected) | set(found)):
        if name not in found:
            raise KitError(f"{path} is truncated or damaged: {name} is missing", fix=RECOPY)
        if name not in expected:
            raise KitError(f"{path} was changed after it was written: {name} is not in its manifest", fix=RECOPY)
        if (found[name]["size"], found[name]["sha256"]) != (expected[name]["size"], expected[name]["sha256"]):
            raise KitError(f"{path} is damaged: {name} does not match its sha256 in the manifest", fix=RECOPY)
    log(f"checked {len(found)} files ({human_size(progress.done_bytes)}) against the manifest in {progress.seconds():.0f} s")
    return manifest


def load_bundle(engine: Engine, path: Path, unpack_to: Path, log: Log) -> dict[str, Any]:
    """Verify, `docker load` the images, check IDs, tags and labels, and unpack the other
    files under `unpack_to`. Tags that were not there before are removed again on failure."""
    manifest = verify(path, log)
    wanted = {tag: image["id"] for image in manifest["images"] for tag in image["tags"]}
    before = {tag for tag in wanted if engine.image(tag) is not None}
    size = next(f["size"] for f in manifest["files"] if f["name"] == IMAGES)
    progress = Progress(log, "loading", size)
    try:
        with tarfile.open(path, "r:") as archive:
            stream = archive.extractfile(IMAGES)
            assert stream is not None
            engine.load(_chunks(stream, progress))
        for image in manifest["images"]:
            info = engine.image(image["id"])
            labels = {k: v for k, v in (info.labels if info else {}).items() if k.startswith(LABEL_PREFIX)}
            missing = [t for t in image["tags"] if info is None or t not in info.tags]
            if info is None or missing or labels != image["labels"]:
                raise KitError(f"after `docker load`, image {image['id'][:19]} is not as bundled (tags missing: {missing or 'none'})", fix=RECOPY)
    except BaseException:
        engine.remove_images(sorted(set(wanted) - before))
        raise
    log(f"loaded {len(manifest['images'])} images in {progress.seconds():.0f} s ({progress.rate()})")
    with tarfile.open(path, "r:") as archive:
        members = [m for m in archive.getmembers() if m.name not in (IMAGES, MANIFEST)]
        for member in members:
            member.name = member.name.removeprefix(f"{ROOT}/")
        archive.extractall(unpack_to, members=members, filter="data")
    (unpack_to / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def default_unpack_dir(path: Path) -> Path:
    return REPO_ROOT / ".kit" / "bundles" / path.name.split(".")[0]
