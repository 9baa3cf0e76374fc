"""OpenRLHF SFT smoke test: OpenRLHF's own trainer (``openrlhf.cli.train_sft``, DeepSpeed
ZeRO-2) takes a few steps on a tiny random Qwen2 and the loss falls.

    python -m smoke_tests.openrlhf_sft [--json openrlhf_sft.json] [--nproc 1] [--epochs 4]
    python -m smoke_tests.openrlhf_sft --cpu   # imports and the trainer's flags only; skipped

The model and its chats are written here (``smoke_tests.tiny_model``: sums of two numbers,
a ChatML template), nothing is downloaded. The trainer runs under torchrun, one process per
GPU, with ``--data.apply_chat_template`` over the ``messages`` column and TensorBoard
logging, from which every optimizer step's ``train/loss_mean`` is read: each must be
finite and the last must be at least ``--min-drop`` below the first.

Attention: the kit's openrlhf image has flash-attn's Python package but not its CUDA
kernels (building them takes hours; envs/openrlhf/README.md). OpenRLHF imports
``flash_attn.bert_padding`` at module level, so the image sets
``FLASH_ATTENTION_TRITON_AMD_ENABLE=TRUE`` (flash-attn then imports its Triton backend
instead of the missing extension), and the trainer runs with
``--ds.attn_implementation sdpa`` (PyTorch's fused attention) and without sample packing,
which needs flash-attn's varlen kernels. The test passes exactly these flags.

Without a GPU the test checks what it can: OpenRLHF's modules import and every flag it
passes is one ``train_sft --help`` lists; then it reports skipped.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from smoke_tests import tiny_model
from smoke_tests._result import Fail, Report, SmokeTest, gpu_unavailable, run_command, run_main, test_parser, too_few_gpus

TEST = "openrlhf_sft"


def trainer_args(model: str, data: str, out: Path, args: argparse.Namespace) -> list[str]:
    """The flags of ``openrlhf.cli.train_sft`` the test passes (OpenRLHF 0.11's dotted names)."""
    return [
        "--model.model_name_or_path", model,
        "--data.dataset", data,
        "--data.input_key", "messages",
        "--data.apply_chat_template",
        "--data.max_len", "128",
        "--data.max_samples", str(args.rows),
        "--train.batch_size", str(args.batch_size),
        "--train.micro_batch_size", str(args.micro_batch_size),
        "--train.max_epochs", str(args.epochs),
        "--train.seed", "0",
        "--adam.lr", str(args.lr),
        "--lr_warmup_ratio", "0",
        "--ds.zero_stage", "2",
        "--ds.param_dtype", "bf16",
        "--ds.attn_implementation", "sdpa",
        "--logger.logging_steps", "1",
        "--logger.tensorboard_dir", str(out / "tb"),
        "--ckpt.output_dir", str(out / "model"),
        "--ckpt.path", str(out / "ckpt"),
    ]  # fmt: skip


def flags_of(words: Sequence[str]) -> list[str]:
    return [w for w in words if w.startswith("--")]


def missing_flags(help_text: str, flags: Iterable[str]) -> list[str]:
    """Flags the trainer's --help does not list (a renamed option fails here, on CPU)."""
    listed = set(re.findall(r"--[\w.\-]+", help_text))
    return [f for f in flags if f not in listed]


def judge_losses(losses: Sequence[float], min_drop: float) -> str | None:
    """Why the run did not train (None when it did): too few steps, a non-finite loss, or
    a last loss not ``min_drop`` below the first."""
    if len(losses) < 2:
        return f"the trainer logged {len(losses)} optimizer step(s); at least 2 are needed to see the loss move"
    bad = [i for i, x in enumerate(losses) if not math.isfinite(x)]
    if bad:
        return f"loss not finite at step {bad[0] + 1}: {losses[bad[0]]}"
    drop = (losses[0] - losses[-1]) / losses[0]
    if drop < min_drop:
        return f"loss fell {drop:.1%} ({losses[0]:.3f} -> {losses[-1]:.3f}); at least {min_drop:.0%} expected"
    return None


def read_losses(tb_dir: Path, tag: str = "train/loss_mean") -> list[float]:
    """Every step's value of ``tag`` from the TensorBoard event files, by step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values: dict[int, float] = {}
    for events in sorted(tb_dir.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events.parent), size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags().get("scalars", []):
            values.update({e.step: float(e.value) for e in acc.Scalars(tag)})
    return [values[k] for k in sorted(values)]


def key_figure(figures: Mapping[str, Any]) -> str:
    losses = figures.get("losses") or []
    if len(losses) >= 2:
        return f"loss {losses[0]:.3f} -> {losses[-1]:.3f} over {len(losses)} steps"
    if figures.get("flags_checked"):
        return f"imports and {figures['flags_checked']} trainer flags checked"
    return "-"


SMOKE = SmokeTest(TEST, timeout=900, key_figure=key_figure)


def body_for(args: argparse.Namespace) -> Any:
    def body(report: Report) -> None:
        import importlib

        import torch

        for module in ("openrlhf.models", "openrlhf.trainer.sft_trainer", "openrlhf.datasets", "deepspeed"):
            try:
                importlib.import_module(module)
            except Exception as exc:  # an ImportError from flash_attn's missing kernels, say
                raise Fail(f"cannot import {module}: {type(exc).__name__}: {exc}") from None
        report.figures["flash_attn_backend"] = "triton" if os.environ.get("FLASH_ATTENTION_TRITON_AMD_ENABLE") == "TRUE" else "cuda"

        work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="smoke-openrlhf-"))
        try:
            info = tiny_model.build(work, rows=args.rows, seed=args.seed)
            cmd_args = trainer_args(info["model"], info["train_files"], work / "run", args)
            helped = run_command([sys.executable, "-m", "openrlhf.cli.train_sft", "--help"], timeout=120, echo=False)
            if helped.returncode != 0:
                raise Fail(f"openrlhf.cli.train_sft --help exited {helped.returncode}: {helped.output.strip().splitlines()[-1:]}")
            missing = missing_flags(helped.output, flags_of(cmd_args))
            if missing:
                raise Fail(f"openrlhf.cli.train_sft does not take {', '.join(missing)}")
            report.figures["flags_checked"] = len(flags_of(cmd_args))

            gpus = torch.cuda.device_count() if torch.cuda.is_available() and not args.cpu else 0
            if gpus == 0:
                what = "OpenRLHF's DeepSpeed trainer needs a GPU (its modules import and its flags check out)"
                raise gpu_unavailable(args, what)
            if gpus < args.nproc:
                raise too_few_gpus("--nproc", args.nproc, gpus)
            report.figures["gpu"] = torch.cuda.get_device_name(0)
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.nproc),
                   "-m", "openrlhf.cli.train_sft", *cmd_args]  # fmt: skip
            report.figures["command"] = " ".join(cmd)
            run = run_command(cmd, timeout=args.timeout * 0.85, cwd=str(work), log_path=work / "train.log")
            report.figures["train_seconds"] = round(run.seconds, 1)
            if run.timed_out or run.returncode != 0:
                tail = [line for line in run.output.splitlines() if line.strip()][-3:]
                raise Fail(f"the trainer {'ran past its time' if run.timed_out else f'exited {run.returncode}'}: {' | '.join(tail)[:400]}")
            losses = read_losses(work / "run" / "tb")
            report.figures["losses"] = losses
            report.table(["step", "loss"], [[str(i + 1), f"{x:.4f}"] for i, x in enumerate(losses)])
            verdict = judge_losses(losses, args.min_drop)
            report.verdict("loss", verdict is None, f"{len(losses)} steps", f"finite, falling by >= {args.min_drop:.0%}", verdict or "")
            if verdict:
                raise Fail(verdict)
            saved = work / "run" / "model"
            report.check("saved model", any(saved.glob("*.safetensors")), str(saved), "*.safetensors", f"the trainer saved no model in {saved}")
        finally:
            if not args.workdir:
                shutil.rmtree(work, ignore_errors=True)

    return body


def main(argv: Iterable[str] | None = None) -> int:
    parser = test_parser(__doc__, timeout=SMOKE.timeout)
    parser.add_argument("--nproc", type=int, default=1, help="trainer processes (one GPU each)")
    parser.add_argument("--rows", type=int, default=64, help="chats in the training set")
    parser.add_argument("--batch-size", type=int, default=16, help="global batch (one optimizer step)")
    parser.add_argument("--micro-batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--min-drop", type=float, default=0.02, help="the loss must fall this share from first to last step")
    parser.add_argument("--workdir", default="", help="keep the model, data and logs here")
    parser.add_argument("--seed", type=int, default=0)
    return run_main(TEST, parser, argv, body_for, offline=True)


if __name__ == "__main__":
    sys.exit(main())
