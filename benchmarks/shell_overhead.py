"""What the kit's shell costs over plain docker: `./kit shell TOPIC -- true` (no invoke) and
`invoke shell TOPIC -- true` against `docker run --rm IMAGE true`, interleaved in one run
(so all see the same machine load), medians and their ratios (goal <= 1.3x). `invoke
--list` is timed too: the start-up every invoke task pays (Python + invoke + tasks.py),
before the kit does anything. The plain docker run is the baseline, started from outside
the kit's engine on purpose.

    uv run python benchmarks/shell_overhead.py [--topic distributed] [--rounds 20]

Prints Markdown rows for BENCHMARKS.md. The image must be built (`invoke build TOPIC`)."""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mlsyskit.images.plan import topic_alias  # noqa: E402


def timed(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"`{' '.join(cmd)}` failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return elapsed


def round_order(round_: int) -> list[str]:
    """The commands of one round: the compared pair (`docker`, `kit`), then the two invoke
    commands. What runs just before a command changes its time (measured 2026-12-06: either
    of the pair takes ~12 ms longer right after `invoke shell` than right after the other),
    so over every four rounds each of the pair runs first once after `invoke shell` and once
    after `invoke --list`, and second once after the other of the pair, in either order.
    (Until 2026-12-06 the four ran forwards, then backwards: the kit always ran right after
    `invoke shell` in the backward rounds and the plain `docker run` never did.)"""
    pair = ["docker", "kit"] if round_ % 2 == 0 else ["kit", "docker"]
    tail = ["shell", "invoke"] if round_ % 4 < 2 else ["invoke", "shell"]
    return pair + tail


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topic", default="distributed")
    parser.add_argument("--base", default="pypi")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()

    docker = shutil.which("docker") or sys.exit("no docker client on PATH")
    image = topic_alias(args.topic, args.base)
    invoke = [sys.executable, "-m", "invoke", "-r", str(REPO)]
    commands = {
        "docker": [docker, "run", "--rm", image, "true"],  # the baseline, outside the kit on purpose
        "kit": [str(REPO / "kit"), "shell", args.topic, "--base", args.base, "--gpus", "none", "--", "true"],
        "shell": [*invoke, "shell", args.topic, "--base", args.base, "--gpus", "none", "--", "true"],
        "invoke": [*invoke, "--list"],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    with tempfile.TemporaryDirectory(prefix="mlsyskit-bench-") as workspace:
        for round_ in range(args.warmup + args.rounds):
            order = round_order(round_)
            for name in order:
                elapsed = timed(commands[name], Path(workspace))
                if round_ >= args.warmup:
                    times[name].append(elapsed)

    med = {name: statistics.median(values) for name, values in times.items()}
    ratios = [s / d for s, d in zip(times["kit"], times["docker"])]
    load = os.getloadavg()[0]
    print(f"machine: {platform.node()} ({os.cpu_count()} CPUs, load {load:.1f}), user uid {os.getuid()}, {args.rounds} rounds")
    print()
    print("| what | command | median s | min s |")
    print("| --- | --- | --- | --- |")
    print(f"| plain docker | `docker run --rm {image} true` | {med['docker']:.3f} | {min(times['docker']):.3f} |")
    print(f"| kit, no invoke | `./kit shell {args.topic} -- true` | {med['kit']:.3f} | {min(times['kit']):.3f} |")
    print(f"| kit through invoke | `invoke shell {args.topic} -- true` | {med['shell']:.3f} | {min(times['shell']):.3f} |")
    print(f"| invoke start-up alone | `invoke --list` | {med['invoke']:.3f} | {min(times['invoke']):.3f} |")
    print(f"| **ratio `./kit shell`** (median / median docker) | | **{med['kit'] / med['docker']:.2f}x** | |")
    print(f"| ratio `./kit shell`, median of per-round ratios | | {statistics.median(ratios):.2f}x | |")
    print(f"| ratio `invoke shell` (median / median docker) | | {med['shell'] / med['docker']:.2f}x | |")
    print(f"| `./kit shell` minus docker: the kit's own cost | | {med['kit'] - med['docker']:+.3f} | |")


if __name__ == "__main__":
    main()
