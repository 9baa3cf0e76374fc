"""Plots of a GPU run of the kit's images (benchmarks/gpu/images_run.sh): how long each
smoke test took as root and as UID 1000, SGLang's start cold and warm, and gpu_health's
gated shares on a healthy and on a loaded GPU.

    python benchmarks/gpu/plot_images.py benchmarks/gpu/2026-12-05-h100-images

writes tests.png, and warm_start.png and degrade.png where the run had them, into the folder (matplotlib, which the
kit's environment has for its other plots).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def save(fig: Any, out: Path) -> Path:
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return out


def passed_results(folder: Path) -> dict[tuple[str, int], float]:
    """(test in image, uid) -> seconds, for the passed runs."""
    out: dict[tuple[str, int], float] = {}
    # a first run before its reruns (name-run2.json): the plain start, not a warm one
    paths = sorted(folder.glob("*-pypi/*.json"), key=lambda p: (p.parent.name, "-run" in p.stem, p.stem))
    healthy = folder / "degrade/healthy.json"  # gpu_health as root ran inside the degrade demonstration
    for path in [*paths, *([healthy] if healthy.exists() else [])]:
        data = json.loads(path.read_text())
        if data["status"] != "passed":
            continue
        image = path.parent.name.removesuffix("-pypi") if path.parent.name != "degrade" else "distributed"
        label = f"{data['test']} ({image})"
        out.setdefault((label, int(data["environment"]["uid"])), float(data["seconds"]))
    return out


def plot_tests(folder: Path) -> Path:
    results = passed_results(folder)
    labels = sorted({label for label, _ in results})
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(labels) + 1.5))
    for offset, uid, color in ((-0.2, 0, "tab:blue"), (0.2, 1000, "tab:orange")):
        ax.barh([i + offset for i in range(len(labels))], [results.get((label, uid), 0) for label in labels], height=0.38,
                color=color, label="root" if uid == 0 else "UID 1000, empty HOME")  # fmt: skip
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("seconds (test, start to verdict)")
    ax.set_title(f"Smoke tests inside the kit's images ({folder.name})")
    ax.legend()
    return save(fig, folder / "tests.png")


def plot_warm(folder: Path) -> Path:
    cold = json.loads((folder / "verl-pypi/sglang_serve-verl-0-s.json").read_text())["figures"]
    warm = json.loads((folder / "verl-pypi/sglang_serve-verl-0-s-run2.json").read_text())["figures"]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    values = [cold["ready_seconds"], warm["ready_seconds"]]
    ax.bar(["first start\n(empty kernel cache)", "second start\n(same kernel cache)"], values, color=["tab:red", "tab:green"])
    for i, v in enumerate(values):
        ax.text(i, v + 1, f"{v:.1f} s", ha="center")
    ax.set_ylabel("server healthy after (s)")
    ax.set_title(f"SGLang 0.5.12 (verl image) start: warm = {values[1] / values[0]:.0%} of cold")
    return save(fig, folder / "warm_start.png")


def plot_degrade(folder: Path) -> Path:
    summary = json.loads((folder / "degrade/summary.json").read_text())
    runs = [name for name in ("healthy", "loaded") if name in summary["runs"]]
    gates = ["bf16_gemm_share", "fp8_gemm_share", "hbm_share", "host_copy_share"]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    for j, run in enumerate(runs):
        shares = []
        for gate in gates:
            found = next((g for g in summary["runs"][run]["gates"] if g["name"] == gate), None)
            text = (found or {}).get("measured", "0%")
            shares.append(float(text.split("%")[0]) / 100 if "%" in text else 0.0)
        ax.bar([i + (j - 0.5) * 0.38 for i in range(len(gates))], shares, width=0.36, label=run, color="tab:green" if run == "healthy" else "tab:red")
    limits = [0.5, 0.45, 0.6, 0.6]
    for i, limit in enumerate(limits):
        ax.hlines(limit, i - 0.4, i + 0.4, colors="black", linestyles="dashed")
    ax.set_xticks(range(len(gates)), gates)
    ax.set_ylabel("share of the datasheet peak")
    ax.set_title("gpu_health's default gates (dashed): healthy passes, loaded GPU fails")
    ax.legend()
    return save(fig, folder / "degrade.png")


def main(argv: list[str]) -> int:
    folder = Path(argv[0])
    print(plot_tests(folder))
    # the warm-start pair and the degraded GPU are plotted where the run had them
    if (folder / "verl-pypi/sglang_serve-verl-0-s-run2.json").exists():
        print(plot_warm(folder))
    if (folder / "degrade/summary.json").exists():
        print(plot_degrade(folder))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
