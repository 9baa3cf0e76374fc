"""Benchmark of the layer graph (issue 2): cold build time and size per layer, a warm
rebuild with no change, and a warm rebuild after adding one small topic dependency.
All three in one run, on a private copy of the kit's data whose tags are new (so nothing
is reused from earlier builds) and with BuildKit's layer cache and package caches cleared.

    uv run python benchmarks/build_layers.py [--topic distributed] [--out benchmarks/results]

Writes build_layers.json, build_layers.md (rows for BENCHMARKS.md) and build_layers.png.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from mlsyskit import REPO_ROOT
from mlsyskit.data.catalog import load_catalog
from mlsyskit.data.config import load_config
from mlsyskit.data.lockfile import uv_binary
from mlsyskit.engine import Engine
from mlsyskit.images.build import build_topics
from mlsyskit.report import size

SMALL_DEPENDENCY = "tabulate==0.9.0"


def copy_tree(target: Path, marker: str) -> Path:
    for name in ("images", "envs"):
        shutil.copytree(REPO_ROOT / name, target / name)
    shutil.copy(REPO_ROOT / "kit.toml", target / "kit.toml")
    shutil.copy(REPO_ROOT / "uv.lock", target / "uv.lock")  # the base's uv is hash-pinned from the kit's lock
    # A new input to the base layer: every tag in this copy is new.
    base = target / "images/base.Dockerfile"
    base.write_text(base.read_text() + f"\n# benchmark run {marker}\n")
    return target


def run(engine: Engine, tree: Path, topic: str, no_cache: bool = False):
    catalog = load_catalog(tree)
    start = time.monotonic()
    results = build_topics(
        engine,
        catalog,
        load_config(tree),
        [catalog.topic(topic)],
        base_name="pypi",
        no_cache=no_cache,
        log=lambda line: print(line, flush=True),
        tag_aliases=False,
    )
    return results, time.monotonic() - start


def rows(results) -> list[dict]:
    return [
        {
            "layer": r.layer.kind,
            "name": r.layer.name,
            "status": r.status,
            "seconds": round(r.seconds, 1),
            "layer_bytes": r.size_bytes,
            "image_bytes": r.total_bytes,
            "tag": r.layer.tag,
        }
        for r in results
    ]


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = [r["layer"] for r in data["cold"]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.27
    for i, phase in enumerate(("cold", "warm_no_change", "warm_bumped_dependency")):
        left.bar([x + (i - 1) * width for x in range(len(layers))], [r["seconds"] for r in data[phase]], width, label=phase)
    left.set_xticks(range(len(layers)), layers)
    left.set_ylabel("seconds")
    left.set_title("build time per layer")
    left.legend()
    right.bar(layers, [r["layer_bytes"] / 1e9 for r in data["cold"]], color="tab:gray")
    right.set_ylabel("GB (this layer alone)")
    right.set_title("image size per layer")
    fig.suptitle(f"{data['topic']} on the pypi base, {data['date']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(data: dict) -> str:
    lines = ["| phase | layer | status | time | layer size |", "|---|---|---|---|---|"]
    for phase in ("cold", "warm_no_change", "warm_bumped_dependency"):
        for r in data[phase]:
            lines.append(f"| {phase} | {r['layer']} ({r['name']}) | {r['status']} | {r['seconds']:.1f} s | {size(r['layer_bytes'])} |")
    t = data["totals"]
    lines += [
        "",
        f"Totals (one run, {data['date']}): cold {t['cold']:.1f} s (root filesystem ready), warm no change {t['warm_no_change']:.1f} s "
        f"(ratio {t['warm_no_change'] / t['cold']:.3f}), warm after adding `{SMALL_DEPENDENCY}` {t['warm_bumped_dependency']:.1f} s "
        f"(ratio {t['warm_bumped_dependency'] / t['cold']:.3f} of the cold image build; "
        f"topic layer alone {data['ratios']['bump_topic_vs_cold_topic_layer']:.2f} of its cold time).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topic", default="distributed")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark's images")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    engine = Engine.connect()
    marker = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S")
    with tempfile.TemporaryDirectory(prefix="mlsyskit-bench-") as tmp:
        tree = copy_tree(Path(tmp), marker)
        print("clearing BuildKit's package cache mounts (uv, pip, apt) for a cold build", flush=True)
        engine.prune_build_cache(cache_mounts_only=True)
        cold, cold_s = run(engine, tree, args.topic, no_cache=True)
        warm, warm_s = run(engine, tree, args.topic)
        pyproject = tree / "envs" / args.topic / "pyproject.toml"
        text = pyproject.read_text()
        pyproject.write_text(text.replace("dependencies = [", f'dependencies = [\n    "{SMALL_DEPENDENCY}",', 1))
        subprocess.run([uv_binary(), "lock", "--directory", str(pyproject.parent), "--quiet"], check=True)
        bumped, bumped_s = run(engine, tree, args.topic)
        data = {
            "topic": args.topic,
            "date": datetime.date.today().isoformat(),
            "machine": "2-core development machine, Docker 20.10 (BuildKit), no GPU",
            "cold": rows(cold),
            "warm_no_change": rows(warm),
            "warm_bumped_dependency": rows(bumped),
            "totals": {"cold": cold_s, "warm_no_change": warm_s, "warm_bumped_dependency": bumped_s},
            "ratios": {"bump_topic_vs_cold_topic_layer": bumped[-1].seconds / cold[-1].seconds},
        }
        if not args.keep:
            engine.remove_images({r["tag"] for phase in ("cold", "warm_bumped_dependency") for r in data[phase]})
    (args.out / "build_layers.json").write_text(json.dumps(data, indent=2))
    (args.out / "build_layers.md").write_text(markdown(data) + "\n")
    plot(data, args.out / "build_layers.png")
    print(markdown(data))


if __name__ == "__main__":
    main()
