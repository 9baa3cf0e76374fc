"""Plot a cold `.ci/run`'s disk use over time, with the framework groups marked.

Input: the disk samples (`date +%T` and `df -BG --output=used,avail /`, every 10 s, written
while `.ci/run` ran) and the run's `-v` log with a `date +%T` prefix on each line (the first
test of each group is found by its node ID). Usage:

    .venv/bin/python benchmarks/plot_ci_disk.py benchmarks/results/ci_disk.log CI_LOG \
        benchmarks/results/ci_disk.png
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

GROUP_STARTS = {  # the first test of each later group in the run's order
    "openrlhf": "test_main_jobs.py::test_openrlhf_checks_vllm_and_its_trainer_on_cpu",
    "sglang": "test_main_jobs.py::test_images_say_what_gpu_runtimes_need[sglang]",
}


def seconds(clock: str) -> float:
    t = datetime.strptime(clock, "%H:%M:%S")
    return t.hour * 3600 + t.minute * 60 + t.second


def main(samples: Path, log: Path, out: Path) -> None:
    lines = log.read_text().splitlines()
    end = seconds(lines[-1].split()[0])  # the run's last line: later samples are not the run's
    rows = [line.split() for line in samples.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if seconds(r[0]) <= end]
    start, base = seconds(rows[0][0]), int(rows[0][1].rstrip("G"))
    minutes = [(seconds(r[0]) - start) / 60 for r in rows]
    above = [int(r[1].rstrip("G")) - base for r in rows]
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot(minutes, above, lw=1.5, label="disk used above the start (GB)")
    for group, node in GROUP_STARTS.items():
        # a line's time is when it ended, after its test: the group starts when the line before it ends
        index = next((i for i, line in enumerate(lines) if node in line), None)
        if index:
            at = (seconds(lines[index - 1].split()[0]) - start) / 60
            ax.axvline(at, color="grey", ls="--", lw=1)
            ax.text(at, max(above) * 0.6, f" {group} group", fontsize=8, rotation=90, va="bottom")
    ax.axhline(38, color="red", ls=":", lw=1, label="what the suite asks free (38 GB)")
    ax.set_xlabel("minutes since .ci/run started")
    ax.set_ylabel("GB")
    ax.set_title(f"Cold .ci/run, disk over time (peak {max(above)} GB above the start)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
