"""Plot all-reduce busbw by message size from smoke_tests' JSON results.

    python benchmarks/gpu/plot_busbw.py RESULT_DIR [--out busbw.png]

reads RESULT_DIR/nccl.json (the smoke test) and, when present, RESULT_DIR/reference.json
(the plain loop), and draws both against NVLink 4's 450 GB/s line rate.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

NVLINK4_LINE_RATE_GBPS = 450.0


def series(path: Path) -> tuple[list[int], list[float]]:
    rows = json.loads(path.read_text())["figures"]["sizes"]
    return [r["bytes"] for r in rows], [r["busbw_gbps"] for r in rows]


def label_bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n // size} {unit}"
    return f"{n} B"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("result_dir", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    smoke = json.loads((args.result_dir / "nccl.json").read_text())
    fig, ax = plt.subplots(figsize=(7, 4.2))
    x, y = series(args.result_dir / "nccl.json")
    ax.plot(x, y, "o-", label="smoke_tests.nccl")
    ref = args.result_dir / "reference.json"
    if ref.exists():
        rx, ry = series(ref)
        ax.plot(rx, ry, "s--", label="reference all_reduce loop")
    ax.axhline(NVLINK4_LINE_RATE_GBPS, color="grey", linestyle=":", label="NVLink4 line rate (450 GB/s)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(x, [label_bytes(n) for n in x])
    ax.set_ylim(0, NVLINK4_LINE_RATE_GBPS * 1.1)
    ax.set_xlabel("message size")
    ax.set_ylabel("busbw (GB/s)")
    fig_ = smoke["figures"]
    ax.set_title(
        f"all-reduce, {fig_['world_size']} x {fig_.get('gpu', '?')}, {fig_['dtype']}, "
        f"{fig_.get('link', '?')}, NCCL {fig_.get('nccl_version', '?')}",
        fontsize=9,
    )
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = args.out or args.result_dir / "busbw.png"
    fig.savefig(out, dpi=120)
    print(out)


if __name__ == "__main__":
    main()
