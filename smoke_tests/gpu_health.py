"""GPU health: is each GPU computing and moving memory at its rated speed, and are its links
what they should be? One process over every visible GPU::

    python -m smoke_tests.gpu_health [--json PATH] [--gate bf16_gemm_share=0.6] [--no-gates]

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

A wrong result fails the test, and so does a figure under its gate (GATES below, applied by
default and printed with what was measured): every bf16 and fp8 GEMM, the memory copy, the
host copies and the NVLink copies as shares of their peaks, and the PCIe link at its maximum
generation and width under load. The defaults sit about 30% under the lowest figure of a
healthy H100/H200 (BENCHMARKS.md), so a GPU at half its clocks or shared with a busy process
fails them. ``--gate NAME=VALUE`` sets one (``off`` turns it off), ``--no-gates`` leaves
correctness only. A GPU not in the peaks table gets its figures without a share, never a
guessed peak: its share gates are reported not judged. There is no CPU variant: without a
GPU the test skips (fails where GPUs were asked for).
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

from smoke_tests._gates import Gate, GateSettings, Value, add_gate_args, from_args, judge_floor, judge_switch
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
from smoke_tests._result import Fail, Report, Skip, SmokeTest, block_seconds, fmt, fmt_bytes, no_gpu, nvidia_smi, run_test, test_parser
from smoke_tests.nccl import link_between, parse_size, parse_topo, physical_gpu_indices

TEST = "gpu_health"
NO_GPU_WHAT = "the GPU health test measures GPUs (it has no CPU variant)"
GEMM_SIZES = (4096, 8192, 16384)
GEMM_KINDS = ("bf16", "fp8")
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


#: The gates, from the healthy figures in BENCHMARKS.md with a margin of about 30% under the
#: lowest: H200 x2 (2026-11-30, natively, torch 2.11) and H100 x1 (2026-12-05, in the sglang
#: image). A GPU at half clocks, or shared with a second busy process, lands near half its
#: healthy share: under every compute and memory gate.
GATES = (
    Gate(
        "bf16_gemm_share",
        "share",
        0.5,
        "every bf16 GEMM's TFLOP/s as a share of the GPU's dense bf16 peak",
        basis="healthy 0.69-0.82: H200 771/737/704 and 736/699/687 TFLOP/s at n=4096/8192/16384, H100 739/701/720, "
        "of 989.5; 0.5 is 28% under the lowest, half clocks give about 0.37",
    ),
    Gate(
        "fp8_gemm_share",
        "share",
        0.45,
        "every fp8 GEMM's TFLOP/s as a share of the GPU's dense fp8 peak (GPUs with FP8 tensor cores)",
        basis="healthy 0.63-0.74: H200 1357/1462/1322 and 1238/1427/1255 TFLOP/s of 1979; 0.45 is 28% under the lowest",
    ),
    Gate(
        "hbm_share",
        "share",
        0.6,
        "the device-to-device copy's GB/s (read + write) as a share of the memory peak",
        basis="healthy 0.85-0.90: H200 4211/4081/4100 GB/s of 4800, H100 about 3000 of 3350; 0.6 is 29% under the lowest",
    ),
    Gate(
        "pcie_link",
        "switch",
        True,
        "each GPU's PCIe link, read while host copies run, at its maximum generation and width",
        basis="a healthy H200 pair ran at Gen5 x16 under load; a card trained at x8 or Gen4 in a Gen5 x16 slot fails",
    ),
    Gate(
        "host_copy_share",
        "share",
        0.6,
        "pinned host-to-device and device-to-host GB/s as a share of the PCIe link at its maximum",
        basis="healthy 0.87-0.88: H200 55.0/55.2 GB/s of 63.0 (Gen5 x16); 0.6 is 31% under, a link at half width gives 0.44",
    ),
    Gate(
        "nvlink_copy_share",
        "share",
        0.6,
        "each GPU-to-GPU copy over NVLink as a share of NVLink's bandwidth per direction",
        basis="healthy 0.85: H200 pair 384/383 GB/s of 450; 0.6 is 29% under, a copy through the host gives under 0.15",
    ),
)
SHARE_GATES = ("bf16_gemm_share", "fp8_gemm_share", "hbm_share", "host_copy_share", "nvlink_copy_share")


def judge(report: Report, gates: GateSettings, gpus: Sequence[Mapping[str, Any]], pairs: Sequence[Mapping[str, Any]]) -> None:
    """Every gate against the figures, one verdict each (the worst figure decides, every one
    under the floor is named), plus the correctness verdict of every GEMM and copy."""
    rows = [(gpu, row) for gpu in gpus for row in gpu.get("rows", [])]

    def shares(*whats: str) -> list[tuple[str, float]]:
        return [(f"GPU{gpu['index']} {row['what']} {row['size']}".replace(" GEMM n=", " n="), row["share"])
                for gpu, row in rows if row["what"] in whats and row.get("share") is not None]  # fmt: skip

    def why_not(*whats: str, what: str) -> str:
        ran = [(gpu, row) for gpu, row in rows if row["what"] in whats]
        if not ran:
            return f"no {what} ran"
        unknown = sorted({str(gpu["name"]) for gpu, _ in ran if gpu.get("peaks") is None})
        if unknown:
            return f"{', '.join(unknown)} not in gpu_peaks.toml: no peak to share"
        return f"no peak known for {what}"

    gemm_skipped = {kind: f"no {kind} GEMM ran" for kind in GEMM_KINDS}
    for gpu in gpus:
        if gpu.get("fp8_skipped"):
            gemm_skipped["fp8"] = str(gpu["fp8_skipped"])
    for kind in GEMM_KINDS:
        what = f"{kind} GEMM"
        reason = why_not(what, what=what) if any(r["what"] == what for _, r in rows) else gemm_skipped[kind]
        judge_floor(report, gates, f"{kind}_gemm_share", shares(what), not_judged=reason)
    judge_floor(report, gates, "hbm_share", shares("memory copy"), not_judged=why_not("memory copy", what="memory copy"))
    host = ("host to device", "device to host")
    ran_host = any(row["what"] in host for _, row in rows)
    judge_floor(report, gates, "host_copy_share", shares(*host), not_judged="the PCIe link's maximum is unknown" if ran_host else "no host copy ran")

    links = [(gpu["index"], gpu.get("pcie")) for gpu in gpus]
    below = [f"GPU{i} {link['now']}" for i, link in links if link and link.get("below_max")]
    unknown = [f"GPU{i}" for i, link in links if not link or not link.get("gen") or not link.get("width")]
    shown = sorted({link["now"] for _, link in links if link}) if links else []
    measured = ", ".join(below) if below else (", ".join(shown) or "unknown")
    if below:
        judge_switch(report, gates, "pcie_link", False, measured, "below its maximum under load (reseat the card, check the slot and the BIOS link settings)")
    elif unknown:
        judge_switch(report, gates, "pcie_link", None, measured, f"nvidia-smi did not report the link of {', '.join(unknown)}")
    elif links:
        judge_switch(report, gates, "pcie_link", True, measured)
    else:
        report.verdict("pcie_link", None, "-", "-", "no GPU measured", gate=True)

    nvlink = [(f"GPU{p['src']}->GPU{p['dst']}", p["share"]) for p in pairs if p.get("share") is not None]
    if not pairs:
        why = "one GPU: no pair to copy between"
    else:
        kinds = sorted({str(p["link"]) for p in pairs})
        why = f"no pair over NVLink with a known peak (links: {', '.join(kinds)})"
    judge_floor(report, gates, "nvlink_copy_share", nvlink, not_judged=why)

    gemms = [row for _, row in rows if row["what"].endswith("GEMM")]
    if gemms:
        worst = max(gemms, key=lambda r: r.get("error", 0.0))
        report.verdict(
            "GEMM products", all(r["correct"] for r in gemms), f"error {worst.get('error', 0.0):.2e} at most",
            f"<= {GEMM_TOLERANCE:g} of a float32 product", "" if all(r["correct"] for r in gemms) else "a product is wrong",
        )  # fmt: skip
    copies = [row for _, row in rows if not row["what"].endswith("GEMM")] + list(pairs)
    if copies:
        exact = all(c["correct"] for c in copies)
        report.verdict("copies", exact, f"{len(copies)} copies {'byte-exact' if exact else 'NOT exact'}", "every byte equal")


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


SMOKE = SmokeTest(TEST, timeout=300, key_figure=key_figure, gates=GATES)


# ---------------------------------------------------------------------------- measuring


def timed(torch: Any, device: Any, fn: Callable[[], Any], warmup: int, iters: int, repeats: int) -> float:
    """Median over ``repeats`` blocks of the mean seconds per call (CUDA events on a GPU)."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        samples.append(block_seconds(torch, device.type == "cuda", fn, iters))
    return float(statistics.median(samples))


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


def measure_device_copy(torch: Any, device: Any, nbytes: int, iters: int, repeats: int, copy: Callable[[Any, Any], Any] | None = None) -> dict[str, Any]:
    """``copy(dst, src)`` is the copy measured and checked (default ``dst.copy_(src)``)."""
    src = _random_bytes(torch, nbytes, device, 1)
    dst = torch.empty_like(src)
    do = copy or (lambda d, s: d.copy_(s))
    seconds = timed(torch, device, lambda: do(dst, src), warmup=3, iters=iters, repeats=repeats)
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

    kinds = [k for k in args.gemm if k != "fp8" or has_fp8(capability)]
    if "fp8" in args.gemm and not has_fp8(capability):
        gpu["fp8_skipped"] = f"GPU{index} ({name}) has no FP8 tensor cores (compute capability {capability[0]}.{capability[1]} < 8.9)"
    if not kinds:
        errors.append(f"GPU{index}: --gemm {','.join(args.gemm)} selects no GEMM this GPU can run ({gpu['fp8_skipped']})")
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
        gpu["pcie"] = None if link is None else {
            "now": link.describe(), "gen": link.gen, "width": link.width, "gen_max": link.gen_max, "width_max": link.width_max,
            "below_max": link.below_max(),
        }  # fmt: skip
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
            notes.append(f"GPU{index}'s PCIe link runs below its maximum while copying: {below} (reseat the card, check the slot and BIOS link settings)")

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


def gate_settings(args: argparse.Namespace) -> GateSettings:
    """The gates of this run: defaults, --no-gates, the old flags (--min-share sets every share
    gate, --require-full-links the link's), then each --gate."""
    aliases: dict[str, Value] = {}
    if args.min_share is not None:
        aliases.update(dict.fromkeys(SHARE_GATES, args.min_share))
    if args.require_full_links:
        aliases["pcie_link"] = True
    return from_args(args, GATES, aliases)


def body(args: argparse.Namespace, report: Report) -> None:
    if args.cpu:
        raise Skip("the GPU health test has no CPU variant: it measures GPUs")
    gates = gate_settings(args)
    report.figures["gates"] = gates.as_figures()
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
    judge(report, gates, gpus, pairs)
    if errors:
        raise Fail("; ".join(errors[:4]) + (f" (and {len(errors) - 4} more)" if len(errors) > 4 else ""))
    failed = report.failed_verdicts()
    if failed:
        raise Fail("under its gate: " + "; ".join(v.describe() for v in failed))


def _kinds(text: str) -> list[str]:
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in GEMM_KINDS]
    if not kinds or unknown:
        selects = ", ".join(unknown) if kinds else "nothing"
        raise argparse.ArgumentTypeError(f"--gemm takes {' and/or '.join(GEMM_KINDS)}, comma-separated: {text!r} selects {selects}")
    return list(dict.fromkeys(kinds))


def _sizes(text: str) -> list[int]:
    sizes = [int(t) for t in text.split(",") if t.strip()]
    if not sizes or any(n < 16 or n % 16 for n in sizes):
        raise argparse.ArgumentTypeError(f"GEMM sizes must be multiples of 16: {text}")
    return sizes


def build_parser() -> argparse.ArgumentParser:
    parser = test_parser(__doc__, timeout=SMOKE.timeout)
    parser.add_argument("--gemm", type=_kinds, default=list(GEMM_KINDS), help="bf16,fp8 (fp8 where the GPU has it)")
    parser.add_argument("--gemm-sizes", type=_sizes, default=list(GEMM_SIZES), metavar="N,N", help="square GEMM sizes (default 4096,8192,16384)")
    parser.add_argument("--copy-bytes", type=parse_size, default=parse_size("1G"), help="device copy size (default 1G)")
    parser.add_argument("--host-bytes", type=parse_size, default=parse_size("256M"), help="host copy size (default 256M)")
    parser.add_argument("--p2p-bytes", type=parse_size, default=parse_size("256M"), help="GPU-to-GPU copy size (default 256M)")
    parser.add_argument("--iters", type=int, default=10, help="calls per timed block (GEMM: more at small sizes)")
    parser.add_argument("--repeats", type=int, default=3, help="timed blocks; the median counts")
    parser.add_argument("--min-share", type=_share, metavar="FRACTION", help=f"set every share gate ({', '.join(SHARE_GATES)}) to this")
    parser.add_argument("--require-full-links", action="store_true", help="the pcie_link gate on (it is by default; kept for old command lines)")
    add_gate_args(parser, GATES)
    return parser


def _share(text: str) -> float:
    return GATES[0].parse_number_option(text, "--min-share", "a share between 0 and 1 (leave it out, or --no-gates, for none)")


def main(argv: Iterable[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    return run_test(TEST, lambda report: body(args, report), json_path=args.json, timeout=args.timeout)


if __name__ == "__main__":
    sys.exit(main())
