"""Issue 13's side-by-side figures from one GPU run folder (benchmarks/gpu/health_run.sh):
busbw by message size for each collective, smoke test against nccl-tests, and GEMM TFLOP/s
by size against the plain loop; a PNG each and the markdown rows of BENCHMARKS.md.

    python benchmarks/gpu/plot_health.py benchmarks/gpu/2026-11-30-h200x2-health
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

#: smoke name -> (nccl-tests binary stem, the column the smoke test's call matches: all-reduce
#: runs in place, the others out of place)
PAIRS = {"all_reduce": ("all_reduce", "in"), "all_gather": ("all_gather", "out"), "reduce_scatter": ("reduce_scatter", "out"), "all_to_all": ("alltoall", "out")}


def nccl_tests(path: Path, place: str) -> dict[int, float]:
    """{size: busbw} from an *_perf table (out-of-place busbw is column 7, in-place 11)."""
    column = 7 if place == "out" else 11
    rows = {}
    for line in path.read_text().splitlines():
        cells = line.split()
        if len(cells) >= 12 and cells[0].isdigit():
            rows[int(cells[0])] = float(cells[column])
    return rows


def label(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n // size} {unit}"
    return f"{n} B"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder", type=Path)
    args = parser.parse_args()
    folder = args.folder
    smoke = json.loads((folder / "nccl_collectives.json").read_text())["figures"]
    nvlink = smoke.get("nvlink_gbps") or 450.0

    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2), sharey=True)
    print("| collective | size | smoke busbw GB/s | nccl-tests busbw GB/s | smoke / nccl-tests | of NVLink (450 GB/s per direction) |")
    print("|---|---|---|---|---|---|")
    for ax, (name, (binary, place)) in zip(axes, PAIRS.items()):
        ref = nccl_tests(folder / f"nccl_tests_{binary}.txt", place)
        rows = smoke["collectives"][name]
        sizes = [r["bytes"] for r in rows]
        ax.plot(sizes, [r["busbw_gbps"] for r in rows], "o-", label="smoke_tests.nccl")
        ax.plot(sizes, [ref.get(s, float("nan")) for s in sizes], "s--", label=f"nccl-tests {binary}_perf ({'in-place' if place == 'in' else 'out-of-place'})")
        ax.axhline(nvlink, color="grey", linestyle=":", label=f"NVLink {nvlink:g} GB/s per direction")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [label(s) for s in sizes], rotation=45)
        ax.set_title(name)
        ax.set_xlabel("message size (nccl-tests' size)")
        for r in rows:
            other = ref.get(r["bytes"])
            ratio = f"{r['busbw_gbps'] / other:.3f}" if other else "-"
            print(f"| {name} | {label(r['bytes'])} | {r['busbw_gbps']:.1f} | {other if other else '-'} | {ratio} | {r['busbw_gbps'] / nvlink * 100:.0f}% |")
    axes[0].set_ylabel("busbw GB/s")
    axes[0].legend(fontsize=8, loc="upper left")
    fig.suptitle(f"NCCL collectives on 2 x {smoke.get('gpu', 'GPU')} ({smoke.get('link')}, NCCL {smoke.get('nccl_version')}, bf16)")
    fig.tight_layout()
    fig.savefig(folder / "collectives.png", dpi=110)

    health = json.loads((folder / "gpu_health_2gpu.json").read_text())["figures"]
    reference = json.loads((folder / "health_reference.json").read_text())
    rows = health["gpus"][0]["rows"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    print()
    print("| GEMM (GPU0) | n | smoke TFLOP/s | plain loop TFLOP/s | smoke / loop | of dense peak |")
    print("|---|---|---|---|---|---|")
    for kind, marker in (("bf16", "o"), ("fp8", "s")):
        mine = [r for r in rows if r["what"] == f"{kind} GEMM"]
        theirs = {g["n"]: g["tflops"] for g in reference["gemm"] if g["kind"] == kind}
        ns = [int(r["size"].removeprefix("n=")) for r in mine]
        ax.plot(ns, [r["value"] for r in mine], marker + "-", label=f"gpu_health {kind}")
        ax.plot(ns, [theirs.get(n, float("nan")) for n in ns], marker + "--", label=f"plain loop {kind}")
        if mine and mine[0]["peak"]:
            ax.axhline(mine[0]["peak"], linestyle=":", color="grey")
            ax.text(ns[0], mine[0]["peak"] * 1.01, f"{kind} dense peak {mine[0]['peak']:g}", fontsize=8)
        for r, n in zip(mine, ns):
            print(f"| {kind} | {n} | {r['value']:.0f} | {theirs.get(n, 0):.0f} | {r['value'] / theirs[n]:.3f} | {r['share'] * 100:.0f}% |")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("n (n x n x n)")
    ax.set_ylabel("TFLOP/s")
    ax.set_title(f"GEMM on {health['gpus'][0]['name']} (GPU0)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "gemm.png", dpi=110)


if __name__ == "__main__":
    main()
