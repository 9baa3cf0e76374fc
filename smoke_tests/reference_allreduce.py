"""The plainest all-reduce timing loop, as a yardstick for ``smoke_tests.nccl``.

    torchrun --nproc_per_node 2 -m smoke_tests.reference_allreduce --json ref.json \\
        [--compare nccl.json --min-ratio 0.95]

Per size: one random buffer, ``--warmup`` calls of ``torch.distributed.all_reduce``, then
``--iters`` calls between two CUDA events, ``--repeats`` times; the median block's mean time
gives algbw and busbw (nccl-tests' definitions). No correctness check, no extra machinery:
if the smoke test's numbers fall short of these in the same job, the smoke test is what
slows things down. ``--compare`` reads the smoke test's JSON and reports busbw smoke /
reference per size; sizes from ``--compare-min-bytes`` up (bandwidth-bound, not
latency-bound) must reach ``--min-ratio``.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from smoke_tests._result import Fail, Report, Skip, fmt, fmt_bytes, read_json, run_test
from smoke_tests.nccl import (
    CPU_SIZES,
    DTYPE_BYTES,
    GPU_SIZES,
    algbw_gbps,
    build_parser,
    busbw_gbps,
    parse_size,
    relaunch,
    sweep_sizes,
    under_torchrun,
)

TEST = "reference_allreduce"


def compare(smoke_rows: Sequence[Mapping[str, Any]], ref_rows: Sequence[Mapping[str, Any]], min_bytes: int) -> list[dict[str, Any]]:
    """busbw smoke / reference for each size both measured; ``gated`` marks sizes >= min_bytes."""
    ref_by_size = {r["bytes"]: r for r in ref_rows}
    out = []
    for row in smoke_rows:
        ref = ref_by_size.get(row["bytes"])
        if not ref or not ref["busbw_gbps"]:
            continue
        out.append({
            "bytes": row["bytes"], "smoke_busbw_gbps": row["busbw_gbps"], "reference_busbw_gbps": ref["busbw_gbps"],
            "ratio": row["busbw_gbps"] / ref["busbw_gbps"], "gated": row["bytes"] >= min_bytes,
        })  # fmt: skip
    return out


def ratio_failures(rows: Sequence[Mapping[str, Any]], min_ratio: float) -> list[str]:
    return [f"{fmt_bytes(r['bytes'])} at {r['ratio']:.3f}" for r in rows if r["gated"] and r["ratio"] < min_ratio]


def worker(args: Any) -> int:
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])

    def body(report: Report) -> None:
        import torch
        import torch.distributed as dist

        if args.cpu:
            device = torch.device("cpu")
            dist.init_process_group("gloo")
        else:
            if not torch.cuda.is_available():
                raise Skip("no CUDA GPU visible")
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", device_id=device)
        try:
            if world < 2:
                raise Skip("needs at least 2 ranks")
            dtype_name = args.dtype or ("fp32" if args.cpu else "bf16")
            dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype_name]
            lo, hi, factor = CPU_SIZES if args.cpu else GPU_SIZES
            sizes = sweep_sizes(parse_size(args.min_bytes or lo), parse_size(args.max_bytes or hi), args.factor or factor)
            rows: list[dict[str, Any]] = []
            report.figures.update(world_size=world, dtype=dtype_name, warmup=args.warmup, iters=args.iters)
            report.figures["sizes"] = rows
            for nbytes in sizes:
                x = torch.randn(nbytes // DTYPE_BYTES[dtype_name], dtype=dtype, device=device)
                for _ in range(args.warmup):
                    dist.all_reduce(x)
                blocks = []
                for _ in range(args.repeats):
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    dist.barrier()
                    if device.type == "cuda":
                        start = torch.cuda.Event(enable_timing=True)
                        end = torch.cuda.Event(enable_timing=True)
                        start.record()
                        for _ in range(args.iters):
                            dist.all_reduce(x)
                        end.record()
                        end.synchronize()
                        blocks.append(start.elapsed_time(end) / 1e3 / args.iters)
                    else:
                        t0 = time.perf_counter()
                        for _ in range(args.iters):
                            dist.all_reduce(x)
                        blocks.append((time.perf_counter() - t0) / args.iters)
                seconds = statistics.median(blocks)
                algbw = algbw_gbps(nbytes, seconds)
                rows.append({
                    "bytes": nbytes, "time_us": seconds * 1e6, "algbw_gbps": algbw,
                    "busbw_gbps": busbw_gbps(algbw, world),
                })  # fmt: skip
                del x
        finally:
            dist.destroy_process_group()

        # A reference measures; what it judges is that every size was timed (and, with --compare, the ratio).
        report.verdict("every size timed", len(rows) == len(sizes), f"{len(rows)} of {len(sizes)} sizes", "a time for every size")
        headers = ["size", "time us", "algbw GB/s", "busbw GB/s"]
        table = [[fmt_bytes(r["bytes"]), fmt(r["time_us"], 1), fmt(r["algbw_gbps"]), fmt(r["busbw_gbps"])] for r in rows]
        if args.compare:
            smoke = read_json(args.compare)
            cmp = compare(smoke["figures"].get("sizes", []), rows, parse_size(args.compare_min_bytes))
            report.figures["comparison"] = cmp
            by_size = {c["bytes"]: c for c in cmp}
            headers += ["smoke busbw", "smoke/ref"]
            for line, r in zip(table, rows):
                c = by_size.get(r["bytes"])
                line += [fmt(c["smoke_busbw_gbps"]), fmt(c["ratio"], 3) + ("" if c["gated"] else " (not gated)")] if c else ["-", "-"]
            report.table(headers, table)
            report.figures["table"] = {"headers": headers, "rows": table}
            gated = [c["ratio"] for c in cmp if c["gated"]]
            if gated:
                report.figures["min_gated_ratio"] = min(gated)
            failures = ratio_failures(cmp, args.min_ratio)
            if gated:
                report.verdict(
                    "smoke / reference", not failures, f"{min(gated):.3f} at least", f">= {args.min_ratio:g} from {args.compare_min_bytes}",
                    ", ".join(failures),
                )  # fmt: skip
            if smoke.get("status") != "passed":
                raise Fail(f"the smoke result being compared is {smoke.get('status')}: {smoke.get('reason')}")
            if not gated:
                raise Fail(f"no size >= {args.compare_min_bytes} in both results to compare")
            if failures:
                raise Fail(f"smoke busbw under {args.min_ratio:g} x reference at " + ", ".join(failures))
        else:
            report.table(headers, table)
            report.figures["table"] = {"headers": headers, "rows": table}

    return run_test(TEST, body, json_path=args.json if rank == 0 else None, timeout=args.timeout, writer=rank == 0)


def main(argv: Iterable[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(__doc__ or "")
    parser.add_argument("--compare", metavar="SMOKE_JSON", help="the smoke test's result to compare with")
    parser.add_argument("--min-ratio", type=float, default=0.95, help="smoke busbw / reference busbw floor")
    parser.add_argument("--compare-min-bytes", default="64M", help="sizes from this up are gated (default 64M)")
    args = parser.parse_args(argv)
    if not under_torchrun():
        return relaunch("smoke_tests.reference_allreduce", argv, args, TEST)
    return worker(args)


if __name__ == "__main__":
    sys.exit(main())
