"""`./kit shell TOPIC -- true` up to the moment it becomes `docker run`, for several commits
side by side in one run: each commit checked out in a worktree (sharing this checkout's
environment), its `kit` timed with a `docker` on PATH that answers `run` at once and passes
everything else (the image lookup) to the real CLI, the commits interleaved round by round,
together with a real `docker run --rm IMAGE true`: so each step's gain is a ratio measured
under the same load. Prints a Markdown table and writes a bar chart.

    .venv/bin/python benchmarks/shell_commits.py COMMIT... [--rounds 30] [--topic distributed] [--png PATH]

The kit's cost of a commit is its time to the exec minus the stand-in's own start (a shell
script's); the ratio is (docker run + that cost) / docker run. Needs the topic's image built."""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mlsyskit.context import topic_alias  # noqa: E402


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        sys.exit(f"`{' '.join(cmd)}` failed ({proc.returncode}): {proc.stderr.strip()[-400:]}")
    return (time.perf_counter() - start) * 1000


def worktree(commit: str, under: Path) -> Path:
    path = under / commit
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--quiet", "--detach", str(path), commit], check=True)
    (path / ".venv").symlink_to(REPO / ".venv")
    os.utime(path / "uv.lock", (0, 0))  # older than .venv/.kit-synced: `./kit shell` takes its fast path
    subprocess.run([str(REPO / ".venv" / "bin" / "python"), "-m", "compileall", "-q", str(path / "mlsyskit")], check=True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("commits", nargs="+")
    parser.add_argument("--topic", default="distributed")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--png", default=str(REPO / "benchmarks" / "results" / "shell-commits.png"))
    args = parser.parse_args()
    docker = shutil.which("docker") or sys.exit("no docker client on PATH")
    image = topic_alias(args.topic, "pypi")
    log = ["git", "-C", str(REPO), "log", "-1", "--format=%h %s"]
    subjects = {c: subprocess.run([*log, c], capture_output=True, text=True, check=True).stdout.strip() for c in args.commits}
    with tempfile.TemporaryDirectory(prefix="mlsyskit-commits-") as scratch:
        root = Path(scratch)
        shim = root / "bin"
        shim.mkdir()
        (shim / "docker").write_text(f'#!/bin/sh\n[ "$1" = run ] && exit 0\nexec {docker} "$@"\n')
        (shim / "docker").chmod(0o755)
        env = {**os.environ, "PATH": f"{shim}:{os.environ['PATH']}"}
        trees = {c: worktree(c, root) for c in args.commits}
        times: dict[str, list[float]] = {c: [] for c in [*args.commits, "docker run", "stand-in"]}
        try:
            for round_ in range(args.rounds + 2):
                order = list(times) if round_ % 2 else list(reversed(times))
                for name in order:
                    if name == "docker run":
                        took = timed([docker, "run", "--rm", image, "true"], dict(os.environ), root)
                    elif name == "stand-in":
                        took = timed([str(shim / "docker"), "run"], env, root)
                    else:
                        took = timed([str(trees[name] / "kit"), "shell", args.topic, "--gpus", "none", "--", "true"], env, root)
                    if round_ >= 2:  # two warm-up rounds
                        times[name].append(took)
        finally:
            for tree in trees.values():
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)
    med = {name: statistics.median(values) for name, values in times.items()}
    run, stand_in = med["docker run"], med["stand-in"]
    print(f"{args.rounds} rounds, interleaved; `docker run --rm {image} true` median {run:.0f} ms; load {os.getloadavg()[0]:.1f}")
    print()
    print("| commit | `./kit shell` to the exec, median ms | the kit's cost ms | ratio to `docker run` |")
    print("| --- | --- | --- | --- |")
    costs = {}
    for commit in args.commits:
        costs[commit] = med[commit] - stand_in
        print(f"| {subjects[commit][:90]} | {med[commit]:.1f} | {costs[commit]:.1f} | {(run + costs[commit]) / run:.2f}x |")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 0.55 * len(args.commits) + 1.8))
    labels = [subjects[c][:48] + ("..." if len(subjects[c]) > 48 else "") for c in args.commits]
    ax.barh(labels[::-1], [costs[c] for c in args.commits][::-1], color="#4c72b0")
    ax.axvline(0.3 * run, color="#c44e52", linestyle="--", label=f"1.3x docker run ({0.3 * run:.0f} ms)")
    for i, commit in enumerate(args.commits[::-1]):
        ax.text(costs[commit] + 1, i, f"{costs[commit]:.0f} ms, {(run + costs[commit]) / run:.2f}x", va="center", fontsize=8)
    ax.set_xlim(0, max(max(costs.values()), 0.3 * run) * 1.3)
    ax.set_xlabel(f"the kit's own cost before docker run, ms (median of {args.rounds}; docker run itself {run:.0f} ms)")
    ax.set_title(f"./kit shell {args.topic} -- true, commit by commit (interleaved in one run)", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    Path(args.png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.png, dpi=120)
    print(f"\nplot: {Path(args.png).relative_to(REPO) if Path(args.png).is_relative_to(REPO) else args.png}")


if __name__ == "__main__":
    main()
