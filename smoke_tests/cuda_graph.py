"""CUDA graph smoke test: capture a small transformer's forward, replay it, compare with eager.

    python -m smoke_tests.cuda_graph [--json cuda_graph.json] [--min-speedup 1.0]
    python -m smoke_tests.cuda_graph --cpu   # eager path only; reported as skipped

The model is deliberately small (a few pre-norm transformer blocks on a few hundred
tokens), so eager mode is bound by kernel launches and a graph replay should be clearly
faster. Correctness: for several fresh random inputs copied into the static input, the
replayed output (poisoned with NaN before each replay, so stale values cannot pass) must
match eager mode on the same input — bitwise equality is reported, and the check passes
within ``--rtol``/``--atol`` (default 1e-6). Times are medians of CUDA-event timed blocks.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from smoke_tests._result import Fail, Report, SmokeTest, block_seconds, fmt, gpu_unavailable, run_test, test_parser

TEST = "cuda_graph"


def key_figure(figures: Mapping[str, Any]) -> str:
    """The replay's speed-up and equality; on the CPU, whether eager mode repeated itself."""
    if isinstance(figures.get("speedup"), int | float):
        equal = "bitwise equal" if figures.get("bitwise_equal") else f"max diff {figures.get('max_abs_diff', 0):.2g}"
        return f"replay {figures['speedup']:.2f}x faster, {equal}"
    if "cpu_eager_repeatable" in figures:
        return f"eager on CPU {'repeatable' if figures['cpu_eager_repeatable'] else 'NOT repeatable'}"
    return "-"


SMOKE = SmokeTest(TEST, timeout=120, key_figure=key_figure)


def speedup(eager_seconds: float, graph_seconds: float) -> float:
    if eager_seconds <= 0 or graph_seconds <= 0:
        raise ValueError("times must be positive")
    return eager_seconds / graph_seconds


def build_model(torch: Any, hidden: int, layers: int, heads: int) -> Any:
    nn = torch.nn

    class Block(nn.Module):  # type: ignore[misc,name-defined]  # torch is Any to mypy: the kit's environment has none
        def __init__(self) -> None:
            super().__init__()
            self.norm1 = nn.LayerNorm(hidden)
            self.qkv = nn.Linear(hidden, 3 * hidden)
            self.proj = nn.Linear(hidden, hidden)
            self.norm2 = nn.LayerNorm(hidden)
            self.up = nn.Linear(hidden, 4 * hidden)
            self.down = nn.Linear(4 * hidden, hidden)

        def forward(self, x: Any) -> Any:
            b, t, _ = x.shape
            q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, heads, hidden // heads).permute(2, 0, 3, 1, 4)
            a = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.proj(a.transpose(1, 2).reshape(b, t, hidden))
            return x + self.down(nn.functional.gelu(self.up(self.norm2(x))))

    class Tiny(nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList(Block() for _ in range(layers))
            self.norm = nn.LayerNorm(hidden)

        def forward(self, x: Any) -> Any:
            for block in self.blocks:
                x = block(x)
            return self.norm(x)

    return Tiny()


def compare_outputs(torch: Any, got: Any, want: Any, rtol: float, atol: float) -> dict[str, Any]:
    """How far the replayed output is from eager mode's; ``ok`` when within tolerance and all written."""
    unwritten = int(torch.isnan(got).sum().item())
    diff = (got.double() - want.double()).abs()
    max_abs = float(diff.max().item())
    close = bool(torch.allclose(got, want, rtol=rtol, atol=atol)) and unwritten == 0
    return {"bitwise_equal": bool(torch.equal(got, want)), "max_abs_diff": max_abs, "ok": close, "nan": unwritten}


def _median_block_seconds(torch: Any, fn: Any, iters: int, repeats: int) -> float:
    blocks = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        blocks.append(block_seconds(torch, True, fn, iters))
    return float(statistics.median(blocks))


def body_for(args: argparse.Namespace) -> Any:
    def body(report: Report) -> None:
        import torch

        torch.manual_seed(args.seed)
        shape = (args.batch, args.seq, args.hidden)
        report.figures.update(
            batch=args.batch, seq=args.seq, hidden=args.hidden, layers=args.layers, heads=args.heads,
            dtype="fp32", iters=args.iters, repeats=args.repeats,
        )  # fmt: skip
        use_gpu = not args.cpu and torch.cuda.is_available()
        device = torch.device("cuda") if use_gpu else torch.device("cpu")
        # Full fp32 matrix products in both modes: the comparison is about the graph, not TF32.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        model = build_model(torch, args.hidden, args.layers, args.heads).to(device).eval()
        n_params = sum(p.numel() for p in model.parameters())
        report.figures["parameters"] = n_params

        with torch.no_grad():
            if not use_gpu:
                # Exercise the eager path, so the logic is tested where there is no GPU.
                x = torch.randn(shape)
                y1, y2 = model(x), model(x)
                check = compare_outputs(torch, y1, y2, args.rtol, args.atol)
                report.figures["cpu_eager_repeatable"] = check["bitwise_equal"]
                report.table(["mode", "output", "finite", "repeatable"],
                             [["eager (cpu)", "x".join(map(str, y1.shape)), str(bool(torch.isfinite(y1).all())),
                               str(check["bitwise_equal"])]])  # fmt: skip
                if not check["ok"]:
                    raise Fail(f"eager forward on the CPU is not repeatable: max diff {check['max_abs_diff']:.3g}")
                what = "CUDA graphs need a GPU (the eager path ran on the CPU and was repeatable)"
                raise gpu_unavailable(args, what)

            report.figures["gpu"] = torch.cuda.get_device_name(device)
            static_x = torch.randn(shape, device=device)
            # Warm up on a side stream before capture, as the CUDA graph docs ask (lazy init, workspaces).
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    model(static_x)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_y = model(static_x)
            torch.cuda.synchronize()

            checks = []
            for _ in range(args.checks):
                fresh = torch.randn(shape, device=device)
                static_x.copy_(fresh)
                static_y.fill_(float("nan"))
                graph.replay()
                want = model(fresh)
                torch.cuda.synchronize()
                checks.append(compare_outputs(torch, static_y, want, args.rtol, args.atol))
            report.figures["checks"] = len(checks)
            report.figures["bitwise_equal"] = all(c["bitwise_equal"] for c in checks)
            report.figures["max_abs_diff"] = max(c["max_abs_diff"] for c in checks)

            for _ in range(args.warmup):
                model(static_x)
                graph.replay()
            eager = _median_block_seconds(torch, lambda: model(static_x), args.iters, args.repeats)
            replay = _median_block_seconds(torch, graph.replay, args.iters, args.repeats)
            gain = speedup(eager, replay)
            report.figures.update(eager_us=eager * 1e6, graph_us=replay * 1e6, speedup=gain)

        report.table(
            ["mode", "us / forward", "speed-up", "matches eager"],
            [
                ["eager", fmt(eager * 1e6, 1), "1.00", "-"],
                ["graph replay", fmt(replay * 1e6, 1), fmt(gain), "bitwise" if report.figures["bitwise_equal"]
                 else f"max diff {report.figures['max_abs_diff']:.2g}"],
            ],
        )  # fmt: skip
        bad = [c for c in checks if not c["ok"]]
        report.verdict(
            "replay matches eager", not bad, f"{len(checks) - len(bad)}/{len(checks)} inputs, max diff {report.figures['max_abs_diff']:.2g}",
            f"within rtol {args.rtol:g}, atol {args.atol:g}",
        )  # fmt: skip
        if bad:
            raise Fail(
                f"graph replay differs from eager in {len(bad)}/{len(checks)} inputs "
                f"(max abs diff {report.figures['max_abs_diff']:.3g}, unwritten {max(c['nan'] for c in bad)})"
            )
        if args.min_speedup and gain < args.min_speedup:
            raise Fail(f"replay speed-up {gain:.2f}x is under --min-speedup {args.min_speedup:g}")

    return body


def main(argv: Iterable[str] | None = None) -> int:
    parser = test_parser(__doc__, timeout=SMOKE.timeout)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--checks", type=int, default=5, help="fresh inputs compared with eager mode")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rtol", type=float, default=1e-6)
    parser.add_argument("--atol", type=float, default=1e-6)
    parser.add_argument("--min-speedup", type=float, default=1.0, help="fail when replay is not this much faster")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.hidden % args.heads:
        parser.error("--hidden must be a multiple of --heads")
    return run_test(TEST, body_for(args), json_path=args.json, timeout=args.timeout)


if __name__ == "__main__":
    sys.exit(main())
