"""Image sizes of every topic (issue 3): each image and each of its layers (root
filesystem, base, framework, topic), the disk all topics take with shared layers counted once
against the largest single image (goal <= 1.5x), and the `sglang` image against the
official SGLang runtime image (20 GB per sglang PR #13861; goal <= 10 GB).

    uv run python benchmarks/image_sizes.py [--base pypi] [--out benchmarks/results]

Reads the built images (`invoke build all` first; nothing is built here) through their
labels: a topic image names its parent (the framework or base image), which names its own.
A layer's size is its image's size minus its parent's, as `invoke build` reports it.
Writes topics_sizes.json, topics_sizes.md (rows for BENCHMARKS.md) and
topics_sizes.png (stacked bars: image size by layer)."""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from mlsyskit import LABEL_PREFIX, REPO_ROOT
from mlsyskit.data.catalog import load_catalog
from mlsyskit.engine import Engine
from mlsyskit.images.plan import topic_alias

OFFICIAL_SGLANG_BYTES = 20e9  # lmsysorg/sglang runtime image, per sglang PR #13861
SGLANG_GOAL_BYTES = 10e9
SHARED_GOAL_RATIO = 1.5


def chain(engine: Engine, ref: str) -> list[dict]:
    """[root filesystem, base, (framework), topic]: each image with its own size and the size
    it adds to its parent."""
    images = []
    while ref:
        found = engine.image(ref)
        if found is None:
            raise SystemExit(f"{ref} is not in the engine: run `invoke build all` first")
        labels = found.labels
        images.append(
            {
                "ref": ref,
                "id": found.id,
                "kind": labels.get(f"{LABEL_PREFIX}.kind", "rootfs"),
                "name": labels.get(f"{LABEL_PREFIX}.name", ref),
                "bytes": found.size,
            }
        )
        ref = labels.get(f"{LABEL_PREFIX}.parent", "")
    images.reverse()
    for parent, child in zip([None, *images], images):
        child["layer_bytes"] = child["bytes"] - (parent["bytes"] if parent else 0)
    return images


def measure(engine: Engine, base: str) -> dict:
    catalog = load_catalog()
    topics = {}
    unique: dict[str, dict] = {}  # image id -> the layer it adds, each once
    for topic in catalog.select([]):
        layers = chain(engine, topic_alias(topic.name, base))
        topics[topic.name] = {"framework": topic.framework, "bytes": layers[-1]["bytes"], "layers": layers}
        for layer in layers:
            unique.setdefault(layer["id"], layer)
    total_shared = sum(layer["layer_bytes"] for layer in unique.values())
    total_separate = sum(t["bytes"] for t in topics.values())
    largest = max(topics, key=lambda name: topics[name]["bytes"])
    return {
        "date": datetime.date.today().isoformat(),
        "base": base,
        "topics": topics,
        "total_shared_bytes": total_shared,
        "total_separate_bytes": total_separate,
        "largest_topic": largest,
        "largest_bytes": topics[largest]["bytes"],
        "shared_ratio": total_shared / topics[largest]["bytes"],
        "unique_layers": sorted(
            ({"kind": layer["kind"], "name": layer["name"], "layer_bytes": layer["layer_bytes"]} for layer in unique.values()),
            key=lambda layer: ("rootfs", "base", "framework", "topic").index(layer["kind"]),
        ),
        "sglang_bytes": topics.get("sglang", {}).get("bytes"),
    }


def gb(num_bytes: float) -> str:
    return f"{num_bytes / 1e9:.2f} GB"


def markdown(data: dict) -> str:
    lines = [
        "| topic | framework | image | root fs | base layer | framework layer | topic layer |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, topic in sorted(data["topics"].items(), key=lambda item: -item[1]["bytes"]):
        by_kind = {layer["kind"]: layer["layer_bytes"] for layer in topic["layers"]}
        lines.append(
            f"| {name} | {topic['framework'] or '(none)'} | **{gb(topic['bytes'])}** | {gb(by_kind.get('rootfs', 0))} "
            f"| {gb(by_kind.get('base', 0))} | {gb(by_kind['framework']) if 'framework' in by_kind else '-'} | {gb(by_kind['topic'])} |"
        )
    ratio = data["shared_ratio"]
    verdict = "meets" if ratio <= SHARED_GOAL_RATIO else "misses"
    lines += [
        "",
        "| figure | value | goal |",
        "|---|---|---|",
        f"| all {len(data['topics'])} topics, shared layers counted once | {gb(data['total_shared_bytes'])} | |",
        f"| the same images counted separately | {gb(data['total_separate_bytes'])} | |",
        f"| largest single image ({data['largest_topic']}) | {gb(data['largest_bytes'])} | |",
        f"| shared total / largest image | **{ratio:.2f}x** ({verdict} the goal) | <= {SHARED_GOAL_RATIO}x |",
    ]
    if data["sglang_bytes"]:
        sglang = data["sglang_bytes"]
        verdict = "meets" if sglang <= SGLANG_GOAL_BYTES else "misses"
        lines.append(
            f"| `sglang` image vs official SGLang runtime image (20 GB, sglang PR #13861) | **{gb(sglang)}** = "
            f"{sglang / OFFICIAL_SGLANG_BYTES:.2f}x of it ({verdict} the goal) | <= 10 GB |"
        )
    lines += ["", "Unique layers (what the shared total adds up):", "", "| layer | name | size |", "|---|---|---|"]
    lines += [f"| {layer['kind']} | {layer['name']} | {gb(layer['layer_bytes'])} |" for layer in data["unique_layers"]]
    lines += ["", f"Measured {data['date']} on the `{data['base']}` base with `uv run python benchmarks/image_sizes.py`."]
    return "\n".join(lines)


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(data["topics"], key=lambda name: data["topics"][name]["bytes"])
    # One row per topic image, and a last row: every unique layer once (the shared total).
    rows = [(name, data["topics"][name]["layers"]) for name in names]
    rows.append((f"all {len(names)} topics,\nshared layers once", data["unique_layers"]))
    colours = {"rootfs": "tab:gray", "base": "silver", "topic": "tab:red"}
    framework_colours = iter(["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown"])
    fig, ax = plt.subplots(figsize=(10, 5.5))
    labelled = set()
    for row, (_name, layers) in enumerate(rows):
        left = 0.0
        for layer in layers:
            key = layer["name"] if layer["kind"] == "framework" else layer["kind"]
            if key not in colours:
                colours[key] = next(framework_colours)
            label = {"rootfs": "root filesystem", "base": "base layer", "topic": "topic layer(s)"}.get(key, f"framework {key}")
            width = layer["layer_bytes"] / 1e9
            ax.barh(row, width, left=left, color=colours[key], edgecolor="white", linewidth=0.3, label=None if label in labelled else label)
            labelled.add(label)
            left += width
        ax.text(left + 0.2, row, f"{left:.1f} GB", va="center", fontsize=9)
    ax.set_yticks(range(len(rows)), [name for name, _ in rows])
    official = OFFICIAL_SGLANG_BYTES / 1e9
    ax.axvline(official, color="black", linestyle="--", linewidth=1)
    ax.text(official + 0.2, 0, "official SGLang runtime\nimage (20 GB)", fontsize=8, va="center")
    ax.set_xlabel("GB (uncompressed, as `docker images` reports)")
    ax.set_title(f"Topic images by layer ({data['base']} base, {data['date']})")
    ax.legend(loc="center right", fontsize=8)
    ax.set_xlim(0, max(OFFICIAL_SGLANG_BYTES, data["total_shared_bytes"]) / 1e9 * 1.2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="pypi")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data = measure(Engine.connect(), args.base)
    (args.out / "topics_sizes.json").write_text(json.dumps(data, indent=2) + "\n")
    (args.out / "topics_sizes.md").write_text(markdown(data) + "\n")
    plot(data, args.out / "topics_sizes.png")
    print(markdown(data))


if __name__ == "__main__":
    main()
