"""`invoke verify`: the `distributed` topic rebuilt from nothing (no layer cache, package caches
emptied) holds the same files as the image, byte for byte, and the existing tags never move.
Runs last (the file name): it empties BuildKit's package caches."""

from __future__ import annotations

import json

from mlsyskit import REPO_ROOT
from mlsyskit.engine import Engine
from tests.integration.conftest import run_kit


def test_a_rebuild_of_distributed_from_nothing_matches_its_image_file_for_file(engine: Engine, build_topic):
    build_topic("distributed")
    before = {tag: engine.image(tag).id for tag in ("mlsyskit/distributed:pypi",)}  # type: ignore[union-attr]
    proc = run_kit("verify", "distributed", timeout=2400)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr
    assert "rebuilding with no layer cache" in proc.stdout and "[3/3] topic distributed: building" in proc.stdout
    report = json.loads((REPO_ROOT / ".kit" / "verify" / "distributed-pypi.json").read_text())
    assert report["compared"] > 40_000  # the whole OS, Python, torch and CUDA, not a sample
    assert report["only_before"] == [] and report["only_after"] == [] and report["changed"] == {}
    assert f"compared {report['compared']} paths: 0 differ" in proc.stdout
    # the user's tags stay on the images they had; the rebuild is gone
    assert {tag: engine.image(tag).id for tag in before} == before  # type: ignore[union-attr]
    assert not engine.image_exists("mlsyskit/verify-distributed:pypi")


def test_verify_of_an_unbuilt_topic_is_one_line(engine: Engine):
    proc = run_kit("verify", "nope", timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error: unknown topic 'nope'"), proc.stderr
