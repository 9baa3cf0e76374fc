"""torch_memory_saver smoke test: pause frees GPU memory (seen through NVML), resume gives
the tensors back bitwise equal, in the preload hook mode SGLang and verl use.

    python -m smoke_tests.memory_saver [--json memory_saver.json] [--gib 2]
    python -m smoke_tests.memory_saver --cpu   # the hook library's links only; skipped

SGLang's rollout engine and verl release the KV cache and weights between rollout and
training with torch_memory_saver: its hook library (``LD_PRELOAD``, loaded before Python
and before torch) maps GPU memory itself, so that ``pause`` can unmap it and ``resume``
map it back. The test starts a child process with the hook preloaded exactly as
``torch_memory_saver.configure_subprocess()`` does, allocates ``--gib`` GiB in a region
with a CPU backup (contents must survive) and as much again in one without (the
scratch space of a KV cache), and reads the process's GPU memory from NVML:

- after ``pause()`` both regions' memory is released (within ``--slack-mib``);
- after ``resume()`` it is mapped again, and the backed-up tensor is bitwise equal to its
  copy taken before the pause (a fresh random tensor, so zeros cannot pass).

Without a GPU the hook library is still checked: every library it links resolves in the
image except the driver's libcuda, which the NVIDIA container toolkit brings.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from smoke_tests._result import Fail, Report, SmokeTest, gpu_unavailable, run_command, run_test, test_parser
from smoke_tests.libs import unresolved_libraries

TEST = "memory_saver"
GIB = 2**30
MIB = 2**20


def key_figure(figures: Mapping[str, Any]) -> str:
    steps = figures.get("steps") or {}
    if "paused" in steps and "allocated" in steps:
        freed = (steps["allocated"] - steps["paused"]) / GIB
        equal = "bitwise equal" if figures.get("bitwise_equal") else "NOT equal"
        return f"pause freed {freed:.2f} GiB, resume {equal}"
    if "hook_library" in figures:
        return f"hook library links resolve ({Path(figures['hook_library']).name})"
    return "-"


SMOKE = SmokeTest(TEST, timeout=300, key_figure=key_figure)


def judge(steps: Mapping[str, int], want_bytes: int, slack_bytes: int, equal: bool) -> list[str]:
    """What went wrong in a pause/resume cycle (empty when nothing did). ``steps`` holds the
    process's GPU bytes at: ``base`` (before allocating), ``allocated``, ``paused``, ``resumed``."""
    problems = []
    grown = steps["allocated"] - steps["base"]
    if grown < want_bytes - slack_bytes:
        problems.append(f"allocating {want_bytes / GIB:.2f} GiB raised the process's GPU memory by only {grown / GIB:.2f} GiB")
    freed = steps["allocated"] - steps["paused"]
    if freed < want_bytes - slack_bytes:
        problems.append(f"pause() released {freed / GIB:.2f} GiB of the {want_bytes / GIB:.2f} GiB in its regions")
    back = steps["resumed"] - steps["paused"]
    if back < want_bytes - slack_bytes:
        problems.append(f"resume() mapped back {back / GIB:.2f} GiB of {want_bytes / GIB:.2f} GiB")
    if not equal:
        problems.append("the backed-up tensor differs after resume() (its contents were not restored)")
    return problems


# ---------------------------------------------------------------------------- child


def process_gpu_bytes(pid: int) -> int:
    """This process's GPU memory as NVML reports it (what nvidia-smi shows)."""
    import pynvml

    handle = pynvml.nvmlDeviceGetHandleByIndex(int(os.environ.get("KIT_NVML_INDEX", "0")))
    for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
        if proc.pid == pid and proc.usedGpuMemory is not None:
            return int(proc.usedGpuMemory)
    # In a container's PID namespace NVML reports host PIDs: then the device's whole use.
    return int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)


def measure(gib: float, out: Path) -> None:
    import pynvml
    import torch
    from torch_memory_saver import torch_memory_saver

    pynvml.nvmlInit()
    pid = os.getpid()
    torch.cuda.init()
    torch.ones(1, device="cuda")  # the context, before the baseline
    torch.cuda.synchronize()
    steps = {"base": process_gpu_bytes(pid)}
    n = int(gib * GIB / 2) // 4  # float32 elements per region: half in each
    with torch_memory_saver.region(tag="weights", enable_cpu_backup=True):
        kept = torch.rand(n, device="cuda")
    with torch_memory_saver.region(tag="kv"):
        scratch = torch.empty(n, device="cuda").fill_(1.0)
    copy = kept.cpu()
    torch.cuda.synchronize()
    time.sleep(0.5)  # NVML's per-process figures lag the allocation a little
    steps["allocated"] = process_gpu_bytes(pid)
    torch_memory_saver.pause()
    torch.cuda.synchronize()
    time.sleep(0.5)
    steps["paused"] = process_gpu_bytes(pid)
    torch_memory_saver.resume()
    torch.cuda.synchronize()
    time.sleep(0.5)
    steps["resumed"] = process_gpu_bytes(pid)
    equal = bool(torch.equal(kept.cpu(), copy))
    scratch.fill_(2.0)  # the resumed scratch region is usable memory again
    torch.cuda.synchronize()
    out.write_text(json.dumps({"steps": steps, "bytes": 2 * n * 4, "bitwise_equal": equal, "gpu": torch.cuda.get_device_name(0)}))


# ---------------------------------------------------------------------------- the test


def hook_library() -> str:
    """The preload library torch_memory_saver's configure_subprocess() would put in LD_PRELOAD."""
    from torch_memory_saver import configure_subprocess

    with configure_subprocess():
        return os.environ["LD_PRELOAD"].split(":")[0]


def body_for(args: argparse.Namespace) -> Any:
    def body(report: Report) -> None:
        import torch

        library = hook_library()
        report.figures["hook_library"] = library
        missing = unresolved_libraries(library, allowed={"libcuda.so.1"})
        if missing:
            raise Fail(f"torch_memory_saver's hook library cannot load in this image: {', '.join(missing)} not found")
        use_gpu = not args.cpu and torch.cuda.is_available()
        if not use_gpu:
            what = "pausing GPU memory needs a GPU (the hook library's links resolve)"
            raise gpu_unavailable(args, what)

        with tempfile.TemporaryDirectory(prefix="smoke-memory-saver-") as tmp:
            out = Path(tmp) / "child.json"
            env = {**os.environ, "LD_PRELOAD": ":".join(p for p in (library, os.environ.get("LD_PRELOAD", "")) if p)}
            cmd = [sys.executable, "-m", "smoke_tests.memory_saver", "--child-out", str(out), "--gib", str(args.gib)]
            result = run_command(cmd, env=env, timeout=args.timeout * 0.8)
            if result.returncode != 0 or not out.exists():
                tail = "\n".join(result.output.strip().splitlines()[-5:])
                raise Fail(f"the child with the hook preloaded failed (exit {result.returncode}): {tail}")
            child = json.loads(out.read_text())
        report.figures.update(child)
        steps = child["steps"]
        report.table(
            ["step", "process GPU memory (MiB)"],
            [[name, f"{steps[name] / MIB:.0f}"] for name in ("base", "allocated", "paused", "resumed")],
        )
        problems = judge(steps, child["bytes"], int(args.slack_mib * MIB), child["bitwise_equal"])
        report.verdict("pause and resume", not problems, f"{len(steps)} steps measured", "memory freed and given back, data bitwise equal", "; ".join(problems))
        if problems:
            raise Fail("; ".join(problems))

    return body


def main(argv: Iterable[str] | None = None) -> int:
    parser = test_parser(__doc__, timeout=SMOKE.timeout)
    parser.add_argument("--gib", type=float, default=2.0, help="GPU memory put in the two regions together")
    parser.add_argument("--slack-mib", type=float, default=256.0, help="how far NVML's figures may fall short")
    parser.add_argument("--child-out", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.child_out:
        measure(args.gib, Path(args.child_out))
        return 0
    return run_test(TEST, body_for(args), json_path=args.json, timeout=args.timeout)


if __name__ == "__main__":
    sys.exit(main())
