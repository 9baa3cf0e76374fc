"""Cold build time of every topic (issue 3), layer by layer, with the disk each build takes
at its peak: what CI's cold `.ci/run` spends on images.

    uv run python benchmarks/topic_builds.py [--topics all] [--out benchmarks/results]

Builds on a private copy of the kit's data in which every framework and topic layer has a new
tag and its own, empty uv cache mount, so nothing is reused: no layer, no downloaded or
built wheel. The base layer is reused (its cold time is benchmarks/build_layers.py's).
Topics are built framework by framework, as CI builds them one after the other; a
framework's cold time is counted once, with the first topic on it. After each framework's
topics the copy's images and build records are removed, so the run needs the disk of one
framework group only.
Disk: the engine's file system is sampled every second; "peak" is the most it held above
the level before the group, the images' own size included.

Writes topic_builds.json and topic_builds.md (rows for BENCHMARKS.md)."""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from mlsyskit import REPO_ROOT
from mlsyskit.data.catalog import load_catalog
from mlsyskit.data.config import load_config
from mlsyskit.engine import Engine
from mlsyskit.images.build import build_topics


def copy_tree(target: Path, marker: str) -> Path:
    for name in ("images", "envs"):
        shutil.copytree(REPO_ROOT / name, target / name)
    shutil.copy(REPO_ROOT / "kit.toml", target / "kit.toml")
    shutil.copy(REPO_ROOT / "uv.lock", target / "uv.lock")  # the base's uv is hash-pinned from the kit's lock
    env = target / "images/env.Dockerfile"
    text = env.read_text()
    # Its own uv cache (cold: no wheel downloaded or built before) and a marker in the
    # install step, which names this run's build records for the clean-up.
    text = text.replace("id=mlsyskit-uv,", f"id=mlsyskit-uv-{marker},")
    text = text.replace(" && python3 /usr/local/lib/mlsyskit/link_cuda.py", f" && python3 /usr/local/lib/mlsyskit/link_cuda.py && : {marker}")
    assert marker in text
    env.write_text(text)
    return target


class DiskSampler:
    """The most the engine's file system held, sampled every second from `start()`."""

    def __init__(self, path: str = "/var/lib/docker") -> None:
        self.path = path if Path(path).exists() else "/"
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def used(self) -> int:
        return shutil.disk_usage(self.path).used

    def start(self) -> int:
        self.peak = start = self.used()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return start

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self.peak = max(self.peak, self.used())

    def stop(self) -> int:
        self._stop.set()
        if self._thread:
            self._thread.join()
        return max(self.peak, self.used())


def clean_up(engine: Engine, tags: set[str], marker: str) -> None:
    """Remove this run's images, then its build records (found by the marker) and its
    uv cache mount: nothing of anyone else's."""
    engine.remove_images(tags)
    records = engine.build_cache_records()
    ids = [r.id for r in records if marker in r.description and not r.in_use]
    for record in ids:
        engine.remove_build_cache_record(record)


def group_by_framework(catalog, names: list[str]) -> list[list]:
    groups: dict[str, list] = {}
    for topic in catalog.select(names):
        groups.setdefault(topic.framework, []).append(topic)
    return [groups[framework] for framework in sorted(groups, key=lambda f: (f == "", f))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topics", default="all", help="comma-separated, or all")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    engine = Engine.connect()
    marker = "mlsyskit-bench-" + datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S")
    names = [] if args.topics == "all" else args.topics.split(",")
    rows, groups_out = [], []
    with tempfile.TemporaryDirectory(prefix="mlsyskit-bench-") as tmp:
        tree = copy_tree(Path(tmp), marker)
        catalog, config = load_catalog(tree), load_config(tree)
        sampler = DiskSampler()
        for group in group_by_framework(catalog, names):
            before = sampler.start()
            group_start = time.monotonic()
            tags: set[str] = set()
            try:
                for topic in group:
                    start = time.monotonic()
                    results = build_topics(
                        engine, catalog, config, [topic], base_name="pypi",
                        log=lambda line: print(line, flush=True), tag_aliases=False,
                    )  # fmt: skip
                    seconds = time.monotonic() - start
                    for r in results:
                        if r.layer.kind != "base":
                            tags.add(r.layer.tag)
                    built = {r.layer.kind: r for r in results if r.status == "built"}
                    rows.append(
                        {
                            "topic": topic.name,
                            "framework": topic.framework,
                            "framework_seconds": round(built["framework"].seconds, 1) if "framework" in built else None,
                            "topic_seconds": round(built["topic"].seconds, 1),
                            "total_seconds": round(seconds, 1),
                            "topic_layer_bytes": built["topic"].size_bytes,
                            "framework_layer_bytes": built["framework"].size_bytes if "framework" in built else None,
                            "image_bytes": results[-1].total_bytes,
                        }
                    )
                peak = sampler.stop()
                unique = sum(r["topic_layer_bytes"] + (r["framework_layer_bytes"] or 0) for r in rows if r["topic"] in {t.name for t in group})
                groups_out.append(
                    {
                        "framework": group[0].framework or "(none)",
                        "topics": [t.name for t in group],
                        "seconds": round(time.monotonic() - group_start, 1),
                        "peak_disk_bytes": peak - before,
                        "layers_bytes": unique,
                    }
                )
            finally:
                sampler.stop()
                clean_up(engine, tags, marker)
        clean_up(engine, set(), marker)
    data = {
        "date": datetime.date.today().isoformat(),
        "machine": "2-core development machine (shared with other builds), Docker 20.10 (BuildKit), no GPU",
        "rows": rows,
        "groups": groups_out,
        "total_seconds": round(sum(g["seconds"] for g in groups_out), 1),
    }
    (args.out / "topic_builds.json").write_text(json.dumps(data, indent=2) + "\n")
    (args.out / "topic_builds.md").write_text(markdown(data) + "\n")
    print(markdown(data))


def markdown(data: dict) -> str:
    def t(value):
        return "-" if value is None else f"{value:.0f} s"

    def gb(value):
        return "-" if value is None else f"{value / 1e9:.2f} GB"

    lines = ["| topic | framework | framework layer (cold) | topic layer (cold) | topic layer size | image |", "|---|---|---|---|---|---|"]
    for r in data["rows"]:
        lines.append(
            f"| {r['topic']} | {r['framework'] or '(none)'} | {t(r['framework_seconds'])} | {t(r['topic_seconds'])} "
            f"| {gb(r['topic_layer_bytes'])} | {gb(r['image_bytes'])} |"
        )
    lines += ["", "| framework group | topics | build time | layers written | peak disk above start |", "|---|---|---|---|---|"]
    for g in data["groups"]:
        lines.append(f"| {g['framework']} | {', '.join(g['topics'])} | {g['seconds'] / 60:.1f} min | {gb(g['layers_bytes'])} | {gb(g['peak_disk_bytes'])} |")
    lines += [
        "",
        f"All frameworks and topics cold, one after the other: **{data['total_seconds'] / 60:.1f} min** "
        f"(base layer and root filesystem not included). {data['date']}, {data['machine']}; "
        "`uv run python benchmarks/topic_builds.py`.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
