"""Offline bundles (issue 14): size against the images' summed size and against `docker save`
of each image on its own, and the time to write, check and load.

    uv run python benchmarks/bundle_sizes.py [--names docs nccl-2node] [--out benchmarks/results]

For each name (a topic, or a compose stack), in one run: `invoke bundle NAME`; the bytes `docker save`
writes for each of the bundle's images on its own (counted, not stored); the images' summed
sizes as `docker images` shows them; then the topic images' own tags are removed and
`invoke load` restores them (the parents, shared with other topics, stay: the load writes the
missing layers and reads the rest). Writes bundle_sizes.{json,md,png} (grouped bars)."""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from mlsyskit import REPO_ROOT
from mlsyskit.engine import Engine
from mlsyskit.images import bundle


def kit(*args: str) -> tuple[float, str]:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "invoke", *args], cwd=REPO_ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"invoke {' '.join(args)} failed: {proc.stderr.strip()}")
    return time.monotonic() - start, proc.stdout


def measure(engine: Engine, name: str, folder: Path) -> dict:
    path = folder / f"{name}.bundle"
    write_s, _ = kit("bundle", name, "-o", str(path))
    with tarfile.open(path) as archive:
        stream = archive.extractfile(bundle.MANIFEST)
        assert stream is not None
        manifest = json.load(stream)
    images = manifest["images"]
    summed = sum(engine.image(i["id"]).size for i in images)  # type: ignore[union-attr]
    separate = 0
    for image in images:
        separate += sum(len(chunk) for chunk in engine.save([image["tags"][0]]))
    topic_tags = [t for i in images if i["labels"].get("org.mlsyskit.kind") == "topic" for t in i["tags"]]
    engine.remove_images(topic_tags)
    load_s, out = kit("load", str(path), "--to", str(folder / f"{name}-unpacked"))
    check_s = float(next(line.split(" in ")[-1].split(" s")[0] for line in out.splitlines() if line.startswith("checked ")))
    row = {
        "name": name,
        "images": [", ".join(i["tags"]) for i in images],
        "bundle_bytes": path.stat().st_size,
        "summed_image_bytes": summed,
        "separate_saves_bytes": separate,
        "write_s": round(write_s, 1),
        "load_s": round(load_s, 1),
        "check_s": check_s,
    }
    path.unlink()
    return row


def plot(rows: list[dict], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    keys = [("summed_image_bytes", "images' summed sizes"), ("separate_saves_bytes", "docker save of each image"), ("bundle_bytes", "invoke bundle (one file)")]
    width = 0.25
    for k, (key, label) in enumerate(keys):
        ax.bar([i + (k - 1) * width for i in range(len(rows))], [r[key] / 1e9 for r in rows], width, label=label)
    ax.set_xticks(range(len(rows)), [r["name"] for r in rows])
    ax.set_ylabel("GB")
    ax.set_title("Offline bundle size (shared layers once)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--names", nargs="+", default=["docs", "nccl-2node"])
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    engine = Engine.connect()
    with tempfile.TemporaryDirectory(prefix="bundle-bench-", dir=REPO_ROOT / ".kit") as folder:
        rows = [measure(engine, name, Path(folder)) for name in args.names]
    date = datetime.date.today().isoformat()
    (out / "bundle_sizes.json").write_text(json.dumps({"date": date, "rows": rows}, indent=1) + "\n")
    header = "| bundle | images | images' summed size | `docker save` each | bundle file | bundle / summed | write | check | load (parents there) |"
    lines = [header, "|---" * 9 + "|"]
    for r in rows:
        lines.append(
            f"| {r['name']} | {len(r['images'])} | {r['summed_image_bytes'] / 1e9:.2f} GB | {r['separate_saves_bytes'] / 1e9:.2f} GB | "
            f"{r['bundle_bytes'] / 1e9:.2f} GB | {r['bundle_bytes'] / r['summed_image_bytes']:.2f} | "
            f"{r['write_s']} s | {r['check_s']:.0f} s | {r['load_s']} s |"
        )
    (out / "bundle_sizes.md").write_text("\n".join(lines) + "\n")
    plot(rows, out / "bundle_sizes.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
