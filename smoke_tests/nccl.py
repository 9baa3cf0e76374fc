"""NCCL collectives smoke test: all-reduce, all-gather, reduce-scatter and all-to-all, each
with exact results checked on every rank, then bus bandwidth over a sweep of message sizes.

Run one process per GPU::

    torchrun --nproc_per_node 2 -m smoke_tests.nccl --json nccl.json [--gate busbw_share=0.6]
    python -m smoke_tests.nccl            # starts torchrun itself, one rank per visible GPU
    python -m smoke_tests.nccl --cpu      # the same code over gloo on CPU tensors, smaller sizes

Correctness: every rank fills a fresh random buffer with small integers, so any order of
float additions gives the exact sum; each rank regenerates all ranks' buffers from the
shared seed and checks the reduced buffer element for element (``torch.equal``).

Bandwidth follows nccl-tests (doc/PERFORMANCE.md there): algbw = size / time, busbw = algbw
x the collective's factor (all-reduce 2(n-1)/n; all-gather, reduce-scatter and all-to-all
(n-1)/n), which is comparable with the link's line rate whatever n is. "size" is nccl-tests'
too: the whole buffer (all-gather's output, reduce-scatter's input, all-to-all's buffer per
rank). Each size is timed with CUDA events around ``--iters`` back-to-back all-reduces after
``--warmup`` untimed ones; the slowest rank's time counts and the median of ``--repeats``
such blocks is reported.

Gates (GATES below, on by default, each printed with what was measured): all-reduce busbw at
256 MiB and up as a share of NVLink's bandwidth where the GPUs are linked by NVLink, and the
transport NCCL connected its channels through against what ``nvidia-smi topo -m`` says the
GPUs can use (NVLink: P2P or NVLS; a silent fallback to SHM or sockets fails).
``--gate transport=P2P`` (or ``--expect-transport P2P``) asks for given transports,
``--gate busbw=300`` (or ``--min-busbw 300``) for a busbw floor in GB/s; ``--no-gates``
leaves the exact results only. Rank 0 reads NCCL's INFO log from a private file whatever
``NCCL_DEBUG`` says, and hands the user back the lines their own ``NCCL_DEBUG`` asked for.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from smoke_tests._gates import Gate, GateSettings, Value, add_gate_args, from_args, judge_floor, judge_switch
from smoke_tests._hardware import parse_pci_bus_id, pct, peaks_for, share
from smoke_tests._result import (
    NOT_JUDGED,
    PASSED,
    SUPERVISED_ENV,
    Fail,
    Report,
    Skip,
    SmokeTest,
    Verdict,
    add_cleanup,
    add_common_args,
    block_seconds,
    fmt,
    fmt_bytes,
    no_gpu,
    nvidia_smi,
    read_json,
    remove_cleanup,
    run_command,
    run_test,
)

TEST = "nccl"
GPU_SIZES = ("1M", "1G", 4)
CPU_SIZES = ("64K", "4M", 4)
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
#: Largest integer each dtype holds exactly (mantissa bits + 1).
DTYPE_EXACT_INT = {"bf16": 2**8, "fp16": 2**11, "fp32": 2**24}

NO_GPU_WHAT = "NCCL needs one GPU per rank (--cpu runs the gloo variant)"

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)


# ---------------------------------------------------------------------------- pure logic


def parse_size(text: str | int) -> int:
    """'1M', '1MiB', '64K', '1G', '4096' -> bytes (binary multiples, as nccl-tests' -b/-e)."""
    if isinstance(text, int):
        return text
    match = _SIZE_RE.match(text)
    if not match:
        raise ValueError(f"not a size: {text!r} (try 1M, 256MiB, 1G)")
    number, unit = float(match.group(1)), match.group(2).lower()
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[unit]
    value = number * scale
    if value != int(value) or value <= 0:
        raise ValueError(f"size {text!r} is not a positive whole number of bytes")
    return int(value)


def sweep_sizes(min_bytes: int, max_bytes: int, factor: int) -> list[int]:
    if min_bytes <= 0 or max_bytes < min_bytes:
        raise ValueError(f"bad sweep {min_bytes}..{max_bytes}")
    if factor < 2:
        raise ValueError("the sweep factor must be at least 2")
    sizes, size = [], min_bytes
    while size <= max_bytes:
        sizes.append(size)
        size *= factor
    return sizes


def algbw_gbps(nbytes: int, seconds: float) -> float:
    """Algorithm bandwidth in GB/s (1e9 bytes), as nccl-tests prints it."""
    if seconds <= 0:
        raise ValueError("time must be positive")
    return nbytes / seconds / 1e9


def busbw_factor(world_size: int, collective: str = "all_reduce") -> float:
    """nccl-tests' correction from algbw to busbw: what each rank's links carry per byte of
    "size". All-reduce 2(n-1)/n; all-gather, reduce-scatter, all-to-all (n-1)/n."""
    if world_size < 1:
        raise ValueError("world size must be at least 1")
    if collective not in COLLECTIVES:
        raise ValueError(f"unknown collective {collective!r}: one of {', '.join(COLLECTIVES)}")
    return COLLECTIVES[collective] * (world_size - 1) / world_size


#: Each collective's busbw factor, times (n-1)/n; nccl-tests' binary of the same collective
#: is ``{name without _}_perf`` (all_reduce_perf, all_gather_perf, reduce_scatter_perf, alltoall_perf).
COLLECTIVES: dict[str, float] = {"all_reduce": 2.0, "all_gather": 1.0, "reduce_scatter": 1.0, "all_to_all": 1.0}


def parse_collectives(text: str) -> list[str]:
    names = [n.strip().replace("-", "_") for n in text.split(",") if n.strip()]
    if names == ["all"]:
        return list(COLLECTIVES)
    unknown = [n for n in names if n not in COLLECTIVES]
    if unknown or not names:
        raise ValueError(f"unknown collective(s) {', '.join(unknown) or '(none)'}: use {', '.join(COLLECTIVES)} or all")
    return names


def message_elements(nbytes: int, elem: int, world: int) -> int:
    """Elements in a message of about ``nbytes``, divisible by the world size (each rank's chunk)."""
    return max(world, (nbytes // elem) // world * world)


def busbw_gbps(algbw: float, world_size: int) -> float:
    return algbw * busbw_factor(world_size)


def value_bound(dtype: str, world_size: int) -> int:
    """Largest |value| per rank such that every partial sum stays an exact integer in ``dtype``."""
    return max(1, DTYPE_EXACT_INT[dtype] // max(1, world_size))


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_DEVICE_COL = re.compile(r"^(GPU\d+|NIC\d+|mlx\S*)$")


def parse_topo(text: str) -> dict[str, dict[str, str]]:
    """``nvidia-smi topo -m`` -> {row device: {column device: link}} for GPUs and NICs.

    The header starts with the device columns (GPU0 GPU1 NIC0 ...), followed by
    "CPU Affinity" and friends; each GPU row holds one token per device column first.
    """
    matrix: dict[str, dict[str, str]] = {}
    columns: list[str] = []
    for raw in text.splitlines():
        line = _ANSI.sub("", raw).strip()
        if not line or line.startswith("Legend"):
            if columns and matrix:
                break
            continue
        tokens = line.split()
        if not columns:
            lead = []
            for tok in tokens:
                if not _DEVICE_COL.match(tok):
                    break
                lead.append(tok)
            if lead and lead[0].startswith("GPU"):
                columns = lead
            continue
        if _DEVICE_COL.match(tokens[0]) and len(tokens) > len(columns):
            matrix[tokens[0]] = dict(zip(columns, tokens[1 : 1 + len(columns)]))
    return matrix


def link_between(matrix: Mapping[str, Mapping[str, str]], gpus: Sequence[int]) -> dict[str, str]:
    """The link of every pair of the given physical GPU indices: {"0-1": "NV18", ...}."""
    links = {}
    for i, a in enumerate(gpus):
        for b in gpus[i + 1 :]:
            link = matrix.get(f"GPU{a}", {}).get(f"GPU{b}")
            links[f"{a}-{b}"] = link if link else "unknown"
    return links


#: From fastest to slowest, as the legend of `nvidia-smi topo -m` orders them.
LINK_ORDER = ("NV", "PIX", "PXB", "PHB", "NODE", "SYS")


def summarize_links(links: Mapping[str, str]) -> str:
    """One word for the whole job: the slowest pair decides (an all-reduce waits for it)."""
    if not links:
        return "none (single GPU)"
    kinds = set(links.values())
    if "unknown" in kinds:
        return "unknown"

    def rank(link: str) -> int:
        for i, prefix in enumerate(LINK_ORDER):
            if link.startswith(prefix):
                return i
        return len(LINK_ORDER)

    return max(kinds, key=lambda k: (rank(k), k))


_VIA = re.compile(r"NCCL INFO Channel \d+(?:/\d+)? ?: .* via (\S+)")


def parse_nccl_transports(log: str) -> list[str]:
    """Transports NCCL's INIT log says it connected channels through: P2P/CUMEM, SHM, NET/IB..."""
    seen: dict[str, None] = {}
    for match in _VIA.finditer(log):
        seen[match.group(1)] = None
    return list(seen)


def transport_gate(transports: Sequence[str], expected: Sequence[str]) -> str | None:
    """The failure message when NCCL connected a channel through another transport than the
    expected ones (prefixes: P2P, SHM, NVLS, NET/IB, NET/Socket...), or named none."""
    if not expected:
        return None
    if not transports:
        return f"NCCL's transport is unknown (no 'via' line in its INFO log), {' or '.join(expected)} expected"
    wanted = [e.upper() for e in expected]
    other = [t for t in transports if not any(t.upper() == w or t.upper().startswith(w + "/") for w in wanted)]
    if other:
        return f"NCCL used {', '.join(other)} where {' or '.join(expected)} was expected (a fallback)"
    return None


def expected_transports(link: str, nodes: int) -> tuple[str, ...]:
    """What NCCL should connect through, from the topology (the transport gate's ``auto``):
    GPUs joined by NVLink: P2P (or NVLS, NVLink SHARP); other GPUs of one node: P2P or SHM,
    never sockets; ranks on several nodes: whatever NCCL names (NET, or P2P/SHM where it
    finds the "nodes" on one host), as long as it names one."""
    if nodes > 1:
        return ("NET", "P2P", "SHM", "NVLS", "CollNet")
    if link.startswith("NV"):
        return ("P2P", "NVLS")
    return ("P2P", "SHM", "NVLS")


def link_used(transports: Sequence[str], nodes: int) -> str:
    """The link NCCL really used across several nodes, from its transports: 'NET/Socket across
    2 nodes', 'SHM across 2 nodes' (containers NCCL found on one host)."""
    families = []
    for transport in transports:
        parts = transport.split("/")
        family = "/".join(parts[:2]) if parts[0] in ("NET", "CollNet") and len(parts) > 1 else parts[0]
        if family not in families:
            families.append(family)
    if not families:
        return f"unknown across {nodes} nodes (NCCL named no transport)"
    return f"{'+'.join(families)} across {nodes} nodes"


#: The gates, from the healthy figures in BENCHMARKS.md: all-reduce busbw at 256 MiB and 1 GiB
#: on 2 x H100 (301/333 GB/s), 2 x H200 (302/334) and 4 x H100 (339/355), of NVLink4's 450
#: GB/s per direction, with a margin of 25% under the lowest; NCCL_P2P_DISABLE=1 on the
#: H200 pair gave SHM/direct/direct and 28 GB/s at 16 MiB: both gates fail it.
LARGE_BYTES = 256 << 20
GATES = (
    Gate(
        "busbw_share",
        "share",
        0.5,
        "all-reduce busbw at every size from 256 MiB as a share of NVLink's bandwidth per direction (GPUs joined by NVLink)",
        basis="healthy 0.67-0.79: 2 x H100 301/333 GB/s at 256 MiB/1 GiB, 2 x H200 302/334, 4 x H100 339/355, of 450; 0.5 is 25% under the lowest",
    ),
    Gate(
        "transport",
        "words",
        ("auto",),
        "the transports NCCL connected its channels through: auto expects what nvidia-smi topo -m allows "
        "(NVLink: P2P or NVLS; one node: no sockets; several nodes: a named one), or give prefixes (P2P, SHM, NVLS, NET/IB, NET/Socket)",
        basis="H100/H200 NVLink pairs connect P2P/CUMEM; with NCCL_P2P_DISABLE=1 the H200 pair fell back to SHM/direct/direct",
        pattern=r"(auto|P2P|SHM|NVLS|NET|CollNet)(/[A-Za-z0-9_]+)*",
    ),
    Gate("busbw", "number", None, "all-reduce busbw at the largest size (an absolute floor; off by default)", unit="GB/s"),
)


def physical_gpu_indices(pci_ids: Sequence[tuple[int, int, int] | None], smi_csv: str | None, visible: str | None) -> list[int] | None:
    """nvidia-smi's index of each rank's GPU: matched by PCI address, else CUDA_VISIBLE_DEVICES."""
    if smi_csv and all(pci_ids):
        by_pci = {}
        for line in smi_csv.strip().splitlines():
            index, _, bus = line.partition(",")
            parsed = parse_pci_bus_id(bus)
            if parsed and index.strip().isdigit():
                by_pci[parsed] = int(index)
        found = [by_pci.get(p) for p in pci_ids]  # type: ignore[arg-type]
        if all(i is not None for i in found):
            return found  # type: ignore[return-value]
    if visible:
        parts = [p.strip() for p in visible.split(",") if p.strip()]
        if all(p.isdigit() for p in parts) and len(parts) >= len(pci_ids):
            return [int(p) for p in parts[: len(pci_ids)]]
        return None
    return list(range(len(pci_ids)))


def key_figure(figures: Mapping[str, Any]) -> str:
    """All-reduce busbw at the largest size, the backend and world size, and whether every
    result of every collective was exact."""
    sizes = figures.get("sizes") or []
    if not sizes:
        return "-"
    largest = max(sizes, key=lambda r: r.get("bytes", 0))
    every = [row for rows in (figures.get("collectives") or {"all_reduce": sizes}).values() for row in rows]
    exact = all(r.get("correct") for r in every)
    text = f"busbw {largest['busbw_gbps']:.1f} GB/s at {fmt_bytes(largest['bytes'])}"
    share = largest.get("nvlink_share", largest.get("nvlink4_share"))
    if share:
        text += f" ({share * 100:.0f}% of NVLink)"
    count = len(figures.get("collectives") or {}) or 1
    what = "sums" if count == 1 else f"{count} collectives"
    return f"{text}, {figures.get('backend')} x{figures.get('world_size')}, {what} {'exact' if exact else 'WRONG'}"


#: The parent's limit is --timeout + 60 (torchrun's start and its ranks' end fit in that).
SMOKE = SmokeTest(TEST, timeout=300, key_figure=key_figure, gates=GATES)


def under_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


# ---------------------------------------------------------------------------- launching


def relaunch(module: str, argv: Sequence[str], args: argparse.Namespace, name: str) -> int:
    """Start ``torchrun`` over ``module`` and adopt the result rank 0 writes.

    The parent supervises: it kills the whole torchrun process group at the time limit or
    on Ctrl-C, and reports a failure even when no rank lived to write one.
    """

    def body(report: Report) -> None:
        import torch

        nproc = args.nproc or (2 if args.cpu else torch.cuda.device_count())
        if not args.cpu and torch.cuda.device_count() == 0:
            raise no_gpu(args.require_gpu, NO_GPU_WHAT)
        if nproc < 2:
            raise Skip(f"an all-reduce test needs at least 2 ranks; {nproc} GPU visible")
        with tempfile.TemporaryDirectory(prefix=f"smoke-{name}-") as tmp:
            child_json = Path(tmp) / "result.json"
            forwarded = _strip_json(argv)
            cmd = [
                sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={nproc}", "-m", module, *forwarded, "--json", str(child_json),
            ]  # fmt: skip
            print("+", " ".join(cmd), flush=True)
            run = run_command(cmd, timeout=args.timeout + 30, env={**os.environ, SUPERVISED_ENV: "1"})
            if child_json.exists():
                child = read_json(child_json)
                report.figures.update(child.get("figures", {}))
                report.environment.update(child.get("environment", {}))
                report.verdicts += [adopt(v) for v in child.get("verdicts", [])]
                rows = child.get("figures", {}).get("table")
                if rows:
                    report.table(rows["headers"], rows["rows"])
                if child["status"] == "skipped":
                    raise Skip(child["reason"])
                if child["status"] == "failed":
                    raise Fail(child["reason"])
                if run.returncode != 0:
                    raise Fail(f"rank 0 passed but torchrun exited with {run.returncode}")
                return
            if run.timed_out:
                raise Fail(f"torchrun timed out after {args.timeout + 30:g} s and was killed")
            raise Fail(f"torchrun exited with {run.returncode} and no rank wrote a result")

    return run_test(name, body, json_path=args.json, timeout=args.timeout + 60)


def adopt(data: Mapping[str, Any]) -> Verdict:
    """A verdict read back from a result's JSON."""
    ok = None if data["status"] == NOT_JUDGED else data["status"] == PASSED
    return Verdict(data["name"], ok, data["measured"], data["expected"], data["detail"], bool(data["gate"]))


def _strip_json(argv: Sequence[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--json":
            skip = True
            continue
        if arg.startswith("--json="):
            continue
        out.append(arg)
    return out


# ---------------------------------------------------------------------------- the distributed body


#: The INFO subsystems that name the transports; NCCL's own default subsystems when the user
#: asked for INFO without naming any.
CAPTURE_SUBSYS = ("INIT", "P2P", "SHM", "NET")
NCCL_DEFAULT_SUBSYS = ("INIT", "BOOTSTRAP", "ENV")
_NCCL_LINE = re.compile(r" NCCL (WARN|INFO|TRACE|ABORT) ")


def user_lines(text: str, level: str | None) -> str:
    """The lines of a captured INFO log that the user's own ``NCCL_DEBUG`` would have shown:
    nothing when unset, the version for VERSION, warnings for WARN, everything for INFO/TRACE."""
    level = (level or "").strip().upper()
    if not level:
        return ""
    lines = text.splitlines(keepends=True)
    if level in ("INFO", "TRACE"):
        return "".join(lines)
    if level == "VERSION":
        return "".join(line for line in lines if "NCCL version" in line)
    return "".join(line for line in lines if (m := _NCCL_LINE.search(line)) and m.group(1) in ("WARN", "ABORT"))


def expand_debug_file(pattern: str, hostname: str, pid: int) -> str:
    """NCCL_DEBUG_FILE's %h (host name) and %p (process id), as NCCL expands them."""
    return pattern.replace("%h", hostname).replace("%p", str(pid))


class _NcclLog:
    """Points NCCL's INFO log (the INIT, P2P, SHM and NET lines) at a private file, to read
    the transports it chose, whatever the user or a stack set NCCL_DEBUG to; on the way out,
    the user's settings come back and the lines their NCCL_DEBUG asked for are written where
    they asked (stdout, NCCL's default, or their NCCL_DEBUG_FILE). NCCL reads these variables
    once, when the first communicator is created inside the block."""

    VARS = ("NCCL_DEBUG", "NCCL_DEBUG_SUBSYS", "NCCL_DEBUG_FILE")

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.dir: tempfile.TemporaryDirectory[str] | None = None
        self.saved: dict[str, str | None] = {}
        self.replayed = False

    def __enter__(self) -> _NcclLog:
        if self.enabled:
            self.dir = tempfile.TemporaryDirectory(prefix="smoke-nccl-log-")
            self.saved = {k: os.environ.get(k) for k in self.VARS}
            level = (self.saved["NCCL_DEBUG"] or "").upper()
            subsys = list(CAPTURE_SUBSYS)
            if level in ("INFO", "TRACE"):  # theirs too (a "^X" exclusion list cannot be joined: ours alone, and NCCL's default)
                theirs = [s.strip().upper() for s in (self.saved["NCCL_DEBUG_SUBSYS"] or "").split(",") if s.strip()]
                theirs = list(NCCL_DEFAULT_SUBSYS) if not theirs or theirs[0].startswith("^") else theirs
                subsys = ["ALL"] if "ALL" in theirs else subsys + [name for name in theirs if name not in subsys]
            os.environ["NCCL_DEBUG"] = "TRACE" if level == "TRACE" else "INFO"
            os.environ["NCCL_DEBUG_SUBSYS"] = ",".join(subsys)
            os.environ["NCCL_DEBUG_FILE"] = os.path.join(self.dir.name, "nccl.%p.log")
            add_cleanup(self.replay)  # a time limit or Ctrl-C still hands the user their lines
        return self

    def text(self) -> str:
        if not self.dir:
            return ""
        return "".join(p.read_text(errors="replace") for p in sorted(Path(self.dir.name).glob("nccl.*.log")))

    def replay(self) -> None:
        """Write the lines the user's NCCL_DEBUG asked for where they asked for them (once)."""
        if self.replayed or not self.dir:
            return
        self.replayed = True
        lines = user_lines(self.text(), self.saved.get("NCCL_DEBUG"))
        if not lines:
            return
        target = self.saved.get("NCCL_DEBUG_FILE")
        if target:
            with open(expand_debug_file(target, os.uname().nodename, os.getpid()), "a") as out:
                out.write(lines)
        else:
            sys.stdout.write(lines)
            sys.stdout.flush()

    def __exit__(self, *exc: object) -> None:
        if not self.enabled:
            return
        remove_cleanup(self.replay)
        self.replay()
        # Put the user's settings back, so the recorded environment is theirs, not ours.
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if self.dir:
            self.dir.cleanup()


def _fill(torch: Any, seed: int, index: int, rank: int, numel: int, dtype: Any, bound: int, device: Any) -> Any:
    gen = torch.Generator(device=device)
    gen.manual_seed((seed * 1_000_003 + index * 1_009 + rank) % (2**63))
    return torch.randint(-bound, bound + 1, (numel,), generator=gen, dtype=dtype, device=device)


def worker(args: argparse.Namespace) -> int:
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])

    def body(report: Report) -> None:
        import torch
        import torch.distributed as dist

        gates = gate_settings(args)
        report.figures["gates"] = gates.as_figures()
        if args.cpu:
            device, backend = torch.device("cpu"), "gloo"
        else:
            if not torch.cuda.is_available():
                raise no_gpu(args.require_gpu, NO_GPU_WHAT)
            if local_rank >= torch.cuda.device_count():
                raise Fail(f"local rank {local_rank} has no GPU: {torch.cuda.device_count()} visible")
            device, backend = torch.device("cuda", local_rank), "nccl"
            torch.cuda.set_device(device)
        if world < 2:
            raise Skip("an all-reduce test needs at least 2 ranks")

        dtype_name = args.dtype or ("fp32" if args.cpu else "bf16")
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype_name]
        elem = DTYPE_BYTES[dtype_name]
        lo, hi, factor = CPU_SIZES if args.cpu else GPU_SIZES
        sizes = sweep_sizes(parse_size(args.min_bytes or lo), parse_size(args.max_bytes or hi), args.factor or factor)
        bound = value_bound(dtype_name, world)

        from datetime import timedelta

        log = _NcclLog(enabled=(backend == "nccl" and rank == 0))
        with log, contextlib.ExitStack() as stack:
            init_kwargs: dict[str, Any] = {"backend": backend, "timeout": timedelta(seconds=max(60, args.timeout))}
            if backend == "nccl":
                init_kwargs["device_id"] = device  # create the communicator now, not at the first call
            dist.init_process_group(**init_kwargs)
            stack.callback(dist.destroy_process_group)

            figures = report.figures
            figures.update(
                backend=backend, world_size=world, dtype=dtype_name, warmup=args.warmup,
                iters=args.iters, repeats=args.repeats, busbw_factor=busbw_factor(world),
                value_bound=bound,
            )  # fmt: skip
            if backend == "nccl":
                figures["nccl_version"] = ".".join(str(p) for p in torch.cuda.nccl.version())
                figures["gpu"] = torch.cuda.get_device_name(device)

            seed_t = torch.tensor([int.from_bytes(os.urandom(6), "little")], dtype=torch.int64, device=device)
            dist.broadcast(seed_t, src=0)
            seed = int(seed_t.item())
            figures["seed"] = seed

            collectives: dict[str, list[dict[str, Any]]] = {}
            figures["collectives"] = collectives
            wrong: list[str] = []
            wrong_sizes: dict[str, list[str]] = {}
            for name in args.collectives:
                rows: list[dict[str, Any]] = []
                collectives[name] = rows
                for index, nbytes in enumerate(sizes):
                    numel = message_elements(nbytes, elem, world)
                    op, expected = _case(torch, dist, name, seed, index, rank, world, numel, dtype, bound, device)
                    op()  # on fresh data: checked before the timing reuses the buffers
                    ok, bad = expected()
                    # Every rank checks its own output: the verdict is all ranks', not rank 0's.
                    tally = torch.tensor([0 if ok else 1, bad], dtype=torch.int64, device=device)
                    dist.all_reduce(tally)
                    wrong_ranks, bad = (int(v) for v in tally.tolist())
                    if wrong_ranks:
                        wrong.append(f"{name} {fmt_bytes(numel * elem)} on {wrong_ranks} rank(s)")
                        wrong_sizes.setdefault(name, []).append(f"{fmt_bytes(numel * elem)} on {wrong_ranks} rank(s)")
                    seconds = _time_op(torch, dist, op, device, args.warmup, args.iters, args.repeats)
                    del op, expected
                    algbw = algbw_gbps(numel * elem, seconds)
                    row: dict[str, Any] = {
                        "bytes": numel * elem, "count": numel, "time_us": seconds * 1e6, "algbw_gbps": algbw,
                        "busbw_gbps": algbw * busbw_factor(world, name), "correct": wrong_ranks == 0,
                        "wrong_ranks": wrong_ranks, "mismatched_elements": bad,
                    }  # fmt: skip
                    rows.append(row)
                    if rank == 0:
                        print(
                            f"{name:>14} {fmt_bytes(row['bytes']):>8}  {row['time_us']:10.1f} us  algbw {algbw:7.2f}  "
                            f"busbw {row['busbw_gbps']:7.2f} GB/s  {'ok' if row['correct'] else 'WRONG'}",
                            flush=True,
                        )
            figures["sizes"] = collectives.get("all_reduce", [])

            if backend == "nccl" and rank == 0:
                _describe_links(torch, dist, figures, device, world, log)
            elif backend == "nccl":
                _describe_links(torch, dist, None, device, world, log)

        # NVLink's share only where the GPUs talk over NVLink and the datasheet is known
        peaks = peaks_for(figures.get("gpu", "")) if backend == "nccl" else None
        nvlink = peaks.nvlink_gbps if peaks and figures.get("link", "").startswith("NV") else None
        figures["nvlink_gbps"] = nvlink
        table_rows = []
        for name, rows in figures["collectives"].items():
            for row in rows:
                row["nvlink_share"] = share(row["busbw_gbps"], nvlink)
                table_rows.append([
                    name, fmt_bytes(row["bytes"]), fmt(row["time_us"], 1), fmt(row["algbw_gbps"]), fmt(row["busbw_gbps"]),
                    pct(row["nvlink_share"]), "yes" if row["correct"] else "NO",
                ])  # fmt: skip
        headers = ["collective", "size", "time us", "algbw GB/s", "busbw GB/s", "of NVLink", "exact"]
        report.table(headers, table_rows)
        figures["table"] = {"headers": headers, "rows": table_rows}
        rows = figures["sizes"]
        if rows:
            figures["busbw_gbps_largest"] = rows[-1]["busbw_gbps"]
            figures["busbw_gbps_peak"] = max(r["busbw_gbps"] for r in rows)
        if "link" in figures:
            report.notes.append(
                f"link {figures['link']}  transports {','.join(figures.get('nccl_transports', [])) or '-'}  "
                f"NCCL {figures.get('nccl_version', '-')}  world {world}"
            )
        for name, rows_of in figures["collectives"].items():
            wrong_at = wrong_sizes.get(name, [])
            report.verdict(
                f"{name} exact", not wrong_at, f"wrong at {', '.join(wrong_at)}" if wrong_at else f"{len(rows_of)} sizes exact on {world} ranks",
                "every element on every rank",
            )  # fmt: skip
        judge(report, gates, figures, backend, judge_transport=rank == 0)  # only rank 0 reads NCCL's log
        if wrong:
            raise Fail("wrong results: " + ", ".join(wrong))
        failed = report.failed_verdicts()
        if failed:
            raise Fail("; ".join(v.describe() for v in failed))

    return run_test(TEST, body, json_path=args.json if rank == 0 else None, timeout=args.timeout, writer=rank == 0)


def gate_settings(args: argparse.Namespace) -> GateSettings:
    """Defaults, --no-gates, the old flags (--min-busbw, --expect-transport), then each --gate."""
    aliases: dict[str, Value] = {}
    if getattr(args, "min_busbw", None) is not None:
        aliases["busbw"] = args.min_busbw
    if args.expect_transport:
        aliases["transport"] = tuple(args.expect_transport)
    return from_args(args, GATES, aliases)


def judge(report: Report, gates: GateSettings, figures: Mapping[str, Any], backend: str, judge_transport: bool = True) -> None:
    """The gates against the figures: busbw's share of NVLink at the large sizes, the absolute
    busbw floor, and (on the rank that read NCCL's log) the transport."""
    rows = figures.get("sizes") or []
    large = [(fmt_bytes(r["bytes"]), r["nvlink_share"]) for r in rows if r["bytes"] >= LARGE_BYTES and r.get("nvlink_share") is not None]
    if backend != "nccl":
        why = f"{backend}: no NVLink"
    elif not str(figures.get("link", "")).startswith("NV"):
        why = f"the GPUs are not joined by NVLink (link {figures.get('link', 'unknown')})"
    elif not figures.get("nvlink_gbps"):
        why = f"{figures.get('gpu', 'this GPU')} has no NVLink peak in gpu_peaks.toml"
    else:
        why = f"no all-reduce of {fmt_bytes(LARGE_BYTES)} or more in the sweep (--max-bytes)"
    judge_floor(report, gates, "busbw_share", large, not_judged=why)
    largest = [(fmt_bytes(r["bytes"]), r["busbw_gbps"]) for r in rows[-1:]]
    judge_floor(report, gates, "busbw", largest, not_judged="no all-reduce measured")

    if not judge_transport:
        return
    if backend != "nccl":
        report.verdict("transport", None, backend, "-", f"{backend}: NCCL is not used", gate=True)
        return
    setting = gates["transport"]
    transports = list(figures.get("nccl_transports") or [])
    nodes = int(figures.get("nodes") or 1)
    if isinstance(setting, tuple) and [w.lower() for w in setting] == ["auto"]:
        expected = expected_transports(str(figures.get("link", "unknown")), nodes)
        shown = f"auto for {figures.get('link', 'unknown')}: {' or '.join(expected)}"
    else:
        expected = tuple(setting) if isinstance(setting, tuple) else ()
        shown = " or ".join(expected)
    measured = ", ".join(transports) or "none named"
    if setting is None:
        report.verdict("transport", None, measured, "-", gates.off_reason("transport"), gate=True)
        return
    problem = transport_gate(transports, expected)
    found = judge_switch(report, gates, "transport", problem is None, measured, problem or "")
    found.expected = shown


def _case(
    torch: Any, dist: Any, name: str, seed: int, index: int, rank: int, world: int, numel: int, dtype: Any, bound: int, device: Any
) -> tuple[Callable[[], None], Callable[[], tuple[bool, int]]]:
    """One collective on a message of ``numel`` elements (nccl-tests' size): the operation,
    and the check of this rank's output against what every rank's fresh data must give."""
    chunk = numel // world

    def fill(r: int, n: int) -> Any:
        return _fill(torch, seed, index, r, n, dtype, bound, device)

    if name == "all_reduce":
        out = fill(rank, numel)
        op: Callable[[], None] = lambda: dist.all_reduce(out)  # noqa: E731

        def want() -> Any:
            total = torch.zeros(numel, dtype=torch.float32, device=device)
            for r in range(world):
                total += fill(r, numel).float()
            return total.to(dtype)
    elif name == "all_gather":
        mine, out = fill(rank, chunk), torch.empty(numel, dtype=dtype, device=device)
        op = lambda: dist.all_gather_into_tensor(out, mine)  # noqa: E731

        def want() -> Any:
            return torch.cat([fill(r, chunk) for r in range(world)])
    elif name == "reduce_scatter":
        mine, out = fill(rank, numel), torch.empty(chunk, dtype=dtype, device=device)
        op = lambda: dist.reduce_scatter_tensor(out, mine)  # noqa: E731

        def want() -> Any:
            total = torch.zeros(chunk, dtype=torch.float32, device=device)
            for r in range(world):
                total += fill(r, numel)[rank * chunk : (rank + 1) * chunk].float()
            return total.to(dtype)
    elif name == "all_to_all":
        mine, out = fill(rank, numel), torch.empty(numel, dtype=dtype, device=device)
        op = lambda: dist.all_to_all_single(out, mine)  # noqa: E731

        def want() -> Any:
            return torch.cat([fill(r, numel)[rank * chunk : (rank + 1) * chunk] for r in range(world)])
    else:
        raise ValueError(f"unknown collective {name!r}")

    def check() -> tuple[bool, int]:
        expected = want()
        if torch.equal(out, expected):
            return True, 0
        return False, int((out.float() != expected.float()).sum().item())

    return op, check


def _time_op(torch: Any, dist: Any, op: Callable[[], None], device: Any, warmup: int, iters: int, repeats: int) -> float:
    """Median over ``repeats`` of the slowest rank's mean time per operation, in seconds.

    All-reduce runs in place again and again, so its values grow (x n per call); that
    changes nothing in NCCL's timing and the check above ran on fresh data.
    """
    cuda = device.type == "cuda"
    for _ in range(warmup):
        op()
    samples = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize(device)
        dist.barrier()
        seconds = block_seconds(torch, cuda, op, iters)
        worst = torch.tensor([seconds], dtype=torch.float64, device=device)
        dist.all_reduce(worst, op=dist.ReduceOp.MAX)
        samples.append(float(worst.item()))
    return statistics.median(samples)


def _describe_links(torch: Any, dist: Any, figures: dict[str, Any] | None, device: Any, world: int, log: _NcclLog) -> None:
    """Rank 0 records the topology matrix, the link between the GPUs in use and NCCL's transport."""
    props = torch.cuda.get_device_properties(device)
    mine = None
    if all(hasattr(props, a) for a in ("pci_domain_id", "pci_bus_id", "pci_device_id")):
        mine = (props.pci_domain_id, props.pci_bus_id, props.pci_device_id)
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, (os.uname().nodename, int(os.environ.get("LOCAL_RANK", 0)), mine))
    if figures is None:
        return
    nodes = {g[0] for g in gathered}
    topo = nvidia_smi(["topo", "-m"])
    figures["nvidia_smi_topo"] = topo or "nvidia-smi topo -m unavailable"
    figures["nccl_transports"] = transports = parse_nccl_transports(log.text())
    figures["nodes"] = len(nodes)
    if len(nodes) > 1:
        figures["link"] = link_used(transports, len(nodes))  # what NCCL used, not a guess from host names
        return
    smi = nvidia_smi(["--query-gpu=index,pci.bus_id", "--format=csv,noheader"])
    local = [g for g in gathered]
    gpus = physical_gpu_indices([g[2] for g in local], smi, os.environ.get("CUDA_VISIBLE_DEVICES"))
    figures["physical_gpus"] = gpus
    if topo and gpus is not None:
        links = link_between(parse_topo(topo), gpus)
        figures["links"] = links
        figures["link"] = summarize_links(links)
    else:
        figures["link"] = "unknown"


# ---------------------------------------------------------------------------- command line


def build_parser(description: str = __doc__ or "") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description.split("\n\n")[0])
    add_common_args(parser, timeout=SMOKE.timeout)
    parser.add_argument("--min-bytes", help="smallest message (default 1M on GPU, 64K with --cpu)")
    parser.add_argument("--max-bytes", help="largest message (default 1G on GPU, 4M with --cpu)")
    parser.add_argument("--factor", type=int, help="size step (default 4)")
    parser.add_argument("--dtype", choices=sorted(DTYPE_BYTES), help="default bf16 on GPU, fp32 on CPU")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--nproc", type=int, help="ranks to start when not under torchrun (default: GPUs visible)")
    parser.add_argument(
        "--collectives", type=parse_collectives, default=list(COLLECTIVES), metavar="LIST",
        help=f"comma-separated, or all (default): {', '.join(COLLECTIVES)}",
    )  # fmt: skip
    parser.add_argument(
        "--expect-transport", type=_transports, default=[], metavar="PREFIXES",
        help="the transport gate set to these: fail unless NCCL connected every channel through one of them (P2P, SHM, NVLS, NET/IB, NET/Socket)",
    )  # fmt: skip
    return parser


def _gbps(text: str) -> float:
    return GATES[2].parse_number_option(text, "--min-busbw", "GB/s (leave it out for no floor)")


def _transports(text: str) -> list[str]:
    value = GATES[1].parse_option(text, "--expect-transport")
    return list(value) if isinstance(value, tuple) else []


def main(argv: Iterable[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    parser.add_argument("--min-busbw", type=_gbps, metavar="GBPS", help="the busbw gate set to this: fail when busbw at the largest size is lower")
    add_gate_args(parser, GATES)
    args = parser.parse_args(argv)
    if not under_torchrun():
        return relaunch("smoke_tests.nccl", argv, args, TEST)
    return worker(args)


if __name__ == "__main__":
    sys.exit(main())
