"""NCCL all-reduce smoke test: exact sums, then bus bandwidth over a sweep of message sizes.

Run one process per GPU::

    torchrun --nproc_per_node 2 -m smoke_tests.nccl --json nccl.json [--min-busbw 300]
    python -m smoke_tests.nccl            # starts torchrun itself, one rank per visible GPU
    python -m smoke_tests.nccl --cpu      # the same code over gloo on CPU tensors, smaller sizes

Correctness: every rank fills a fresh random buffer with small integers, so any order of
float additions gives the exact sum; each rank regenerates all ranks' buffers from the
shared seed and checks the reduced buffer element for element (``torch.equal``).

Bandwidth follows nccl-tests (doc/PERFORMANCE.md there): algbw = bytes / time and, for
all-reduce, busbw = algbw * 2(n-1)/n, which is comparable with the link's line rate
whatever n is. Each size is timed with CUDA events around ``--iters`` back-to-back
all-reduces after ``--warmup`` untimed ones; the slowest rank's time counts and the
median of ``--repeats`` such blocks is reported.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from smoke_tests._result import (
    SUPERVISED_ENV,
    Fail,
    Report,
    Skip,
    SmokeTest,
    add_common_args,
    fmt,
    fmt_bytes,
    no_gpu,
    nvidia_smi,
    read_json,
    run_command,
    run_test,
)

TEST = "nccl"
#: NVLink 4 (H100 SXM): 18 links of 25 GB/s per direction.
NVLINK4_LINE_RATE_GBPS = 450.0
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


def busbw_factor(world_size: int) -> float:
    """nccl-tests' all-reduce correction 2(n-1)/n: what each rank's links carry per byte."""
    if world_size < 1:
        raise ValueError("world size must be at least 1")
    return 2.0 * (world_size - 1) / world_size


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


_VIA = re.compile(r"NCCL INFO Channel \d+/\d+ : .* via (\S+)")


def parse_nccl_transports(log: str) -> list[str]:
    """Transports NCCL's INIT log says it connected channels through: P2P/CUMEM, SHM, NET/IB..."""
    seen: dict[str, None] = {}
    for match in _VIA.finditer(log):
        seen[match.group(1)] = None
    return list(seen)


def evaluate_gate(rows: Sequence[Mapping[str, Any]], min_busbw: float | None) -> str | None:
    """The failure message when the largest message's busbw is under ``min_busbw`` GB/s."""
    if not min_busbw or not rows:
        return None
    largest = max(rows, key=lambda r: r["bytes"])
    if largest["busbw_gbps"] < min_busbw:
        return (
            f"busbw {largest['busbw_gbps']:.1f} GB/s at {fmt_bytes(largest['bytes'])} "
            f"is under --min-busbw {min_busbw:g} GB/s"
        )
    return None


def parse_pci_bus_id(text: str) -> tuple[int, int, int] | None:
    """'00000000:18:00.0' -> (domain, bus, device)."""
    match = re.match(r"^\s*([0-9a-fA-F]+):([0-9a-fA-F]+):([0-9a-fA-F]+)\.[0-9a-fA-F]+\s*$", text)
    if not match:
        return None
    return tuple(int(g, 16) for g in match.groups())  # type: ignore[return-value]


def physical_gpu_indices(
    pci_ids: Sequence[tuple[int, int, int] | None], smi_csv: str | None, visible: str | None
) -> list[int] | None:
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
    """busbw at the largest size, the backend and world size, and whether every sum was exact."""
    sizes = figures.get("sizes") or []
    if not sizes:
        return "-"
    largest = max(sizes, key=lambda r: r.get("bytes", 0))
    exact = all(r.get("correct") for r in sizes)
    text = f"busbw {largest['busbw_gbps']:.1f} GB/s at {fmt_bytes(largest['bytes'])}"
    if largest.get("nvlink4_share"):
        text += f" ({largest['nvlink4_share'] * 100:.0f}% of NVLink4)"
    return f"{text}, {figures.get('backend')} x{figures.get('world_size')}, sums {'exact' if exact else 'WRONG'}"


#: The parent's limit is --timeout + 60 (torchrun's start and its ranks' end fit in that).
SMOKE = SmokeTest(TEST, timeout=300, key_figure=key_figure)


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


class _NcclLog:
    """Points NCCL's INFO log at a private file (unless the user set NCCL_DEBUG), to read the
    transport it chose; removed afterwards."""

    VARS = ("NCCL_DEBUG", "NCCL_DEBUG_SUBSYS", "NCCL_DEBUG_FILE")

    def __init__(self, enabled: bool):
        self.enabled = enabled and "NCCL_DEBUG" not in os.environ
        self.dir: tempfile.TemporaryDirectory[str] | None = None
        self.saved: dict[str, str | None] = {}

    def __enter__(self) -> _NcclLog:
        if self.enabled:
            self.dir = tempfile.TemporaryDirectory(prefix="smoke-nccl-log-")
            self.saved = {k: os.environ.get(k) for k in self.VARS}
            # NCCL reads these once, when the communicator is created just below.
            os.environ["NCCL_DEBUG"] = "INFO"
            os.environ["NCCL_DEBUG_SUBSYS"] = "INIT,P2P,SHM,NET"
            os.environ["NCCL_DEBUG_FILE"] = os.path.join(self.dir.name, "nccl.%p.log")
        return self

    def text(self) -> str:
        if not self.dir:
            return ""
        return "".join(p.read_text(errors="replace") for p in Path(self.dir.name).glob("nccl.*.log"))

    def __exit__(self, *exc: object) -> None:
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

            rows: list[dict[str, Any]] = []
            figures["sizes"] = rows
            wrong: list[str] = []
            for index, nbytes in enumerate(sizes):
                numel = nbytes // elem
                mine = _fill(torch, seed, index, rank, numel, dtype, bound, device)
                out = mine.clone()
                dist.all_reduce(out)
                expected = torch.zeros(numel, dtype=torch.float32, device=device)
                for r in range(world):
                    expected += _fill(torch, seed, index, r, numel, dtype, bound, device).float()
                ok = torch.equal(out, expected.to(dtype))
                bad = 0 if ok else int((out.float() != expected).sum().item())
                del expected, mine
                # Every rank checks its own copy: the verdict is all ranks', not rank 0's.
                tally = torch.tensor([0 if ok else 1, bad], dtype=torch.int64, device=device)
                dist.all_reduce(tally)
                wrong_ranks, bad = (int(v) for v in tally.tolist())
                if wrong_ranks:
                    wrong.append(f"{fmt_bytes(nbytes)} on {wrong_ranks} rank(s)")

                seconds = _time_allreduce(torch, dist, out, device, args.warmup, args.iters, args.repeats)
                del out
                algbw = algbw_gbps(nbytes, seconds)
                row = {
                    "bytes": nbytes, "count": numel, "time_us": seconds * 1e6, "algbw_gbps": algbw,
                    "busbw_gbps": busbw_gbps(algbw, world), "correct": wrong_ranks == 0,
                    "wrong_ranks": wrong_ranks, "mismatched_elements": bad,
                }  # fmt: skip
                rows.append(row)
                if rank == 0:
                    print(
                        f"{fmt_bytes(nbytes):>8}  {row['time_us']:10.1f} us  algbw {algbw:7.2f}  "
                        f"busbw {row['busbw_gbps']:7.2f} GB/s  {'ok' if row['correct'] else 'WRONG'}",
                        flush=True,
                    )

            if backend == "nccl" and rank == 0:
                _describe_links(torch, dist, figures, device, world, log)
            elif backend == "nccl":
                _describe_links(torch, dist, None, device, world, log)

        link_share = figures.get("link", "").startswith("NV")
        table_rows = []
        for row in rows:
            share = row["busbw_gbps"] / NVLINK4_LINE_RATE_GBPS if link_share else None
            row["nvlink4_share"] = share
            table_rows.append([
                fmt_bytes(row["bytes"]), fmt(row["time_us"], 1), fmt(row["algbw_gbps"]), fmt(row["busbw_gbps"]),
                "-" if share is None else f"{share * 100:.1f}%", "yes" if row["correct"] else "NO",
            ])  # fmt: skip
        headers = ["size", "time us", "algbw GB/s", "busbw GB/s", "of NVLink4", "exact"]
        report.table(headers, table_rows)
        figures["table"] = {"headers": headers, "rows": table_rows}
        if rows:
            figures["busbw_gbps_largest"] = rows[-1]["busbw_gbps"]
            figures["busbw_gbps_peak"] = max(r["busbw_gbps"] for r in rows)
        if "link" in figures:
            report.notes.append(
                f"link {figures['link']}  transports {','.join(figures.get('nccl_transports', [])) or '-'}  "
                f"NCCL {figures.get('nccl_version', '-')}  world {world}"
            )
        if wrong:
            raise Fail("wrong all-reduce sums at " + ", ".join(wrong))
        gate = evaluate_gate(rows, args.min_busbw)
        if gate:
            raise Fail(gate)

    return run_test(TEST, body, json_path=args.json if rank == 0 else None, timeout=args.timeout, writer=rank == 0)


def _time_allreduce(torch: Any, dist: Any, buf: Any, device: Any, warmup: int, iters: int, repeats: int) -> float:
    """Median over ``repeats`` of the slowest rank's mean time per all-reduce, in seconds.

    The buffer is reduced in place again and again, so its values grow (x n per call); that
    changes nothing in NCCL's timing and the check above ran on fresh data.
    """
    cuda = device.type == "cuda"
    for _ in range(warmup):
        dist.all_reduce(buf)
    samples = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize(device)
        dist.barrier()
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                dist.all_reduce(buf)
            end.record()
            end.synchronize()
            seconds = start.elapsed_time(end) / 1e3 / iters
        else:
            t0 = time.perf_counter()
            for _ in range(iters):
                dist.all_reduce(buf)
            seconds = (time.perf_counter() - t0) / iters
        worst = torch.tensor([seconds], dtype=torch.float64, device=device)
        dist.all_reduce(worst, op=dist.ReduceOp.MAX)
        samples.append(float(worst.item()))
    return statistics.median(samples)


def _describe_links(
    torch: Any, dist: Any, figures: dict[str, Any] | None, device: Any, world: int, log: _NcclLog
) -> None:
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
    figures["nccl_transports"] = parse_nccl_transports(log.text())
    if len(nodes) > 1:
        figures["link"] = "NET (ranks on several nodes)"
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
    return parser


def main(argv: Iterable[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    parser.add_argument("--min-busbw", type=float, metavar="GBPS", help="fail when busbw at the largest size is lower")
    args = parser.parse_args(argv)
    if not under_torchrun():
        return relaunch("smoke_tests.nccl", argv, args, TEST)
    return worker(args)


if __name__ == "__main__":
    sys.exit(main())
