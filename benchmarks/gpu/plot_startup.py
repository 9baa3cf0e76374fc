"""Where start-up time goes, cold against warm (issue 23): one stacked bar per run of a
start-up the smoke tests cut into phases from the software's own log (smoke_tests/_startup.py:
SGLang serving's server start, verl GRPO's trainer start with its rollout engine).

    python benchmarks/gpu/plot_startup.py FOLDER [RESULT.json ...]

With only FOLDER: every `sglang_serve-*.json` and `verl_grpo-*.json` under it that has a
`startup` figure. Writes FOLDER/startup.png and prints a table of the phases (seconds).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def runs(paths: list[Path]) -> list[tuple[str, list[dict[str, Any]], dict[str, Any]]]:
    """(label, phases, result) for each passed result with start-up phases, in name order."""
    out = []
    # a first run before its reruns (name-run2.json): cold before warm
    for path in sorted(paths, key=lambda p: (p.stem.split("-run")[0], "-run" in p.stem, p.stem)):
        data = json.loads(path.read_text())
        parts = data.get("figures", {}).get("startup") or []
        if data.get("status") != "passed" or not parts:
            continue
        label = path.stem.replace("-pypi", "")
        out.append((label, parts, data))
    return out


def table(found: list[tuple[str, list[dict[str, Any]], dict[str, Any]]]) -> str:
    lines = []
    for label, parts, data in found:
        total = sum(float(p["seconds"]) for p in parts)
        ready = data["figures"].get("ready_seconds")
        head = f"{label}: {total:.1f} s to the last marker" + (f", healthy after {ready:.1f} s" if ready else "")
        lines.append(head)
        lines.extend(f"    {p['phase']:<44} {float(p['seconds']):7.1f}" for p in parts)
    return "\n".join(lines)


def plot(found: list[tuple[str, list[dict[str, Any]], dict[str, Any]]], out: Path, title: str) -> Path:
    phases: list[str] = []
    for _, parts, _ in found:
        phases.extend(str(p["phase"]) for p in parts if p["phase"] not in phases)
    colors = dict(zip(phases, plt.get_cmap("tab20").colors, strict=False))
    fig, ax = plt.subplots(figsize=(10, 0.55 * len(found) + 2.8))
    for row, (_, parts, _) in enumerate(found):
        left = 0.0
        for p in parts:
            width = float(p["seconds"])
            ax.barh(row, width, left=left, color=colors[str(p["phase"])], edgecolor="white", height=0.6)
            if width >= 4:
                ax.text(left + width / 2, row, f"{width:.0f}", ha="center", va="center", fontsize=8)
            left += width
    ax.set_yticks(range(len(found)), [label for label, _, _ in found])
    ax.invert_yaxis()
    ax.set_xlabel("seconds from the process start (phases from the software's own log)")
    ax.set_title(title)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[name]) for name in phases]
    ax.legend(handles, phases, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=4, frameon=False)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return out


def main(argv: list[str]) -> int:
    folder = Path(argv[0])
    paths = [Path(p) for p in argv[1:]] or [*folder.rglob("sglang_serve-*.json"), *folder.rglob("verl_grpo-*.json")]
    found = runs(paths)
    if not found:
        print(f"no passed result with start-up phases under {folder}", file=sys.stderr)
        return 1
    print(table(found))
    print(plot(found, folder / "startup.png", f"Start-up, cold and warm kernel caches ({folder.name})"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
