"""verl SFT smoke test: a few FSDP steps of verl's own trainer on a tiny model; the loss must fall.

    python -m smoke_tests.verl_sft [--json verl_sft.json] [--steps 4] [--nproc 1]

Writes a tiny random Qwen2 model, tokenizer and chat dataset (``smoke_tests.tiny_model``)
into a work folder, then runs::

    torchrun --standalone --nproc_per_node N -m verl.trainer.sft_trainer <hydra overrides>

(verl 0.9.x; keys from ``verl/trainer/config/sft_trainer_engine.yaml``). There is no
flash-attn in the kit's images, so attention is ``sdpa``
(``+model.override_config.attn_implementation=sdpa``). The trainer's console logger prints
``step:K - ... - train/loss:X``; the test passes when every step logged a finite loss
and the last is at least 2% (``--min-drop``) below the first: something was learned.
torchrun runs in its own process group, which is killed at ``--timeout`` or on Ctrl-C.
With ``--cpu`` the test is skipped (verl 0.9.1 registers its FSDP engine for CUDA and NPU
devices only); without a GPU too, unless GPUs were asked for (``--require-gpu``): then it
fails and says what to check.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from smoke_tests._result import CommandResult, Fail, Report, Skip, SmokeTest, fmt, no_gpu, run_command, run_test, test_parser, too_few_gpus, work_folder

TEST = "verl_sft"
_STEP_LOSS = re.compile(r"step:(\d+) - .*?train/loss:([-+0-9.eEinfa]+)")


def parse_losses(log: str) -> dict[int, float]:
    """{step: loss} from verl's console logger lines (the last line of a step wins)."""
    losses: dict[int, float] = {}
    for match in _STEP_LOSS.finditer(log):
        try:
            losses[int(match.group(1))] = float(match.group(2))
        except ValueError:
            losses[int(match.group(1))] = math.nan
    return dict(sorted(losses.items()))


_ERROR_LINE = re.compile(r"^\s*(?:[\w.]+\.)?\w*(?:Error|Exception)\b.*$", re.MULTILINE)


def failure_hint(log: str) -> str:
    """The worker's own exception line, not torchrun's ChildFailedError wrapper around it."""
    lines = [m.group(0).strip() for m in _ERROR_LINE.finditer(log) if "ChildFailedError" not in m.group(0)]
    if lines:
        return lines[-1][:400]
    tail = [line for line in log.strip().splitlines() if line.strip()][-1:]
    return tail[0][:400] if tail else "no output"


#: The trainers' environment: unbuffered, offline (the model and data are made here), no W&B.
TRAINER_ENV = {"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled"}


def run_trainer(cmd: Sequence[str], report: Report, workdir: Path, budget: float, **env: str) -> CommandResult:
    """verl's trainer (this test's SFT, verl_grpo's GRPO) as a child: the command shown and
    recorded, TRAINER_ENV (and `env`) over ours, its log beside its data, `budget` seconds."""
    report.figures["command"] = " ".join(cmd)
    print("+", " ".join(cmd), flush=True)
    return run_command(list(cmd), timeout=budget, env={**os.environ, **TRAINER_ENV, **env}, cwd=str(workdir), log_path=workdir / "trainer.log")


def trainer_failed(run: CommandResult, budget: float) -> None:
    """Fail for a trainer that ran past its budget or exited non-zero (with its own error line);
    called once what it logged is in the report."""
    if run.timed_out:
        raise Fail(f"the trainer ran past {budget:g} s and was killed")
    if run.returncode != 0:
        raise Fail(f"the trainer exited with {run.returncode}: {failure_hint(run.output)}")


#: The loss must fall by at least this share from the first step to the last. Measured on
#: H100 and H200: 5.650 -> 5.102 in 4 steps (-9.7%); a loss that stays put (5.6500 ->
#: 5.6499: nothing learned) fails.
MIN_DROP = 0.02


def judge_losses(losses: dict[int, float], steps: int, min_drop: float = MIN_DROP) -> str | None:
    """Why these losses fail the test, or None when they pass."""
    if not losses:
        return "the trainer logged no loss (no 'step:K - ... train/loss:X' line)"
    if len(losses) < steps:
        return f"the trainer logged {len(losses)} of {steps} steps"
    bad = [s for s, v in losses.items() if not math.isfinite(v)]
    if bad:
        return f"non-finite loss at step(s) {bad}"
    first, last = losses[min(losses)], losses[max(losses)]
    if not last <= first * (1 - min_drop):
        drop = (first - last) / first if first else 0.0
        return f"loss did not fall by {min_drop:.0%}: first {first:.4f}, last {last:.4f} ({drop:+.1%} drop)"
    return None


def key_figure(figures: Mapping[str, Any]) -> str:
    first, last = figures.get("loss_first"), figures.get("loss_last")
    if not isinstance(first, int | float) or not isinstance(last, int | float):
        return "-"
    return f"loss {first:.3f} -> {last:.3f} in {figures.get('steps')} steps"


SMOKE = SmokeTest(TEST, timeout=600, key_figure=key_figure)


def overrides(
    *,
    model: str,
    train_files: str,
    workdir: str,
    steps: int,
    nproc: int,
    rows: int,
    batch_size: int,
    micro_batch: int,
    max_length: int,
    device: str,
    extra: Sequence[str] = (),
) -> list[str]:
    """Hydra overrides for ``verl.trainer.sft_trainer`` (keys of verl 0.9.1's sft_trainer_engine.yaml)."""
    if batch_size % nproc:
        raise ValueError(f"--batch-size {batch_size} must divide by --nproc {nproc}")
    steps_per_epoch = rows // batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"--rows {rows} is smaller than one batch of {batch_size}")
    epochs = -(-steps // steps_per_epoch)
    return [
        f"data.train_files={train_files}",
        "data.val_files=null",
        f"data.train_batch_size={batch_size}",
        f"data.micro_batch_size_per_gpu={micro_batch}",
        f"data.max_length={max_length}",
        "data.num_workers=0",
        f"model.path={model}",
        # No flash-attn in the images: the default would be flash_attention_2.
        "+model.override_config.attn_implementation=sdpa",
        f"trainer.total_training_steps={steps}",
        f"trainer.total_epochs={epochs}",
        "trainer.logger=[console]",
        f"trainer.default_local_dir={workdir}/checkpoints",
        "trainer.resume_mode=disable",
        "trainer.project_name=smoke",
        "trainer.experiment_name=verl_sft",
        f"trainer.n_gpus_per_node={nproc}",
        f"trainer.device={device}",
        *extra,
    ]


def body_for(args: argparse.Namespace) -> Any:
    def body(report: Report) -> None:
        import importlib.util

        import torch

        if args.cpu:
            # verl 0.9.1 registers its FSDP engine for cuda and npu only, and its platform
            # detection falls back to NCCL: there is nothing to run on a CPU.
            raise Skip("--cpu given: verl 0.9.1's SFT trainer has no CPU device (FSDP engine is cuda/npu only)")
        if torch.cuda.is_available():
            if torch.cuda.device_count() < args.nproc:
                raise too_few_gpus("--nproc", args.nproc, torch.cuda.device_count())
            device = "cuda"
        else:
            raise no_gpu(args.require_gpu, "verl's FSDP SFT trainer needs one")
        if importlib.util.find_spec("verl") is None:
            raise Fail("verl is not installed in this environment")
        from importlib.metadata import version

        report.environment["verl"] = version("verl")
        report.environment["transformers"] = version("transformers")

        from smoke_tests import tiny_model

        with work_folder(args.workdir, "smoke-verl-sft-") as workdir:
            info = tiny_model.build(workdir, rows=args.rows, seed=args.seed)
            report.figures["tiny_model"] = {k: info[k] for k in ("vocab_size", "hidden_size", "layers", "rows")}
            if info["max_tokens"] > args.max_length:
                raise Fail(f"a sample has {info['max_tokens']} tokens, over --max-length {args.max_length}")
            cmd = [
                sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
                "-m", "verl.trainer.sft_trainer",
                *overrides(
                    model=info["model"], train_files=info["train_files"], workdir=str(workdir), steps=args.steps,
                    nproc=args.nproc, rows=args.rows, batch_size=args.batch_size, micro_batch=args.micro_batch,
                    max_length=args.max_length, device=device, extra=args.override,
                ),
            ]  # fmt: skip
            # The trainer gets what is left of our time, less a margin to kill it and report.
            budget = max(10.0, args.timeout - 30)
            run = run_trainer(cmd, report, workdir, budget)
            losses = parse_losses(run.output)
            report.figures.update(
                steps=len(losses),
                losses=list(losses.values()),
                loss_first=losses[min(losses)] if losses else None,
                loss_last=losses[max(losses)] if losses else None,
                trainer_seconds=run.seconds,
                returncode=run.returncode,
            )
            report.table(
                ["step", "loss"],
                [[str(s), fmt(v, 4)] for s, v in losses.items()],
            )
            trainer_failed(run, budget)
            verdict = judge_losses(losses, args.steps, args.min_drop)
            first, last = report.figures["loss_first"], report.figures["loss_last"]
            report.verdict(
                "loss", verdict is None, f"{fmt(first, 4)} -> {fmt(last, 4)} over {len(losses)} steps",
                f"finite every step, falling by >= {args.min_drop:.0%}", verdict or "",
            )  # fmt: skip
            if verdict:
                raise Fail(verdict)

    return body


def trainer_parser(doc: str | None, timeout: float, *, steps: int, nproc: str, rows: str, kept: str) -> argparse.ArgumentParser:
    """The options both verl tests take (this one's SFT, verl_grpo's GRPO): steps, GPUs, the
    tiny dataset's size, the seed, a kept work folder and extra hydra overrides."""
    parser = test_parser(doc, timeout=timeout)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--nproc", type=int, default=1, help=nproc)
    parser.add_argument("--rows", type=int, default=64, help=rows)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", help=f"keep {kept} here (default: a temp dir, removed)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE", help="extra hydra override (repeatable)")
    return parser


def main(argv: Iterable[str] | None = None) -> int:
    parser = trainer_parser(__doc__, SMOKE.timeout, steps=4, nproc="GPUs (FSDP ranks) to train on", rows="conversations in the tiny dataset",
                            kept="model, data, log and checkpoint")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=16, help="global batch size")
    parser.add_argument("--micro-batch", type=int, default=4, help="micro batch per GPU")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--min-drop", type=float, default=MIN_DROP, help=f"share the loss must fall, first step to last (default {MIN_DROP:g})")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.steps < 2:
        parser.error("--steps must be at least 2 to see the loss fall")
    return run_test(TEST, body_for(args), json_path=args.json, timeout=args.timeout)


if __name__ == "__main__":
    sys.exit(main())
