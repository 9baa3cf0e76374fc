"""What every smoke test shares: the result schema, the table, the time limit, child cleanup.

A result is one JSON object::

    {"test": str, "status": "passed" | "failed" | "skipped", "reason": str,
     "seconds": float, "figures": {...}, "environment": {...}, "verdicts": [...]}

``verdicts`` lists what the test judged, each with its measured value: the declared gates
(smoke_tests/_gates.py: thresholds such as a GEMM's share of the datasheet peak) and the
correctness checks (exact sums, the same greedy text). A test passes only by judging: a
body that returns without a verdict, or with a failed one it did not raise, fails.

Exit codes: 0 for passed and for skipped (a GPU test on a machine without one), 1 for
failed. A skip is never reported as a pass: ``status`` says which it was.

Nothing here imports torch at module level, so the unit tests run without it.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from smoke_tests._gates import Gate

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"
STATUSES = (PASSED, FAILED, SKIPPED)
RESULT_KEYS = {"test": str, "status": str, "reason": str, "seconds": float, "figures": dict, "environment": dict}
#: Keys a result may hold besides RESULT_KEYS (results written before verdicts existed have none).
OPTIONAL_KEYS = {"verdicts": list}
#: A verdict's status: "not judged" is a gate that does not apply here (an unknown GPU's share).
NOT_JUDGED = "not judged"
VERDICT_KEYS = ("name", "gate", "status", "measured", "expected", "detail")

#: Environment variables worth recording with a result: they change what NCCL and CUDA do.
RECORDED_ENV_PREFIXES = ("NCCL_", "CUDA_VISIBLE_DEVICES", "TORCH_SYMM_MEM", "NVSHMEM_DISABLE_NVLS")


@dataclass(frozen=True)
class SmokeTest:
    """What a smoke test tells the kit about itself (``SMOKE`` in its module): its name, its
    own default time limit (its ``--timeout``; ``invoke smoke`` adds a margin for the
    container), the one figure a table shows of its result ('-' when there is none) and
    its gates: the thresholds it applies by default (``--no-gates``, ``--gate NAME=VALUE``)."""

    name: str
    timeout: float
    key_figure: Callable[[Mapping[str, Any]], str]
    gates: tuple[Gate, ...] = ()

    def figure(self, figures: Mapping[str, Any]) -> str:
        try:
            return self.key_figure(figures)
        except (KeyError, TypeError, ValueError, AttributeError):  # a partial result
            return "-"


class Skip(Exception):
    """The test cannot run here (no GPU, too few GPUs); the message says why."""


class Fail(Exception):
    """The test ran and missed what it checks (a wrong sum, a gate); the message says what."""


@dataclass
class Verdict:
    """One thing a test judged: a gate (a declared threshold, ``gate=True``) or a check (an
    exact sum, the same text). ``ok`` None: not judged here (the gate does not apply, and
    ``detail`` says why)."""

    name: str
    ok: bool | None
    measured: str = ""
    expected: str = ""
    detail: str = ""
    gate: bool = False

    @property
    def status(self) -> str:
        return NOT_JUDGED if self.ok is None else PASSED if self.ok else FAILED

    def describe(self) -> str:
        """'bf16_gemm_share: 35% (GPU0 n=8192), expected >= 50%'."""
        text = self.name
        if self.measured:
            text += f": {self.measured}"
        if self.expected:
            text += f", expected {self.expected}"
        if self.detail and not self.ok:
            text += f" ({self.detail})"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "gate": self.gate, "status": self.status, "measured": self.measured, "expected": self.expected, "detail": self.detail}


@dataclass
class SmokeResult:
    test: str
    status: str = FAILED
    reason: str = ""
    seconds: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    verdicts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.status == FAILED else 0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["seconds"] = round(float(self.seconds), 3)
        safe: dict[str, Any] = json_safe(data)
        return safe


def json_safe(value: Any) -> Any:
    """Make ``value`` strict JSON: NaN and infinities become strings, tuples lists, keys strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, bool | int | str):
        return value
    return str(value)


def validate_result(data: Mapping[str, Any]) -> list[str]:
    """Problems with a result object; an empty list means it follows the schema."""
    problems = []
    for key, kind in RESULT_KEYS.items():
        if key not in data:
            problems.append(f"missing key {key!r}")
        elif kind is float and (not isinstance(data[key], int | float) or isinstance(data[key], bool)):
            problems.append(f"{key!r} is {type(data[key]).__name__}, expected a number")
        elif kind is not float and not isinstance(data[key], kind):
            problems.append(f"{key!r} is {type(data[key]).__name__}, expected {kind.__name__}")
    for key, kind in OPTIONAL_KEYS.items():
        if key in data and not isinstance(data[key], kind):
            problems.append(f"{key!r} is {type(data[key]).__name__}, expected {kind.__name__}")
    for verdict in data["verdicts"] if isinstance(data.get("verdicts"), list) else []:
        if not isinstance(verdict, dict) or set(verdict) != set(VERDICT_KEYS) or verdict["status"] not in (*STATUSES, NOT_JUDGED):
            problems.append(f"a verdict must hold {', '.join(VERDICT_KEYS)} and a status: {str(verdict)[:120]}")
            break
    extra = set(data) - set(RESULT_KEYS) - set(OPTIONAL_KEYS)
    if extra:
        problems.append(f"unexpected keys {sorted(extra)}")
    if data.get("status") not in STATUSES:
        problems.append(f"status {data.get('status')!r} is not one of {STATUSES}")
    if data.get("status") in (FAILED, SKIPPED) and not data.get("reason"):
        problems.append(f"a {data.get('status')} result needs a reason")
    return problems


def write_json(result: SmokeResult, path: str | os.PathLike[str]) -> Path:
    data = result.to_dict()
    problems = validate_result(data)
    if problems:  # a bug in the test script, not in the machine under test
        raise ValueError(f"result for {result.test} breaks the schema: {problems}")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n")
    tmp.replace(out)  # readers never see half a file, even when the watchdog fires mid-write
    return out


def read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a result is a JSON object")
    return data


# ---------------------------------------------------------------------------- tables


def _is_numeric(cell: str) -> bool:
    text = cell.strip().rstrip("%x").replace(",", "")
    try:
        float(text)
    except ValueError:
        return False
    return True


def render_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """An aligned plain-text table: numbers right-aligned, words left-aligned."""
    body = [["" if c is None else str(c) for c in row] for row in rows]
    head = [str(h) for h in headers]
    for row in body:
        if len(row) != len(head):
            raise ValueError(f"row {row} has {len(row)} cells, headers have {len(head)}")
    widths = [max([len(h)] + [len(r[i]) for r in body]) for i, h in enumerate(head)]
    numeric = [bool(body) and all(_is_numeric(r[i]) or r[i] in ("", "-") for r in body) for i in range(len(head))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric)).rstrip()

    out = [line(head), "  ".join("-" * w for w in widths)]
    out.extend(line(r) for r in body)
    return "\n".join(out)


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}f}"


def fmt_bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} B"


def summary_line(result: SmokeResult) -> str:
    text = f"{result.test}: {result.status.upper()} in {result.seconds:.1f} s"
    return f"{text} ({result.reason})" if result.reason else text


# ---------------------------------------------------------------------------- environment


def environment(extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What the result depends on: Python, torch, CUDA, NCCL, the GPUs, NCCL's variables."""
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": platform.node(),
        "uid": os.getuid(),  # invoke shell and smoke run as the caller's UID, not root
        "home": os.environ.get("HOME", ""),
    }
    if os.environ.get("KIT_IMAGE_ID"):  # set by invoke smoke and the GPU runbook: the image it ran in
        env["image_id"] = os.environ["KIT_IMAGE_ID"]
    try:
        import torch

        env["torch"] = torch.__version__
        env["cuda_runtime"] = torch.version.cuda
        env["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            env["gpu_count"] = torch.cuda.device_count()
            env["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            try:
                env["nccl"] = ".".join(str(p) for p in torch.cuda.nccl.version())
            except Exception as exc:  # torch built without NCCL
                env["nccl"] = f"unavailable: {exc}"
    except ImportError:
        env["torch"] = None
    driver = nvidia_smi(["--query-gpu=driver_version", "--format=csv,noheader"])
    if driver:
        env["driver"] = driver.splitlines()[0].strip()
    env["env"] = {k: v for k, v in sorted(os.environ.items()) if k.startswith(RECORDED_ENV_PREFIXES)}
    if extra:
        env.update(extra)
    return env


def nvidia_smi(args: Sequence[str], timeout: float = 30) -> str | None:
    """nvidia-smi's output, or None where it is missing or fails (CPU machines, containers without it)."""
    try:
        proc = subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def cuda_diagnosis(dev: str = "/dev") -> str:
    """Why torch sees no CUDA GPU here, as far as can be told from inside: no device nodes
    (the container got no GPU), or CUDA failing to start on the devices it has (a driver
    too old for the CUDA runtime in torch's wheels)."""
    nodes = gpu_device_nodes(dev)
    if not nodes:
        return "no /dev/nvidia* device: this container or machine was given no GPU (on a GPU host: the NVIDIA container toolkit missing, or no --gpus)"
    try:
        import torch
    except ImportError:
        return f"{', '.join(nodes)} present, but torch is not installed"
    try:
        torch.cuda.init()
    except Exception as exc:  # torch says what the driver answered
        message = " ".join(str(exc).split())[:300]
        return f"{', '.join(nodes)} present, but CUDA does not start ({message}); torch's CUDA is {torch.version.cuda}"
    return f"{', '.join(nodes)} present, but torch.cuda.is_available() is False"


def gpu_unavailable(args: Any, what: str) -> Exception:
    """The outcome where a test's GPU part cannot run: a skip when `--cpu` asked for the CPU
    path only, else `no_gpu`'s skip or failure (``args`` has ``cpu`` and ``require_gpu``)."""
    return Skip(f"--cpu given: {what}") if args.cpu else no_gpu(args.require_gpu, what)


def too_few_gpus(option: str, wanted: int, visible: int) -> Skip:
    """A skip for a run asked onto more GPUs than are visible (`--tp 2`, `--nproc 2`)."""
    return Skip(f"{option} {wanted} needs {wanted} GPUs; {visible} visible")


def gpu_device_nodes(dev: str = "/dev") -> list[str]:
    """The GPU device nodes here (nvidia0, nvidia1...; not nvidiactl or nvidia-uvm)."""
    return sorted(p.name for p in Path(dev).glob("nvidia[0-9]*"))


def no_gpu(require_gpu: bool, what: str, dev: str = "/dev") -> Exception:
    """The outcome for a GPU test that finds no GPU: a skip (nobody asked for GPUs, and there
    is none), or a failure that says why and what to check when they were asked for
    (``--require-gpu``) or when GPU device nodes are there and CUDA still sees none (a broken
    driver is not a GPU-less machine). ``what`` says what could not run ("an SGLang server
    needs a GPU (...)")."""
    nodes = gpu_device_nodes(dev)
    if require_gpu or nodes:
        asked = "GPUs were asked for" if require_gpu else f"this machine has GPU devices ({', '.join(nodes)})"
        return Fail(
            f"{asked}, but none is visible: {cuda_diagnosis(dev)}. {what}. Check `invoke doctor` "
            "(the driver must support the image's CUDA, and Docker needs the NVIDIA container toolkit)"
        )
    return Skip(f"no CUDA GPU visible: {what}")


# ---------------------------------------------------------------------------- children and time limits

_CHILDREN: set[subprocess.Popen[str]] = set()
_CHILDREN_LOCK = threading.Lock()

# A smoke test that hangs can be asked where: `kill -USR1 PID` prints every thread's stack.
if hasattr(signal, "SIGUSR1") and threading.current_thread() is threading.main_thread():
    faulthandler.register(signal.SIGUSR1, all_threads=True)


def kill_process_group(proc: subprocess.Popen[str], grace: float = 10.0) -> None:
    """SIGTERM the child's whole process group, then SIGKILL whatever is left after ``grace`` s.

    Children are started with ``start_new_session=True``, so their group holds their own
    children too (torchrun's workers, dataloader workers) and nothing of ours.
    """
    if proc.poll() is not None and not _group_alive(proc.pid):
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            proc.poll()
            if not _group_alive(proc.pid):
                return
            time.sleep(0.1)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_CLEANUPS: list[Callable[[], object]] = []


def add_cleanup(fn: Callable[[], object]) -> Callable[[], object]:
    """Run ``fn`` whenever the children are killed (time limit, Ctrl-C, SIGTERM, a crash):
    for what escapes the children's process groups, such as the daemons ``ray.init`` starts."""
    _CLEANUPS.append(fn)
    return fn


def remove_cleanup(fn: Callable[[], object]) -> None:
    if fn in _CLEANUPS:
        _CLEANUPS.remove(fn)


def kill_children() -> None:
    # Ctrl-C can land between a `with _CHILDREN_LOCK:` acquiring the lock and entering its
    # block, leaving the lock held for good: never wait on it for long when cleaning up.
    if _CHILDREN_LOCK.acquire(timeout=2):
        try:
            children = list(_CHILDREN)
        finally:
            _CHILDREN_LOCK.release()
    else:
        children = list(_CHILDREN)
    for proc in children:
        kill_process_group(proc, grace=5.0)
    for fn in list(_CLEANUPS):
        try:
            fn()
        except Exception as exc:  # cleanup must not hide the result
            print(f"cleanup {getattr(fn, '__name__', fn)} failed: {exc}", file=sys.stderr, flush=True)


@dataclass
class CommandResult:
    returncode: int | None
    output: str
    timed_out: bool
    seconds: float


def run_command(
    cmd: Sequence[str],
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    log_path: str | os.PathLike[str] | None = None,
    echo: bool = True,
) -> CommandResult:
    """Run ``cmd`` in its own session, echo and keep its output, and kill its group when it
    outlives ``timeout`` or when we are interrupted (the interruption is re-raised)."""
    start = time.monotonic()
    log = open(log_path, "w") if log_path else None  # noqa: SIM115 - closed in finally
    lines: list[str] = []
    proc = subprocess.Popen(
        list(cmd),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        errors="replace",
        env=dict(env) if env is not None else None,
        cwd=cwd,
        start_new_session=True,
    )
    with _CHILDREN_LOCK:
        _CHILDREN.add(proc)

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if echo:
                sys.stdout.write(line)
                sys.stdout.flush()
            if log:
                log.write(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        # Runs on timeout, on success (to reap stray grandchildren) and on Ctrl-C/SIGTERM.
        kill_process_group(proc)
        with _CHILDREN_LOCK:
            _CHILDREN.discard(proc)
        reader.join(timeout=5)
        if proc.stdout:
            proc.stdout.close()
        if log:
            log.close()
    return CommandResult(proc.returncode, "".join(lines), timed_out, time.monotonic() - start)


def start_child(
    cmd: Sequence[str],
    *,
    log_path: str | os.PathLike[str],
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> subprocess.Popen[str]:
    """Start a long-running ``cmd`` (a server) in its own session, its output going to
    ``log_path``. It is registered like ``run_command``'s children, so the watchdog, Ctrl-C
    and SIGTERM kill its whole process group; ``stop_child`` ends it in the normal case."""
    with open(log_path, "w") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            list(cmd),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
    with _CHILDREN_LOCK:
        _CHILDREN.add(proc)
    return proc


def stop_child(proc: subprocess.Popen[str], grace: float = 10.0) -> int | None:
    """SIGTERM, then SIGKILL, the child's whole process group; returns its exit code."""
    try:
        kill_process_group(proc, grace=grace)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    finally:
        with _CHILDREN_LOCK:
            _CHILDREN.discard(proc)
    return proc.returncode


def block_seconds(torch: Any, cuda: bool, fn: Callable[[], object], iters: int) -> float:
    """Mean seconds per call of ``iters`` back-to-back calls of ``fn``: between two CUDA events
    on a GPU (the device's clock, the queued work included), by the wall clock on the CPU.
    The caller synchronizes first (and, in a distributed job, meets its peers)."""
    if cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end)) / 1e3 / iters
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) / iters


@contextmanager
def work_folder(given: str | None, prefix: str) -> Iterator[Path]:
    """A test's folder for its model, data and logs: `given` (its --workdir), made if missing
    and kept afterwards, or a temporary one, removed however the test ends."""
    path = Path(given or tempfile.mkdtemp(prefix=prefix)).resolve()
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    finally:
        if not given:
            shutil.rmtree(path, ignore_errors=True)


def tail_text(path: str | os.PathLike[str], lines: int = 20) -> str:
    """The last ``lines`` non-empty lines of a log file ('' when there is none)."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])


class _Terminated(KeyboardInterrupt):
    """SIGTERM turned into an exception, so that cleanup runs as for Ctrl-C."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise _Terminated(f"signal {signum}")


class Watchdog:
    """Ends the process after ``seconds`` even when it is stuck inside C code (a hung collective).

    Python's own timeouts cannot interrupt a blocked CUDA or NCCL call, so a daemon thread
    calls ``on_timeout`` (which writes the failed result) and then ``os._exit``.
    """

    def __init__(self, seconds: float, on_timeout: Callable[[], int | None]):
        self.seconds = seconds
        self.on_timeout = on_timeout
        self._timer: threading.Timer | None = None

    def _fire(self) -> None:
        code = 1
        try:
            # Decide first: killed children would otherwise let the main thread report
            # their death ("exited with -15") instead of the time limit.
            got = self.on_timeout()
            code = got if isinstance(got, int) else 1
            kill_children()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def __enter__(self) -> Watchdog:
        if self.seconds and self.seconds > 0:
            self._timer = threading.Timer(self.seconds, self._fire)
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._timer:
            self._timer.cancel()


# ---------------------------------------------------------------------------- running a test


@dataclass
class Report:
    """What a test body fills in as it goes, so a failure or a timeout still reports it."""

    figures: dict[str, Any] = field(default_factory=dict)
    table_headers: list[str] = field(default_factory=list)
    table_rows: list[list[Any]] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)

    def table(self, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        self.table_headers = list(headers)
        self.table_rows = [list(r) for r in rows]

    def verdict(self, name: str, ok: bool | None, measured: str = "", expected: str = "", detail: str = "", *, gate: bool = False) -> Verdict:
        """Record what was judged (``ok`` None: not judged here, ``detail`` says why)."""
        found = Verdict(name, ok, measured, expected, detail, gate)
        self.verdicts.append(found)
        return found

    def check(self, name: str, ok: bool, measured: str = "", expected: str = "", detail: str = "") -> None:
        """Record a check and fail the test at once when it does not hold; ``detail`` (else
        the verdict itself) is the failure's reason."""
        found = self.verdict(name, ok, measured, expected, detail)
        if not ok:
            raise Fail(detail or found.describe())

    def failed_verdicts(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.ok is False]


#: Set to 1 by whoever asked for GPUs (`invoke smoke` on a host with GPUs, the nccl-2node
#: stack): the same as --require-gpu, and inherited by the ranks torchrun starts.
REQUIRE_GPU_ENV = "SMOKE_REQUIRE_GPU"


def add_common_args(parser: argparse.ArgumentParser, *, timeout: float) -> None:
    parser.add_argument("--cpu", action="store_true", help="run the CPU variant (no GPU needed)")
    parser.add_argument(
        "--require-gpu",
        action="store_true",
        default=os.environ.get(REQUIRE_GPU_ENV) == "1",
        help=f"GPUs were asked for: no GPU visible is a failure, not a skip (also {REQUIRE_GPU_ENV}=1)",
    )
    parser.add_argument("--json", metavar="PATH", help="write the JSON result here")
    parser.add_argument("--timeout", type=float, default=timeout, help=f"fail after this many seconds (default {timeout:g})")


def test_parser(doc: str | None, *, timeout: float) -> argparse.ArgumentParser:
    """A smoke test's command line: its module doc's first paragraph, the common options."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    add_common_args(parser, timeout=timeout)
    return parser


def run_main(
    name: str, parser: argparse.ArgumentParser, argv: Iterable[str] | None, body_for: Callable[[argparse.Namespace], Callable[[Report], None]],
    *, offline: bool = False,
) -> int:  # fmt: skip
    """A test's ``main``: its options parsed (``sys.argv`` when none are given), then its body
    run by ``run_test``. ``offline``: the test makes its own model and data, so the Hugging
    Face hub and datasets are never asked (unless the caller set them otherwise)."""
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if offline:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    return run_test(name, body_for(args), json_path=args.json, timeout=args.timeout)


def run_test(
    name: str,
    body: Callable[[Report], None],
    *,
    json_path: str | None,
    timeout: float,
    writer: bool = True,
    env_extra: Callable[[], Mapping[str, Any]] | None = None,
) -> int:
    """Run ``body`` under a time limit and turn its outcome into a printed and saved result.

    ``writer`` is False on the ranks of a distributed job other than 0: they run the same
    body but print and write nothing.
    """
    start = time.monotonic()
    report = Report()
    result = SmokeResult(test=name)

    # The first outcome wins: a time limit reached while the result is being written (the
    # environment probe imports torch) waits for it and exits with its code, never
    # overwriting a skip or a pass with a failure, nor exiting 1 beside a skipped result.
    decided = threading.Lock()
    done: list[bool] = []

    def finish(status: str, reason: str) -> SmokeResult:
        with decided:
            if done:
                return result
            result.status, result.reason = status, reason
            result.seconds = time.monotonic() - start
            result.figures = dict(report.figures)
            result.verdicts = [v.to_dict() for v in report.verdicts]
            if writer:
                try:
                    result.environment = {**environment(env_extra() if env_extra else None), **report.environment}
                except Exception as exc:  # never lose the result over its metadata
                    result.environment = {"error": f"{type(exc).__name__}: {exc}", **report.environment}
                emit(result, report, json_path)
            done.append(True)
            return result

    def on_timeout() -> int:
        return finish(FAILED, f"timed out after {timeout:g} s").exit_code

    previous = signal.getsignal(signal.SIGTERM)
    in_main = threading.current_thread() is threading.main_thread()
    if in_main:
        signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        with Watchdog(timeout, on_timeout):
            try:
                body(report)
            except Skip as exc:
                return finish(SKIPPED, str(exc) or "skipped").exit_code
            except Fail as exc:
                return finish(FAILED, str(exc)).exit_code
            except KeyboardInterrupt as exc:
                kill_children()
                why = "terminated" if isinstance(exc, _Terminated) else "interrupted"
                return finish(FAILED, why).exit_code
            except Exception as exc:
                traceback.print_exc()
                kill_children()
                return finish(FAILED, f"{type(exc).__name__}: {exc}").exit_code
            return finish(*returned(report)).exit_code
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)


def returned(report: Report) -> tuple[str, str]:
    """The outcome of a body that returned: a pass only when it judged something and every
    verdict it recorded held (a failed gate it forgot to raise still fails the test)."""
    failed = report.failed_verdicts()
    if failed:
        return FAILED, "; ".join(v.describe() for v in failed[:4]) + (f" (and {len(failed) - 4} more)" if len(failed) > 4 else "")
    if not any(v.ok is not None for v in report.verdicts):
        return FAILED, "the test returned without judging anything (no verdict recorded): a bug in the test, not a pass"
    return PASSED, ""


#: Set by a supervising parent (see ``smoke_tests.nccl.relaunch``) that prints the table itself.
SUPERVISED_ENV = "SMOKE_TESTS_SUPERVISED"


def emit(result: SmokeResult, report: Report, json_path: str | None) -> None:
    lines = [""]
    if report.table_rows and not os.environ.get(SUPERVISED_ENV):
        lines.append(render_table(report.table_headers, report.table_rows))
    lines.extend(report.notes)
    if report.verdicts and not os.environ.get(SUPERVISED_ENV):
        lines.append(render_verdicts(report.verdicts))
    lines.append(summary_line(result))
    print("\n".join(lines), flush=True)
    if json_path:
        write_json(result, json_path)
        print(f"result written to {json_path}", flush=True)


def render_verdicts(verdicts: Sequence[Verdict]) -> str:
    """The verdicts as a table: what was judged, measured against what was expected."""
    rows = [
        [v.name + (" (gate)" if v.gate else ""), v.measured or "-", v.expected or "-", v.status + (f": {v.detail}" if v.detail and v.ok is not True else "")]
        for v in verdicts
    ]
    return render_table(["verdict", "measured", "expected", "result"], rows)
