"""GPU health: is each GPU computing and moving memory at its rated speed, and are its links
what they should be? One process over every visible GPU::

    python -m smoke_tests.gpu_health [--json PATH] [--min-share 0.7] [--require-full-links]

For each GPU:
- GEMM: bf16 matrix products (and fp8 through ``torch._scaled_mm`` on GPUs with FP8 tensor
  cores, compute capability >= 8.9) at a few sizes, timed with CUDA events after warm-up,
  each checked against a float32 product of the same inputs; TFLOP/s and the share of the
  datasheet's dense peak (gpu_peaks.toml).
- Memory: device-to-device copy bandwidth, bytes read + written (as nvbandwidth and the HBM
  datasheet count them), checked byte for byte; share of the memory peak.
- Host link: pinned host-to-device and device-to-host copy bandwidth, checked byte for byte,
  as a share of what the PCIe link can carry at its maximum generation and width
  (nvidia-smi's pcie.link.*); the link's generation and width are read while copies run
  (an idle link drops its generation to save power), and a link below its maximum is
  called out (a failure with ``--require-full-links``).
Between every ordered pair of GPUs: copy bandwidth (a matrix, like nvbandwidth's
device_to_device_memcpy), beside the pair's ``nvidia-smi topo -m`` link and, over NVLink,
its share of the datasheet's NVLink bandwidth per direction.

A wrong result fails the test; so does a figure under ``--min-share`` of its peak. A GPU not
in the peaks table gets its figures without a share, never a guessed peak. There is no CPU
variant: without a GPU the test skips (fails where GPUs were asked for).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from smoke_tests._hardware import (
    PCIE_QUERY,
    GpuPeaks,
    PcieLink,
    link_for_bus,
    matrix_table,
    parse_pcie_query,
    pct,
    peaks_for,
    share,
)
from smoke_tests._result import Fail, Report, Skip, SmokeTest, add_common_args, fmt, fmt_bytes, no_gpu, nvidia_smi, run_test
from smoke_tests.nccl import link_between, parse_size, parse_topo, physical_gpu_indices

TEST = "gpu_health"
NO_GPU_WHAT = "the GPU health test measures GPUs (it has no CPU variant)"
GEMM_SIZES = (4096, 8192, 16384)
#: Relative Frobenius error of a bf16/fp8 product against float32 on the same inputs: the
#: output's rounding alone is ~0.3%; a broken kernel is off by O(1).
GEMM_TOLERANCE = 0.02
#: Each timed GEMM block does at least this much work, so small sizes are not all launch cost.
GEMM_BLOCK_FLOP = 2e13


# ---------------------------------------------------------------------------- pure logic


def gemm_flop(n: int) -> float:
    return 2.0 * n**3


def tflops(n: int, seconds: float) -> float:
    if seconds <= 0:
        raise ValueError("time must be positive")
    return gemm_flop(n) / seconds / 1e12


def gemm_iters(n: int, minimum: int) -> int:
    """Iterations per timed block: at least ``minimum``, and enough for GEMM_BLOCK_FLOP (<= 200)."""
    return max(minimum, min(200, math.ceil(GEMM_BLOCK_FLOP / gemm_flop(n))))


def copy_gbps(nbytes: int, seconds: float, read_and_write: bool = False) -> float:
    """GB/s (1e9 bytes); a device-to-device copy reads and writes each byte: counted twice."""
    if seconds <= 0:
        raise ValueError("time must be positive")
    return nbytes * (2 if read_and_write else 1) / seconds / 1e9


def has_fp8(capability: tuple[int, int]) -> bool:
    """FP8 tensor cores: Ada (8.9), Hopper (9.0) and later."""
    return tuple(capability) >= (8, 9)


def relative_error(torch: Any, got: Any, want: Any) -> float:
    """||got - want||_F / ||want||_F, in float32."""
    got, want = got.float(), want.float()
    denom = float(torch.linalg.vector_norm(want))
    return float(torch.linalg.vector_norm(got - want)) / (denom or 1.0)


def share_failures(gpus: Sequence[Mapping[str, Any]], pairs: Sequence[Mapping[str, Any]], min_share: float | None) -> list[str]:
    """Every measured figure with a known peak that is under ``min_share`` of it."""
    if not min_share:
        return []
    low = []
    for gpu in gpus:
        for row in gpu.get("rows", []):
            if row.get("share") is not None and row["share"] < min_share:
                low.append(f"GPU{gpu['index']} {row['what']} {row['size']}: {pct(row['share'])} of peak")
    for pair in pairs:
        if pair.get("share") is not None and pair["share"] < min_share:
            low.append(f"GPU{pair['src']}->GPU{pair['dst']}: {pct(pair['share'])} of {pair['link']}")
    return low


def key_figure(figures: Mapping[str, Any]) -> str:
    """GPU 0's best bf16 GEMM, its memory and host-to-device bandwidth, and the slowest pair."""
    gpus = figures.get("gpus") or []
    if not gpus:
        return "-"
    rows = gpus[0].get("rows", [])

    def best(what: str) -> Mapping[str, Any] | None:
        found = [r for r in rows if r["what"] == what]
        return max(found, key=lambda r: r["value"]) if found else None

    parts = []
    for what, unit, label in (("bf16 GEMM", "TFLOP/s", "bf16"), ("memory copy", "GB/s", "HBM"), ("host to device", "GB/s", "H2D")):
        row = best(what)
        if row:
            parts.append(f"{label} {row['value']:.0f} {unit}" + (f" ({pct(row['share'])})" if row.get("share") is not None else ""))
    pairs = figures.get("pairs") or []
    if pairs:
        slowest = min(pairs, key=lambda p: p["gbps"])
        parts.append(f"GPU pairs >= {slowest['gbps']:.0f} GB/s")
    return ", ".join(parts) or "-"


SMOKE = SmokeTest(TEST, timeout=300, key_figure=key_figure)


# ---------------------------------------------------------------------------- measuring


def timed(torch: Any, device: Any, fn: Callable[[], Any], warmup: int, iters: int, repeats: int) -> float:
    """Median over ``repeats`` blocks of the mean seconds per call (CUDA events on a GPU)."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3 / iters)
        else:
            t0 = time.perf_counter()
            for _ in range(iters):
                fn()
            samples.append((time.perf_counter() - t0) / iters)
    return statistics.median(samples)


def measure_gemm(torch: Any, device: Any, n: int, kind: str, iters: int, repeats: int) -> dict[str, Any]:
    """One n x n x n product in bf16 or fp8 (e4m3, unit scales, bf16 out): TFLOP/s and its
    error against the float32 product of the same (already rounded) inputs."""
    gen = torch.Generator(device=device)
    gen.manual_seed(n)
    a = torch.randn(n, n, generator=gen, device=device, dtype=torch.float32)
    b = torch.randn(n, n, generator=gen, device=device, dtype=torch.float32)
    if kind == "bf16":
        a_in, b_in = a.to(torch.bfloat16), b.to(torch.bfloat16)
        call: Callable[[], Any] = lambda: torch.matmul(a_in, b_in)  # noqa: E731
        want = a_in.float() @ b_in.float()
    elif kind == "fp8":
        a_in = a.to(torch.float8_e4m3fn)
        b_in = b.to(torch.float8_e4m3fn)  # row-major (n, n); its .t() is the column-major operand
        one = torch.ones((), device=device, dtype=torch.float32)
        call = lambda: torch._scaled_mm(a_in, b_in.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)  # noqa: E731
        want = a_in.float() @ b_in.float().t()
    else:
        raise ValueError(f"unknown GEMM kind {kind!r}")
    del a, b
    error = relative_error(torch, call(), want)
    del want
    seconds = timed(torch, device, call, warmup=3, iters=gemm_iters(n, iters), repeats=repeats)
    return {"n": n, "kind": kind, "seconds": seconds, "tflops": tflops(n, seconds), "error": error, "correct": error <= GEMM_TOLERANCE}


def _random_bytes(torch: Any, nbytes: int, device: Any, seed: int) -> Any:
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return torch.randint(0, 256, (nbytes,), generator=gen, dtype=torch.uint8, device=device)


def measure_device_copy(torch: Any, device: Any, nbytes: int, iters: int, repeats: int) -> dict[str, Any]:
    src = _random_bytes(torch, nbytes, device, 1)
    dst = torch.empty_like(src)
    seconds = timed(torch, device, lambda: dst.copy_(src), warmup=3, iters=iters, repeats=repeats)
    return {"bytes": nbytes, "seconds": seconds, "gbps": copy_gbps(nbytes, seconds, read_and_write=True), "correct": bool(torch.equal(dst, src))}


def measure_host_copies(torch: Any, device: Any, nbytes: int, iters: int, repeats: int, during_load: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Pinned host <-> device, each direction timed alone; ``during_load`` runs (once) while a
    long queue of host-to-device copies keeps the link busy: the link's state under load."""
    pinned = device.type == "cuda"
    source = _random_bytes(torch, nbytes, device, 2)
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=pinned)
    host.copy_(source)
    on_device = torch.empty_like(source)
    h2d = timed(torch, device, lambda: on_device.copy_(host, non_blocking=True), warmup=3, iters=iters, repeats=repeats)
    h2d_ok = bool(torch.equal(on_device, source))
    back = torch.empty(nbytes, dtype=torch.uint8, pin_memory=pinned)
    d2h = timed(torch, device, lambda: back.copy_(source, non_blocking=True), warmup=3, iters=iters, repeats=repeats)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    d2h_ok = bool(torch.equal(back, host))
    under_load = None
    if during_load is not None:
        for _ in range(max(8, min(2000, int(1.5 / max(h2d, 1e-6))))):  # ~1.5 s of copies queued: nvidia-smi is slow to answer
            on_device.copy_(host, non_blocking=True)
        under_load = during_load()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return {
        "bytes": nbytes, "h2d_gbps": copy_gbps(nbytes, h2d), "d2h_gbps": copy_gbps(nbytes, d2h),
        "correct": h2d_ok and d2h_ok, "under_load": under_load,
    }  # fmt: skip


def measure_pair(torch: Any, src_dev: Any, dst_dev: Any, nbytes: int, iters: int, repeats: int) -> dict[str, Any]:
    """Copy bandwidth from one GPU's memory into another's (one direction), checked byte for byte."""
    src = _random_bytes(torch, nbytes, src_dev, 3)
    dst = torch.empty(nbytes, dtype=torch.uint8, device=dst_dev)

    def both_synchronized() -> None:
        for dev in (src_dev, dst_dev):
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)

    def block() -> float:
        both_synchronized()
        t0 = time.perf_counter()
        for _ in range(iters):
            dst.copy_(src, non_blocking=True)
        both_synchronized()
        return (time.perf_counter() - t0) / iters

    for _ in range(3):
        dst.copy_(src, non_blocking=True)
    seconds = statistics.median(block() for _ in range(repeats))
    correct = bool(torch.equal(dst.to(src_dev), src))
    return {"bytes": nbytes, "seconds": seconds, "gbps": copy_gbps(nbytes, seconds), "correct": correct}


# ---------------------------------------------------------------------------- the test


def _pcie_now(bus: tuple[int, int, int] | None) -> PcieLink | None:
    found = link_for_bus(parse_pcie_query(nvidia_smi([f"--query-gpu={PCIE_QUERY}", "--format=csv,noheader,nounits"]) or ""), bus)
    return found[1] if found else None


def _bus_of(torch: Any, device: Any) -> tuple[int, int, int] | None:
    props = torch.cuda.get_device_properties(device)
    if all(hasattr(props, a) for a in ("pci_domain_id", "pci_bus_id", "pci_device_id")):
        return props.pci_domain_id, props.pci_bus_id, props.pci_device_id
    return None


def _row(what: str, size: str, value: float, unit: str, peak: float | None, peak_label: str, ok: bool, **extra: Any) -> dict[str, Any]:
    return {
        "what": what,
        "size": size,
        "value": value,
        "unit": unit,
        "peak": peak,
        "peak_label": peak_label,
        "share": share(value, peak),
        "correct": ok,
        **extra,
    }


def check_gpu(torch: Any, index: int, args: argparse.Namespace, errors: list[str], notes: list[str]) -> dict[str, Any]:
    device = torch.device("cuda", index)
    torch.cuda.set_device(device)
    name = torch.cuda.get_device_name(device)
    capability = torch.cuda.get_device_capability(device)
    peaks: GpuPeaks | None = peaks_for(name)
    gpu: dict[str, Any] = {
        "index": index, "name": name, "capability": list(capability),
        "peaks": None if peaks is None else {"model": peaks.model, "source": peaks.source},
        "rows": [],
    }  # fmt: skip
    rows: list[dict[str, Any]] = gpu["rows"]
    print(f"GPU{index}: {name}, compute capability {capability[0]}.{capability[1]}, peaks: {peaks.model if peaks else 'not in the table'}", flush=True)

    def part(label: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:  # one broken part must not hide the others' figures
            errors.append(f"GPU{index} {label}: {type(exc).__name__}: {exc}")
            print(f"GPU{index} {label}: {type(exc).__name__}: {exc}", flush=True)

    kinds = ["bf16"] + (["fp8"] if has_fp8(capability) and "fp8" in args.gemm else [])
    kinds = [k for k in kinds if k in args.gemm]
    for kind in kinds:
        peak = (peaks.bf16_tflops if kind == "bf16" else peaks.fp8_tflops) if peaks else None
        for n in args.gemm_sizes:

            def gemm(kind: str = kind, n: int = n, peak: float | None = peak) -> None:
                r = measure_gemm(torch, device, n, kind, args.iters, args.repeats)
                rows.append(_row(f"{kind} GEMM", f"n={n}", r["tflops"], "TFLOP/s", peak, "dense peak", r["correct"], error=r["error"]))
                print(f"  {kind} GEMM n={n}: {r['tflops']:.1f} TFLOP/s, error {r['error']:.2e}", flush=True)
                if not r["correct"]:
                    errors.append(f"GPU{index} {kind} GEMM n={n}: error {r['error']:.3g} against float32 (> {GEMM_TOLERANCE})")

            part(f"{kind} GEMM n={n}", gemm)
            torch.cuda.empty_cache()

    def memory() -> None:
        r = measure_device_copy(torch, device, args.copy_bytes, args.iters, args.repeats)
        peak = peaks.memory_gbps if peaks else None
        rows.append(_row("memory copy", fmt_bytes(r["bytes"]), r["gbps"], "GB/s", peak, "memory peak", r["correct"]))
        print(f"  device-to-device copy {fmt_bytes(r['bytes'])}: {r['gbps']:.0f} GB/s (read + write)", flush=True)
        if not r["correct"]:
            errors.append(f"GPU{index} memory copy: the copy differs from its source")

    part("memory copy", memory)
    torch.cuda.empty_cache()

    def host() -> None:
        bus = _bus_of(torch, device)
        idle = _pcie_now(bus)
        r = measure_host_copies(torch, device, args.host_bytes, args.iters, args.repeats, during_load=lambda: _pcie_now(bus))
        link: PcieLink | None = r["under_load"] or idle
        gpu["pcie"] = (
            None if link is None else {"now": link.describe(), "gen": link.gen, "width": link.width, "gen_max": link.gen_max, "width_max": link.width_max}
        )
        peak = link.gbps_max if link else None
        label = f"PCIe Gen{link.gen_max} x{link.width_max}" if link and peak else "PCIe link unknown"
        for what, value in (("host to device", r["h2d_gbps"]), ("device to host", r["d2h_gbps"])):
            rows.append(_row(what, fmt_bytes(r["bytes"]), value, "GB/s", peak, label, r["correct"]))
        print(f"  pinned H2D {r['h2d_gbps']:.1f} GB/s, D2H {r['d2h_gbps']:.1f} GB/s; link under load: {link.describe() if link else 'unknown'}", flush=True)
        if not r["correct"]:
            errors.append(f"GPU{index} host copies: a copy differs from its source")
        below = link.below_max() if link else None
        if below:
            gpu["pcie_below_max"] = below
            message = f"GPU{index}'s PCIe link runs below its maximum while copying: {below} (reseat the card, check the slot and BIOS link settings)"
            notes.append(message)
            if args.require_full_links:
                errors.append(message)

    part("host copies", host)
    torch.cuda.empty_cache()
    return gpu


def check_pairs(torch: Any, gpus: Sequence[Mapping[str, Any]], args: argparse.Namespace, errors: list[str]) -> list[dict[str, Any]]:
    count = len(gpus)
    topo = nvidia_smi(["topo", "-m"])
    smi = nvidia_smi(["--query-gpu=index,pci.bus_id", "--format=csv,noheader"])
    physical = physical_gpu_indices([_bus_of(torch, torch.device("cuda", i)) for i in range(count)], smi, os.environ.get("CUDA_VISIBLE_DEVICES"))
    links = link_between(parse_topo(topo), physical) if topo and physical else {}
    pairs = []
    for src in range(count):
        for dst in range(count):
            if src == dst:
                continue
            a, b = (physical[src], physical[dst]) if physical else (src, dst)
            link = links.get(f"{a}-{b}") or links.get(f"{b}-{a}") or "unknown"
            peaks = peaks_for(gpus[src]["name"])
            peak = peaks.nvlink_gbps if peaks and link.startswith("NV") else None
            try:
                r = measure_pair(torch, torch.device("cuda", src), torch.device("cuda", dst), args.p2p_bytes, args.iters, args.repeats)
            except Exception as exc:
                errors.append(f"GPU{src}->GPU{dst}: {type(exc).__name__}: {exc}")
                continue
            peer = bool(torch.cuda.can_device_access_peer(src, dst))
            pairs.append(
                {
                    "src": src,
                    "dst": dst,
                    "link": link,
                    "peer_access": peer,
                    "gbps": r["gbps"],
                    "peak": peak,
                    "share": share(r["gbps"], peak),
                    "correct": r["correct"],
                }
            )
            print(f"  GPU{src} -> GPU{dst} ({link}, peer access {'yes' if peer else 'no'}): {r['gbps']:.0f} GB/s", flush=True)
            if not r["correct"]:
                errors.append(f"GPU{src}->GPU{dst}: the copy differs from its source")
    return pairs


def body(args: argparse.Namespace, report: Report) -> None:
    if args.cpu:
        raise Skip("the GPU health test has no CPU variant: it measures GPUs")
    import torch

    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        raise no_gpu(args.require_gpu, NO_GPU_WHAT)
    count = torch.cuda.device_count()
    errors: list[str] = []
    figures = report.figures
    figures["gpus"] = gpus = []
    for index in range(count):
        gpus.append(check_gpu(torch, index, args, errors, report.notes))
    figures["pairs"] = pairs = check_pairs(torch, gpus, args, errors) if count > 1 else []

    table_rows = []
    for gpu in gpus:
        for row in gpu["rows"]:
            peak = "-" if row["peak"] is None else f"{fmt(row['peak'], 1)} ({row['peak_label']})"
            table_rows.append(
                [
                    f"GPU{gpu['index']}",
                    row["what"],
                    row["size"],
                    f"{fmt(row['value'], 1)} {row['unit']}",
                    peak,
                    pct(row["share"]),
                    "yes" if row["correct"] else "NO",
                ]
            )
    for pair in pairs:
        peak = "-" if pair["peak"] is None else f"{fmt(pair['peak'], 0)} (NVLink per direction)"
        what = f"copy to GPU{pair['dst']} ({pair['link']})"
        table_rows.append(
            [f"GPU{pair['src']}", what, fmt_bytes(args.p2p_bytes), f"{fmt(pair['gbps'], 1)} GB/s", peak, pct(pair["share"]), "yes" if pair["correct"] else "NO"]
        )
    headers = ["gpu", "what", "size", "measured", "peak", "share", "correct"]
    report.table(headers, table_rows)
    figures["table"] = {"headers": headers, "rows": table_rows}
    if pairs:
        labels = [f"GPU{i}" for i in range(count)]
        matrix = {(p["src"], p["dst"]): f"{p['gbps']:.0f} {p['link']}" for p in pairs}
        m_headers, m_rows = matrix_table(labels, matrix)
        figures["pair_matrix"] = {"headers": m_headers, "rows": m_rows}
        report.notes.append("GPU-to-GPU copy GB/s (link):\n" + "\n".join("  ".join(r) for r in [m_headers, *m_rows]))
    unknown = {g["name"] for g in gpus if g["peaks"] is None}
    if unknown:
        report.notes.append(f"not in smoke_tests/gpu_peaks.toml: {', '.join(sorted(unknown))} (figures without a share of peak)")
    if errors:
        raise Fail("; ".join(errors[:4]) + (f" (and {len(errors) - 4} more)" if len(errors) > 4 else ""))
    low = share_failures(gpus, pairs, args.min_share)
    if low:
        raise Fail(f"under --min-share {args.min_share:g}: " + "; ".join(low[:4]) + (f" (and {len(low) - 4} more)" if len(low) > 4 else ""))


def _sizes(text: str) -> list[int]:
    sizes = [int(t) for t in text.split(",") if t.strip()]
    if not sizes or any(n < 16 or n % 16 for n in sizes):
        raise argparse.ArgumentTypeError(f"GEMM sizes must be multiples of 16: {text}")
    return sizes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    add_common_args(parser, timeout=SMOKE.timeout)
    parser.add_argument(
        "--gemm", type=lambda t: [k.strip() for k in t.split(",") if k.strip()], default=["bf16", "fp8"], help="bf16,fp8 (fp8 where the GPU has it)"
    )
    parser.add_argument("--gemm-sizes", type=_sizes, default=list(GEMM_SIZES), metavar="N,N", help="square GEMM sizes (default 4096,8192,16384)")
    parser.add_argument("--copy-bytes", type=parse_size, default=parse_size("1G"), help="device copy size (default 1G)")
    parser.add_argument("--host-bytes", type=parse_size, default=parse_size("256M"), help="host copy size (default 256M)")
    parser.add_argument("--p2p-bytes", type=parse_size, default=parse_size("256M"), help="GPU-to-GPU copy size (default 256M)")
    parser.add_argument("--iters", type=int, default=10, help="calls per timed block (GEMM: more at small sizes)")
    parser.add_argument("--repeats", type=int, default=3, help="timed blocks; the median counts")
    parser.add_argument("--min-share", type=float, metavar="FRACTION", help="fail when a figure with a known peak is under this share of it")
    parser.add_argument("--require-full-links", action="store_true", help="a PCIe link below its max generation or width fails the test")
    return parser


def main(argv: Iterable[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    return run_test(TEST, lambda report: body(args, report), json_path=args.json, timeout=args.timeout)


if __name__ == "__main__":
    sys.exit(main())
