"""`invoke verify`'s reach on a shared engine, without one: it empties only the kit's BuildKit
cache mounts (never every cache mount on the daemon), and a rebuild that fails part way leaves
no image behind and every tag where it was. (The real run: tests/integration/test_verify.py.)"""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from mlsyskit import REPO_ROOT
from mlsyskit.engine.build import CacheRecord
from mlsyskit.engine.records import ImageInfo
from mlsyskit.errors import BuildError
from mlsyskit.images import verify

KIT_RECORD = CacheRecord(
    id="kituv", description="cached mount /root/.cache/uv from exec /bin/sh -c . /usr/local/lib/mlsyskit/net.sh && uv pip install", in_use=False
)
RECORDS = [
    KIT_RECORD,
    CacheRecord(
        id="kitapt",
        description='cached mount /var/cache/apt from exec /bin/sh -c if [ -n "$APT_PACKAGES" ]; then . /usr/local/lib/mlsyskit/net.sh',
        in_use=False,
    ),
    CacheRecord(id="theirs", description="cached mount /root/.cache/pip from exec /bin/sh -c pip install -r requirements.txt", in_use=False),
    CacheRecord(id="layer", description="[2/3] RUN . /usr/local/lib/mlsyskit/net.sh && apt-get install x", in_use=False),  # a layer, not a cache mount
    CacheRecord(id="busy", description="cached mount /root/.cache/uv from exec /bin/sh -c . /usr/local/lib/mlsyskit/net.sh", in_use=True),
]


def test_only_the_kits_cache_mounts_are_chosen():
    assert [r.id for r in verify.kit_cache_mounts(RECORDS)] == ["kituv", "kitapt"]


def test_every_cache_mount_of_the_kits_dockerfiles_is_made_by_a_step_that_names_the_marker():
    """What makes kit_cache_mounts find them all: each RUN with a cache mount sources net.sh."""
    steps = []
    for dockerfile in (REPO_ROOT / "images").glob("*.Dockerfile"):
        text = dockerfile.read_text().replace("\\\n", " ")
        steps += [line for line in text.splitlines() if line.startswith("RUN ") and "type=cache" in line]
    assert len(steps) >= 4
    for step in steps:
        command = re.sub(r"--mount=\S+\s*", "", step)
        assert verify.KIT_STEP_MARKER in command, step


class FakeEngine:
    """Images by tag, and a build that moves the chain's tags to new IDs (as a rebuild does)."""

    def __init__(self) -> None:
        self.tags = {
            "mlsyskit/base-pypi:b": "sha256:base",
            "mlsyskit/framework-t:s": "sha256:framework",
            "mlsyskit/topic-x:t": "sha256:topic",
            "mlsyskit/x:pypi": "sha256:topic",
        }
        self.removed_records: list[str] = []
        self.removed_images: list[str] = []
        self.images = set(self.tags.values())

    def image(self, ref: str) -> ImageInfo | None:
        image_id = self.tags.get(ref, ref if ref in self.images else None)
        if image_id is None:
            return None
        return ImageInfo(id=image_id, tags=tuple(t for t, i in self.tags.items() if i == image_id), labels={})

    def tag(self, source: str, target: str) -> None:
        self.tags[target] = self.tags.get(source, source)

    def image_files(self, ref: str):
        return iter([])

    def build_cache_records(self):
        return RECORDS

    def remove_build_cache_record(self, record: str) -> None:
        self.removed_records.append(record)

    def remove_images(self, refs) -> None:
        for ref in refs:
            self.removed_images.append(ref)
            if ref in self.tags:
                del self.tags[ref]
            elif ref in self.images and ref not in self.tags.values():
                self.images.discard(ref)


def run_verify(monkeypatch, engine: FakeEngine, fail_at: str = "", keep: bool = False):
    chain = [engine.image("mlsyskit/framework-t:s"), engine.image("mlsyskit/base-pypi:b")]
    monkeypatch.setattr(verify.sbom, "parents", lambda e, info: chain)
    monkeypatch.setattr(verify, "freshness", lambda *a: SimpleNamespace(current=True))
    monkeypatch.setattr(verify, "content_manifest", lambda chunks: {})

    def build_topics(e, catalog, config, topics, **kwargs):
        for tag, new in (("mlsyskit/base-pypi:b", "sha256:base2"), ("mlsyskit/framework-t:s", "sha256:framework2"), ("mlsyskit/topic-x:t", "sha256:topic2")):
            if tag.split("/")[1].startswith(fail_at or "never"):
                raise BuildError(f"building {tag} failed", fix="see above")
            engine.images.add(new)
            engine.tags[tag] = new
        engine.tags["mlsyskit/x:pypi"] = "sha256:topic2"

    monkeypatch.setattr(verify, "build_topics", build_topics)
    catalog = SimpleNamespace(base=lambda name: None)
    topic = SimpleNamespace(name="x")
    return verify.verify_topic(engine, catalog, None, topic, "pypi", lambda line: None, keep=keep)  # type: ignore[arg-type]


BEFORE = {
    "mlsyskit/base-pypi:b": "sha256:base",
    "mlsyskit/framework-t:s": "sha256:framework",
    "mlsyskit/topic-x:t": "sha256:topic",
    "mlsyskit/x:pypi": "sha256:topic",
}


def test_a_whole_rebuild_is_compared_then_removed_and_only_the_kits_caches_were_emptied(monkeypatch):
    engine = FakeEngine()
    run_verify(monkeypatch, engine)
    assert engine.removed_records == ["kituv", "kitapt"]  # not "theirs", not the busy one
    assert engine.tags == BEFORE and engine.images == {"sha256:base", "sha256:framework", "sha256:topic"}


@pytest.mark.parametrize("fail_at", ["framework", "topic"])
def test_a_rebuild_that_fails_part_way_leaves_nothing_and_moves_no_tag(monkeypatch, fail_at):
    engine = FakeEngine()
    with pytest.raises(BuildError):
        run_verify(monkeypatch, engine, fail_at=fail_at)
    assert engine.tags == BEFORE
    assert engine.images == {"sha256:base", "sha256:framework", "sha256:topic"}, "the partial rebuild was left behind"


def test_keep_keeps_a_whole_rebuild_on_its_scratch_tag_only(monkeypatch):
    engine = FakeEngine()
    run_verify(monkeypatch, engine, keep=True)
    assert engine.tags == {**BEFORE, "mlsyskit/verify-x:pypi": "sha256:topic2"}
    assert engine.images == {"sha256:base", "sha256:framework", "sha256:topic", "sha256:topic2"}
