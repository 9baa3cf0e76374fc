"""Do gpu_health's default gates catch a degraded GPU? (issue 22) On one GPU, inside a kit
image (the distributed topic's), three runs of ``python -m smoke_tests.gpu_health`` with
nothing but its defaults:

  healthy   the GPU as found: every gate must pass;
  loaded    while other processes keep the GPU busy with bf16 GEMMs (started before, each
            measured alone first, stopped after): it must fail, naming a gate;
  capped    optional (``--clock-cap MHZ``): with the SM clocks locked by ``nvidia-smi -lgc``
            (refused on many machines, and against the rules of shared ones: off unless
            asked), reset with ``nvidia-smi -rgc`` however the run ends; it must fail too.

    python benchmarks/gpu/degrade.py OUTDIR [--load-procs 1] [--clock-cap 990] [-- GPU_HEALTH_ARGS...]

Each run's result is OUTDIR/{healthy,loaded,capped}.json (the smoke tests' schema, with
the image ID where KIT_IMAGE_ID is set); OUTDIR/summary.json holds what the GPU and the load
processes did and the verdict. Exit 0 only when healthy passed and loaded failed on a gate
(and capped too, where it ran); 1 otherwise; 2 for bad arguments. Nothing is left running:
the load processes are stopped (their whole process groups) and the clocks reset on every
way out, Ctrl-C and SIGTERM included.

Standard library only, but for the load processes (this file run with ``--load``, torch).
``--smoke-cmd``/``--load-cmd``/``--nvidia-smi`` replace the real commands, so the logic is
tested on a CPU (tests/unit/test_degrade.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
SMOKE_CMD = [sys.executable, "-m", "smoke_tests.gpu_health"]
READY_SECONDS = 180.0  # a load process imports torch, warms up and measures itself alone
RUN_SECONDS = 900.0  # one gpu_health run, its own limit (300 s) and start-up included


# ---------------------------------------------------------------------------- the load


def load(ready: Path, stats: Path, size: int, seconds: float) -> int:
    """Keep the GPU busy with bf16 GEMMs until SIGTERM: first alone for ``seconds`` (its own
    TFLOP/s, written with the ready file), then without pause; at exit, how many it did."""
    import torch

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    device = torch.device("cuda", 0)
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    out = torch.empty(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(5):
        torch.matmul(a, b, out=out)
    torch.cuda.synchronize()
    flop = 2.0 * size**3
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(20):
            torch.matmul(a, b, out=out)
        torch.cuda.synchronize()
        count += 20
    alone = count * flop / (time.perf_counter() - t0) / 1e12
    ready.write_text(json.dumps({"pid": os.getpid(), "tflops_alone": alone, "size": size}))
    busy, t1 = 0, time.perf_counter()
    while not stop:
        for _ in range(50):  # the queue stays full: the GPU never waits for Python
            torch.matmul(a, b, out=out)
        torch.cuda.synchronize()
        busy += 50
    elapsed = time.perf_counter() - t1
    stats.write_text(json.dumps({"pid": os.getpid(), "tflops_alone": alone, "gemms_while_busy": busy, "busy_seconds": elapsed,
                                 "tflops_while_busy": busy * flop / elapsed / 1e12 if elapsed else None, "size": size}))  # fmt: skip
    return 0


# ---------------------------------------------------------------------------- processes


class Loads:
    """The load processes: each in its own session, stopped with its whole group."""

    def __init__(self, command: list[str], count: int, work: Path):
        self.command, self.count, self.work = command, count, work
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, deadline_s: float) -> list[dict[str, Any]]:
        readies = []
        for i in range(self.count):
            ready, stats, log = self.work / f"load{i}.ready", self.work / f"load{i}.stats", self.work / f"load{i}.log"
            for path in (ready, stats):
                path.unlink(missing_ok=True)
            words = [w.format(ready=ready, stats=stats) for w in self.command]
            with open(log, "wb") as out:
                self.procs.append(subprocess.Popen(words, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True))
            readies.append(ready)
        deadline = time.monotonic() + deadline_s
        while not all(r.exists() for r in readies):
            for i, proc in enumerate(self.procs):
                if proc.poll() is not None:
                    raise RuntimeError(f"load process {i} exited with {proc.returncode} before it was ready: {tail(self.work / f'load{i}.log')}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the load processes were not ready within {deadline_s:.0f} s")
            time.sleep(0.2)
        return [json.loads(r.read_text()) for r in readies]

    def alive(self) -> bool:
        return bool(self.procs) and all(p.poll() is None for p in self.procs)

    def stop(self) -> list[dict[str, Any]]:
        for proc in self.procs:
            for sig, wait in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        found = []
        for i in range(len(self.procs)):
            stats = self.work / f"load{i}.stats"
            found.append(json.loads(stats.read_text()) if stats.exists() else {"stats": "none written", "log": tail(self.work / f"load{i}.log")})
        self.procs = []
        return found


def tail(path: Path, lines: int = 2) -> str:
    """The last lines of a log, the last one (where a traceback says what went wrong) whole."""
    try:
        found = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return " | ".join(line[:300] for line in found[-lines:])


def run(command: list[str], timeout: float) -> tuple[int | None, float]:
    """A command in its own session, its output through ours, its group killed past ``timeout``."""
    start = time.monotonic()
    proc = subprocess.Popen(command, start_new_session=True, stdin=subprocess.DEVNULL)
    try:
        return proc.wait(timeout=timeout), time.monotonic() - start
    except subprocess.TimeoutExpired:
        return None, time.monotonic() - start
    finally:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


def smi(nvidia_smi: str, *args: str) -> tuple[int, str]:
    try:
        proc = subprocess.run([nvidia_smi, *args], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, str(exc)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


# ---------------------------------------------------------------------------- judging


def read_result(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def gates_failed(result: dict[str, Any] | None) -> list[str]:
    """The gates a result failed, each named in its reason too (what the issue asks to see)."""
    if not result:
        return []
    failed = [v["name"] for v in result.get("verdicts") or [] if isinstance(v, dict) and v.get("gate") and v.get("status") == "failed"]
    return [name for name in failed if name in str(result.get("reason", ""))]


def describe(name: str, rc: int | None, result: dict[str, Any] | None) -> dict[str, Any]:
    """One run for the summary: exit code, status, reason, and every gate with its figure."""
    if result is None:
        return {"run": name, "exit": rc, "status": "no result", "reason": "gpu_health wrote no result file"}
    gates = [
        {k: v.get(k) for k in ("name", "status", "measured", "expected", "detail")}
        for v in result.get("verdicts") or [] if isinstance(v, dict) and v.get("gate")
    ]  # fmt: skip
    return {
        "run": name, "exit": rc, "status": result.get("status"), "reason": result.get("reason"), "seconds": result.get("seconds"),
        "image_id": (result.get("environment") or {}).get("image_id"), "gates": gates, "gates_failed": gates_failed(result),
    }  # fmt: skip


def verdict(runs: dict[str, dict[str, Any]]) -> tuple[bool, list[str]]:
    """Held when healthy passed and every degraded run that ran failed naming a gate."""
    problems = []
    healthy = runs.get("healthy", {})
    if not (healthy.get("status") == "passed" and healthy.get("exit") == 0):
        problems.append(f"healthy did not pass: {healthy.get('status')} (exit {healthy.get('exit')}): {healthy.get('reason')}")
    for name in ("loaded", "capped"):
        got = runs.get(name)
        if got is None or got.get("skipped"):
            if name == "loaded":
                problems.append(f"loaded did not run: {(got or {}).get('skipped', 'no run')}")
            continue
        if got.get("status") != "failed" or got.get("exit") != 1:
            problems.append(f"{name} did not fail: {got.get('status')} (exit {got.get('exit')}): the default gates let a degraded GPU pass")
        elif not got.get("gates_failed"):
            problems.append(f"{name} failed, but not on a gate: {got.get('reason')}")
    return not problems, problems


# ---------------------------------------------------------------------------- the demonstration


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1 :]
        argv = argv[: argv.index("--")]
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("out", type=Path, nargs="?", help="folder for the results (created)")
    parser.add_argument("--load-procs", type=int, default=1, help="busy processes during the loaded run (default 1)")
    parser.add_argument("--load-size", type=int, default=8192, help="the load's GEMM size (default 8192)")
    parser.add_argument("--load-alone-seconds", type=float, default=3.0, help="each load process alone first, to measure itself")
    parser.add_argument("--clock-cap", type=int, metavar="MHZ", help="also a run with the SM clocks locked at MHZ (nvidia-smi -lgc; off by default)")
    parser.add_argument("--run-timeout", type=float, default=RUN_SECONDS, help="seconds for one gpu_health run")
    parser.add_argument("--smoke-cmd", help="replace `python -m smoke_tests.gpu_health` (tests); --json PATH is appended")
    parser.add_argument("--load-cmd", help="replace the load process (tests); {ready} and {stats} are its files")
    parser.add_argument("--nvidia-smi", default="nvidia-smi", help="the nvidia-smi to ask (tests)")
    parser.add_argument("--load", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ready", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--stats", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.load:
        return load(args.ready, args.stats, args.load_size, args.load_alone_seconds)
    if args.out is None:
        parser.error("give the folder for the results")
    if args.load_procs < 1:
        parser.error("--load-procs: at least 1")
    if args.clock_cap is not None and not 100 <= args.clock_cap <= 5000:
        parser.error(f"--clock-cap {args.clock_cap}: an SM clock in MHz (the H100 SXM boosts to 1980)")

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    work = out / ".work"
    work.mkdir(exist_ok=True)
    smoke = shlex.split(args.smoke_cmd) if args.smoke_cmd else list(SMOKE_CMD)
    load_cmd = shlex.split(args.load_cmd) if args.load_cmd else [
        sys.executable, str(HERE), "--load", "--ready", "{ready}", "--stats", "{stats}",
        "--load-size", str(args.load_size), "--load-alone-seconds", str(args.load_alone_seconds),
    ]  # fmt: skip
    loads = Loads(load_cmd, args.load_procs, work)
    capped = {"locked": False}

    def cleanup() -> None:
        loads.stop()
        if capped["locked"]:
            code, text = smi(args.nvidia_smi, "-rgc")
            capped["locked"] = False
            print(f"clocks reset (nvidia-smi -rgc): exit {code} {text[:200]}", flush=True)

    def on_signal(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    summary: dict[str, Any] = {
        "command": " ".join(["python", "benchmarks/gpu/degrade.py", *argv] + (["--", *extra] if extra else [])),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "image_id": os.environ.get("KIT_IMAGE_ID"),
        "gpu": smi(args.nvidia_smi, "--query-gpu=name,driver_version,pci.bus_id,compute_mode,clocks.max.sm,power.limit", "--format=csv,noheader")[1],
        "runs": {},
    }
    runs: dict[str, dict[str, Any]] = summary["runs"]

    def health(name: str) -> dict[str, Any]:
        path = out / f"{name}.json"
        path.unlink(missing_ok=True)
        print(f"\n== {time.strftime('%H:%M:%S')} {name}: {' '.join(smoke)} --json {path}", flush=True)
        rc, seconds = run([*smoke, *extra, "--json", str(path)], args.run_timeout)
        got = describe(name, rc, read_result(path))
        got["wall_seconds"] = round(seconds, 1)
        got["clocks_after"] = smi(args.nvidia_smi, "--query-gpu=clocks.sm,clocks.max.sm,clocks_event_reasons.active", "--format=csv,noheader")[1]
        runs[name] = got
        return got

    try:
        health("healthy")

        print(f"\n== {time.strftime('%H:%M:%S')} starting {args.load_procs} load process(es)", flush=True)
        try:
            ready = loads.start(READY_SECONDS)
        except RuntimeError as exc:
            runs["loaded"] = {"run": "loaded", "skipped": f"the load did not start: {exc}"}
            loads.stop()
        else:
            alone = ", ".join(f"{r['tflops_alone']:.0f}" for r in ready)
            print(f"load ready: {alone} TFLOP/s each, alone", flush=True)
            got = health("loaded")
            still = loads.alive()
            got["load"] = {"processes": args.load_procs, "ready": ready, "alive_at_the_end": still, "stats": loads.stop()}
            if not still:
                got["load_note"] = "a load process had exited before the run ended: the GPU was not busy throughout"

        if args.clock_cap is not None:
            code, text = smi(args.nvidia_smi, "-lgc", f"{args.clock_cap},{args.clock_cap}")
            if code != 0:
                runs["capped"] = {"run": "capped", "skipped": f"nvidia-smi -lgc {args.clock_cap},{args.clock_cap} refused (exit {code}): {text[:300]}"}
                print(f"clock cap refused: {text[:300]}", flush=True)
            else:
                capped["locked"] = True
                health("capped")
                cleanup()
        else:
            runs["capped"] = {"run": "capped", "skipped": "not asked for (--clock-cap MHZ): shared GPU machines forbid changing clocks"}
    except KeyboardInterrupt as exc:
        summary["interrupted"] = str(exc) or "interrupted"
    finally:
        cleanup()

    held, problems = verdict(runs)
    if summary.get("interrupted"):
        held, problems = False, [f"interrupted: {summary['interrupted']}", *problems]
    summary["demonstration"] = "held" if held else "did not hold"
    summary["problems"] = problems
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    for path in work.glob("*"):
        path.unlink()
    work.rmdir()

    print("\nrun      exit  status   gates failed (measured, expected)")
    for name in ("healthy", "loaded", "capped"):
        got = runs.get(name, {})
        if got.get("skipped"):
            print(f"{name:8} -     skipped  {got['skipped']}")
            continue
        failed = [g for g in got.get("gates", []) if g["status"] == "failed"]
        shown = "; ".join(f"{g['name']} {g['measured']} ({g['expected']})" for g in failed) or "-"
        print(f"{name:8} {got.get('exit')!s:5} {got.get('status')!s:8} {shown}")
    print(f"demonstration {summary['demonstration']}" + (": " + "; ".join(problems) if problems else ""))
    print(f"results: {out}", flush=True)
    return 0 if held else 1


if __name__ == "__main__":
    sys.exit(main())
