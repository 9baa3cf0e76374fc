"""arm64 under emulation against amd64 (issue 15): cold build time and size per layer of one
topic for both architectures, in one run.

    uv run python benchmarks/arch_builds.py [--topic distributed] [--out benchmarks/results]

For each architecture: BuildKit's cache mounts (uv, pip, apt) are pruned, then the topic's
base, framework and topic layers are built with --no-cache on the existing root filesystem (the
arm64 one is bootstrapped first if missing; its time is reported apart). Every wheel and .deb
is downloaded again. Writes arch_builds.{json,md,png} (bars: time per layer, both arches)."""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from mlsyskit import REPO_ROOT
from mlsyskit.data.catalog import load_catalog
from mlsyskit.data.config import load_config
from mlsyskit.engine import Engine
from mlsyskit.images.build import build_topics
from mlsyskit.images.rootfs import ensure_root_image

ARCHES = ("amd64", "arm64")


def build(engine: Engine, topic: str, arch: str) -> dict:
    catalog, config = load_catalog(), load_config()
    base = catalog.base("pypi", arch)
    start = time.monotonic()
    ensure_root_image(engine, base, config, print, lock=catalog.debian_lock)
    rootfs_s = time.monotonic() - start
    engine.prune_build_cache(cache_mounts_only=True)
    results = build_topics(engine, catalog, config, [catalog.topic(topic)], base_name=base.name, no_cache=True, log=print)
    layers = [
        {"layer": r.layer.kind, "name": r.layer.name, "seconds": round(r.seconds, 1), "bytes": r.size_bytes, "image_bytes": r.total_bytes} for r in results
    ]
    return {"arch": arch, "rootfs_s": round(rootfs_s, 1), "layers": layers}


def plot(runs: list[dict], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [layer["layer"] for layer in runs[0]["layers"]]
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.38
    for k, run in enumerate(runs):
        ax.bar([i + (k - 0.5) * width for i in range(len(names))], [layer["seconds"] for layer in run["layers"]], width, label=run["arch"])
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("seconds (cold, no cache)")
    ax.set_title("Build time per layer: amd64 native, arm64 under qemu")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--topic", default="distributed")
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    engine = Engine.connect()
    runs = [build(engine, args.topic, arch) for arch in ARCHES]
    (out / "arch_builds.json").write_text(json.dumps({"date": datetime.date.today().isoformat(), "topic": args.topic, "runs": runs}, indent=1) + "\n")
    lines = ["| layer | amd64 time | arm64 time (qemu) | arm64 / amd64 | amd64 size | arm64 size |", "|---|---|---|---|---|---|"]
    for amd, arm in zip(runs[0]["layers"], runs[1]["layers"]):
        lines.append(
            f"| {amd['layer']} ({amd['name']}) | {amd['seconds']} s | {arm['seconds']} s | {arm['seconds'] / max(amd['seconds'], 0.1):.1f}x | "
            f"{amd['bytes'] / 1e9:.2f} GB | {arm['bytes'] / 1e9:.2f} GB |"
        )
    total = [sum(layer["seconds"] for layer in run["layers"]) for run in runs]
    images = [run["layers"][-1]["image_bytes"] / 1e9 for run in runs]
    lines.append(f"| all three | {total[0]:.0f} s | {total[1]:.0f} s | {total[1] / total[0]:.1f}x | {images[0]:.2f} GB image | {images[1]:.2f} GB image |")
    (out / "arch_builds.md").write_text("\n".join(lines) + "\n")
    plot(runs, out / "arch_builds.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
