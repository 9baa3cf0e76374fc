"""The plainest loops that measure what smoke_tests/gpu_health.py measures, for a side-by-side
check that the harness costs nothing: torch.matmul / torch._scaled_mm in a loop between two
CUDA events, tensor.copy_ for device, host and GPU-to-GPU copies. No checks, no tables.

    python benchmarks/gpu/health_reference.py OUT.json [--sizes 4096,8192,16384]
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def events(fn, iters: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / iters


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--sizes", default="4096,8192,16384")
    args = parser.parse_args()
    result: dict = {"gpu": torch.cuda.get_device_name(0), "gemm": [], "copies": {}}
    for n in (int(s) for s in args.sizes.split(",")):
        a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
        iters = max(10, int(2e13 / (2 * n**3)))
        t = events(lambda: torch.matmul(a, b), iters)
        result["gemm"].append({"kind": "bf16", "n": n, "tflops": 2 * n**3 / t / 1e12})
        if torch.cuda.get_device_capability(0) >= (8, 9):
            a8, b8 = a.to(torch.float8_e4m3fn), b.to(torch.float8_e4m3fn)
            one = torch.ones((), device="cuda")
            t = events(lambda: torch._scaled_mm(a8, b8.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16), iters)
            result["gemm"].append({"kind": "fp8", "n": n, "tflops": 2 * n**3 / t / 1e12})
        del a, b
        print(result["gemm"][-2:], flush=True)
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    result["copies"]["device_gbps_read_write"] = 2 * (1 << 30) / events(lambda: dst.copy_(src), 20) / 1e9
    host = torch.empty(256 << 20, dtype=torch.uint8, pin_memory=True)
    dev = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    result["copies"]["h2d_gbps"] = (256 << 20) / events(lambda: dev.copy_(host, non_blocking=True), 20) / 1e9
    result["copies"]["d2h_gbps"] = (256 << 20) / events(lambda: host.copy_(dev, non_blocking=True), 20) / 1e9
    if torch.cuda.device_count() > 1:
        other = torch.empty(256 << 20, dtype=torch.uint8, device="cuda:1")
        for _ in range(3):
            other.copy_(dev, non_blocking=True)
        torch.cuda.synchronize(0)
        torch.cuda.synchronize(1)
        t0 = time.perf_counter()
        for _ in range(20):
            other.copy_(dev, non_blocking=True)
        torch.cuda.synchronize(0)
        torch.cuda.synchronize(1)
        result["copies"]["gpu0_to_gpu1_gbps"] = (256 << 20) * 20 / (time.perf_counter() - t0) / 1e9
    print(result["copies"], flush=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
