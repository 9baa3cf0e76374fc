"""Where `./kit shell TOPIC -- true` spends its time before it becomes `docker run`: each
phase timed over interleaved rounds, run exactly as `./kit` runs it (the environment's
python, `-I -S -c`, the garbage collector off during the imports, then what they made frozen), medians in ms.

    .venv/bin/python benchmarks/shell_profile.py [--topic distributed] [--rounds 20] [--importtime 12]

Phases (one run of the real shell path, the exec replaced by a stop, the engine's image
lookup timed where it is started and where its answer is read):
- `bash`: the `kit` script up to its exec (a copy ending in `exec true`, the same tests);
- `python`: the interpreter's own start (`-I -S -c pass`);
- `imports`: the kit's shell path imported (`mlsyskit.runtime.shell_cli`);
- `to lookup`: options, GPUs, context (config, catalogue, base, topic) up to the moment the
  engine's `docker image inspect` is started;
- `lookup runs beside`: from that start until the image stage reads the answer (the
  imports and work it overlaps);
- `waiting`: how long the image stage then waits for the CLI's answer;
- `after`: freshness, kernel cache, secrets, the container spec, up to the exec.
Then the modules whose own import time is largest (`-X importtime`, median self time).
Needs the topic's image built (`invoke build TOPIC`)."""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYTHON = REPO / ".venv" / "bin" / "python"

# Runs inside the kit's python (-I -S): the shell path with the exec and the lookup's CLI
# process timed, printed as JSON.
PROBE = r"""
import gc, sys, time
T0 = time.perf_counter()
gc.disable()
sys.path.insert(0, sys.argv.pop(1))
marks = {}
def mark(name):
    marks.setdefault(name, (time.perf_counter() - T0) * 1000)
from mlsyskit.runtime.shell_cli import main
mark("imported")
gc.freeze()
gc.enable()
import json, os
from mlsyskit.engine import Engine
soon = Engine.image_soon
def image_soon(self, ref):
    mark("lookup started")
    answer = soon(self, ref)
    def timed():
        mark("answer read")
        info = answer()
        mark("answer came")
        return info
    return timed
Engine.image_soon = image_soon
def become(*args):
    mark("exec")
    print(json.dumps(marks), flush=True)
    os._exit(0)
os.execve = become
main()
"""


def timed(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    return (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topic", default="distributed")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--importtime", type=int, default=12, help="how many modules to list")
    args = parser.parse_args()
    shell_args = [args.topic, "--gpus", "none", "--", "true"]
    phases: dict[str, list[float]] = collections.defaultdict(list)
    selves: dict[str, list[int]] = collections.defaultdict(list)
    with tempfile.TemporaryDirectory(prefix="mlsyskit-profile-") as scratch:
        workspace = Path(scratch)
        bash = workspace / "kit-prefix"  # the kit script's fast-path test, then exec true
        text = (REPO / "kit").read_text()
        prefix = text[: text.index("CALLER_DIR=$PWD")].replace('kit_shell "$@"', "exec true")
        bash.write_text(prefix.replace("${BASH_SOURCE[0]%/*}", str(REPO)))
        bash.chmod(0o755)
        for _ in range(args.rounds):
            phases["bash"].append(timed([str(bash), "shell"], workspace))
            phases["python"].append(timed([str(PYTHON), "-I", "-S", "-c", "pass"], workspace))
            proc = subprocess.run([str(PYTHON), "-I", "-S", "-c", PROBE, str(REPO), *shell_args], cwd=workspace, capture_output=True, text=True, check=True)
            marks = json.loads(proc.stdout.strip().splitlines()[-1])
            phases["imports"].append(marks["imported"])
            phases["to lookup"].append(marks["lookup started"] - marks["imported"])
            phases["lookup runs beside"].append(marks["answer read"] - marks["lookup started"])
            phases["waiting"].append(marks["answer came"] - marks["answer read"])
            phases["after"].append(marks["exec"] - marks["answer came"])
            phases["python start to exec"].append(marks["exec"])
            code = f"import sys; sys.path.insert(0, {str(REPO)!r}); import mlsyskit.runtime.shell_cli"
            lines = subprocess.run([str(PYTHON), "-I", "-S", "-X", "importtime", "-c", code], cwd=workspace, capture_output=True, text=True, check=True).stderr
            for line in lines.splitlines():
                if line.startswith("import time:") and "self [us]" not in line:
                    own, _, name = line[len("import time:") :].split("|")
                    selves[name.strip()].append(int(own))
    docker = shutil.which("docker") or "?"
    print(f"{args.rounds} rounds, `./kit shell {' '.join(shell_args)}`, python {PYTHON.resolve()}, docker CLI {docker}, load {os.getloadavg()[0]:.1f}")
    print()
    print("| phase | median ms | min ms |")
    print("| --- | --- | --- |")
    for name, values in phases.items():
        print(f"| {name} | {statistics.median(values):.1f} | {min(values):.1f} |")
    print()
    total = sum(statistics.median(v) for v in selves.values()) / 1000
    kit = sum(statistics.median(v) for k, v in selves.items() if k.startswith("mlsyskit")) / 1000
    print(f"imports (-X importtime, its own overhead included): {len(selves)} modules, {total:.1f} ms, the kit's own {kit:.1f} ms; largest:")
    print()
    print("| module | self ms |")
    print("| --- | --- |")
    for name, values in sorted(selves.items(), key=lambda kv: -statistics.median(kv[1]))[: args.importtime]:
        print(f"| `{name}` | {statistics.median(values) / 1000:.2f} |")
    sys.exit(0)


if __name__ == "__main__":
    main()
