"""verl GRPO smoke test: a few GRPO steps of verl's PPO trainer with SGLang rollout on a tiny
model; every step must log finite rewards and a finite policy loss.

    python -m smoke_tests.verl_grpo [--json verl_grpo.json] [--steps 2] [--nproc 1]
    python -m smoke_tests.verl_grpo --cpu    # model, prompts and verl's config checked; skipped

Writes a tiny random Qwen2 (``smoke_tests.tiny_model``, ``serve`` preset: head_dim 64 for
SGLang's kernels) with its tokenizer, chat template and a parquet of sum prompts in verl's
RL layout, then runs::

    python -m verl.trainer.main_ppo <hydra overrides>

(verl 0.9.1: keys from ``verl/trainer/config/ppo_trainer.yaml`` and the files it composes;
``algorithm.adv_estimator=grpo``, ``actor_rollout_ref.rollout.name=sglang``, the console
logger). Before anything starts, the overrides are composed with Hydra against verl's own
config folder and checked with verl's ``validate_config``, as ``main_ppo`` does: a key that
does not exist or a batch size that does not divide fails here, in seconds, also on a CPU.

The console logger prints ``step:K - critic/rewards/mean:X - actor/pg_loss:Y - ...``; the test
passes when steps 1..K all logged finite rewards, policy loss, gradient norm, advantages
and response lengths, and the policy was really trained: responses are not empty, some
group's samples got different rewards (advantages not all equal) and some step had a
non-zero gradient or loss (``judge_metrics``). The reward (``smoke_tests/_grpo_reward.py``)
is graded, so a group's samples differ and GRPO's advantages are not all zero. The trainer runs in its own process group, and the Ray
daemons ``ray.init`` starts (raylet, GCS, workers; they leave that group) are found by the
private Ray folder named on their command lines and stopped too: at the end, at
``--timeout``, on Ctrl-C and on SIGTERM.

Verified on an H200 with verl 0.9.1 and SGLang 0.5.12 (BENCHMARKS.md). Without a GPU the
test is skipped after the CPU checks, unless GPUs were asked for (``--require-gpu``).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import signal
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from smoke_tests import _startup as startup
from smoke_tests._result import (
    Fail,
    Report,
    SmokeTest,
    add_cleanup,
    fmt,
    gpu_unavailable,
    remove_cleanup,
    run_test,
    too_few_gpus,
    work_folder,
)
from smoke_tests.verl_sft import run_trainer, trainer_failed, trainer_parser

TEST = "verl_grpo"
REWARD_FILE = Path(__file__).resolve().with_name("_grpo_reward.py")
REWARD_KEY = "critic/rewards/mean"
SCORE_KEY = "critic/score/mean"
LOSS_KEY = "actor/pg_loss"
GRAD_KEY = "actor/grad_norm"
RESPONSE_KEY = "response_length/mean"
ADV_MAX, ADV_MIN = "critic/advantages/max", "critic/advantages/min"
#: Logged per step into the result, when verl logged them.
KEPT_KEYS = (
    REWARD_KEY, SCORE_KEY, LOSS_KEY, GRAD_KEY, "actor/entropy", "actor/pg_clipfrac",
    "critic/rewards/max", "critic/rewards/min", ADV_MAX, ADV_MIN,
    RESPONSE_KEY, "timing_s/gen", "timing_s/step",
)  # fmt: skip

#: The console logger's line start; not "global_step:1 - " or "timing_s/step:..." inside it.
_STEP_LINE = re.compile(r"(?:^|[^\w/])step:(\d+) - (.*)$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


# ---------------------------------------------------------------------------- pure logic


def parse_metrics(log: str) -> dict[int, dict[str, float]]:
    """{step: {metric: value}} from verl's console logger lines (``concat_dict_to_str``:
    ``step:K - name:value - ...``, numbers only), also behind Ray's ``(TaskRunner pid=..)``
    prefix. A later line of the same step adds to it."""
    steps: dict[int, dict[str, float]] = {}
    for line in log.splitlines():
        match = _STEP_LINE.search(_ANSI.sub("", line))
        if not match:
            continue
        metrics = steps.setdefault(int(match.group(1)), {})
        for item in match.group(2).split(" - "):
            name, sep, value = item.rpartition(":")
            if not sep or not name:
                continue
            text = value.strip()
            if text in ("True", "False"):
                metrics[name.strip()] = 1.0 if text == "True" else 0.0
                continue
            try:
                metrics[name.strip()] = float(text)
            except ValueError:
                continue
    return dict(sorted(steps.items()))


def judge_metrics(steps: Mapping[int, Mapping[str, float]], want: int) -> str | None:
    """Why the logged metrics fail the test, or None.

    Finite numbers are not enough: a run that generated nothing, or whose rewards were the
    same for every sample of a group (GRPO's advantages are then all zero), logs finite
    zeros and learns nothing. So the test also wants evidence of an update: non-empty
    responses at every step, a group whose samples were scored differently (advantages
    not all equal) and a policy gradient that was not zero, in some step."""
    if not steps:
        return "the trainer logged no step (no 'step:K - ...' line from the console logger)"
    missing = [s for s in range(1, want + 1) if s not in steps]
    if missing:
        return f"the trainer logged {len([s for s in steps if 1 <= s <= want])} of {want} steps (missing {missing})"
    wanted = range(1, want + 1)
    for key in (REWARD_KEY, LOSS_KEY, GRAD_KEY, RESPONSE_KEY, ADV_MAX, ADV_MIN):
        absent = [s for s in wanted if key not in steps[s]]
        if absent:
            return f"no {key} logged at step(s) {absent}"
        bad = [s for s in wanted if not math.isfinite(steps[s][key])]
        if bad:
            return f"non-finite {key} at step(s) {bad}"
    empty = [s for s in wanted if steps[s][RESPONSE_KEY] <= 0]
    if empty:
        return f"the rollout generated empty responses at step(s) {empty} ({RESPONSE_KEY} 0)"
    if all(steps[s][ADV_MAX] == steps[s][ADV_MIN] for s in wanted):
        return f"every sample of every group got the same reward (GRPO advantages all {steps[1][ADV_MAX]:g}): nothing to learn from"
    if all(steps[s][GRAD_KEY] == 0 and steps[s][LOSS_KEY] == 0 for s in wanted):
        return f"no update: {GRAD_KEY} and {LOSS_KEY} were 0 at every step"
    return None


def overrides(
    *,
    model: str,
    train_files: str,
    workdir: str,
    steps: int,
    nproc: int,
    batch_size: int,
    rollout_n: int,
    micro_batch: int,
    max_prompt_length: int,
    max_response_length: int,
    gpu_memory_utilization: float = 0.3,
    lr: float = 1e-4,
    ray_dir: str = "",
    extra: Sequence[str] = (),
) -> list[str]:
    """Hydra overrides for ``verl.trainer.main_ppo`` (verl 0.9.1's ppo_trainer.yaml)."""
    if batch_size * rollout_n % nproc:
        raise ValueError(f"--batch-size {batch_size} x --rollout-n {rollout_n} must divide by --nproc {nproc}")
    if rollout_n < 2:
        raise ValueError("GRPO compares samples of one prompt: --rollout-n must be at least 2")
    items = [
        "algorithm.adv_estimator=grpo",
        "algorithm.use_kl_in_reward=False",
        f"data.train_files={train_files}",
        f"data.val_files={train_files}",
        f"data.train_batch_size={batch_size}",
        f"data.max_prompt_length={max_prompt_length}",
        f"data.max_response_length={max_response_length}",
        "data.dataloader_num_workers=0",
        f"actor_rollout_ref.model.path={model}",
        # No flash-attn in the images: the default would be flash_attention_2.
        "+actor_rollout_ref.model.override_config.attn_implementation=sdpa",
        f"actor_rollout_ref.actor.optim.lr={lr}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={batch_size}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={micro_batch}",
        # No reference model (no KL term): fewer workers, a shorter start.
        "actor_rollout_ref.actor.use_kl_loss=False",
        # torch.compile would add minutes of compilation to a run of seconds.
        "actor_rollout_ref.actor.use_torch_compile=False",
        "actor_rollout_ref.rollout.name=sglang",
        f"actor_rollout_ref.rollout.n={rollout_n}",
        "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
        f"actor_rollout_ref.rollout.gpu_memory_utilization={gpu_memory_utilization}",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={micro_batch}",
        # No CUDA-graph capture in SGLang: start-up stays short and bounded.
        "actor_rollout_ref.rollout.enforce_eager=True",
        "actor_rollout_ref.rollout.agent.num_workers=1",
        "reward.num_workers=1",
        f"reward.custom_reward_function.path={REWARD_FILE}",
        "reward.custom_reward_function.name=compute_score",
        "trainer.logger=[console]",
        "trainer.nnodes=1",
        f"trainer.n_gpus_per_node={nproc}",
        f"trainer.total_training_steps={steps}",
        "trainer.total_epochs=100",  # the step count ends the run first
        "trainer.val_before_train=False",
        "trainer.test_freq=-1",
        "trainer.save_freq=-1",
        "trainer.resume_mode=disable",
        f"trainer.default_local_dir={workdir}/checkpoints",
        "trainer.project_name=smoke",
        "trainer.experiment_name=verl_grpo",
        "trainer.device=cuda",
    ]
    if ray_dir:
        # ray.init(_temp_dir=...): the daemons name this folder on their command lines, so
        # they can be found and stopped afterwards (they leave the trainer's process group).
        items.append(f"+ray_kwargs.ray_init._temp_dir={ray_dir}")
    return [*items, *extra]


def key_figure(figures: Mapping[str, Any]) -> str:
    """Reward first -> last, policy loss and gradient norm; on the CPU, the composed config."""
    steps = figures.get("metrics") or {}
    if not steps:
        config = figures.get("config") or {}
        if config:
            return f"config ok: {config.get('adv_estimator')}, {config.get('rollout')} rollout, n={config.get('rollout_n')}"
        return "-"
    first, last = steps[min(steps, key=int)], steps[max(steps, key=int)]
    reward = f"reward {fmt(first.get(REWARD_KEY), 3)} -> {fmt(last.get(REWARD_KEY), 3)}"
    return f"{reward}, pg_loss {fmt(last.get(LOSS_KEY), 4)}, grad norm {fmt(last.get(GRAD_KEY), 3)}, {len(steps)} steps"


SMOKE = SmokeTest(TEST, timeout=1200, key_figure=key_figure)


# ---------------------------------------------------------------------------- Ray's processes, outside the group


def _ancestors(proc_root: str = "/proc") -> set[int]:
    """Our own PID and our parents': never ours to kill, whatever their command line says."""
    found, pid = set(), os.getpid()
    while pid > 1 and pid not in found:
        found.add(pid)
        try:
            with open(f"{proc_root}/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return found


def processes_using(marker: str, proc_root: str = "/proc") -> list[int]:
    """PIDs (not ours, nor our parents') that name ``marker`` on their command line or hold
    a file under it open. Ray's daemons name the temp folder in their arguments; its
    workers rename themselves (``ray::IDLE``) and leave the trainer's process group, but
    keep their log files in that folder open."""
    skip = _ancestors(proc_root)
    found = []
    for entry in os.listdir(proc_root):
        if not entry.isdigit() or int(entry) in skip:
            continue
        base = f"{proc_root}/{entry}"
        try:
            with open(f"{base}/cmdline", "rb") as f:
                hit = marker in f.read().replace(b"\0", b" ").decode(errors="replace")
            if not hit:
                for fd in os.listdir(f"{base}/fd"):
                    try:
                        if os.readlink(f"{base}/fd/{fd}").startswith(marker):
                            hit = True
                            break
                    except OSError:
                        continue
        except OSError:  # gone, or not ours to read
            continue
        if hit:
            found.append(int(entry))
    return found


def kill_processes_using(marker: str, grace: float = 5.0) -> list[int]:
    """SIGTERM, then SIGKILL, every process ``processes_using`` finds (looking again before
    each signal: a dying raylet may leave new orphans); returns the PIDs signalled."""
    signalled: list[int] = []
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        pids = processes_using(marker)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                continue
            if pid not in signalled:
                signalled.append(pid)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and processes_using(marker):
            time.sleep(0.1)
    return signalled


# ---------------------------------------------------------------------------- verl's config, on the CPU


def compose_and_validate(items: Sequence[str]) -> dict[str, Any]:
    """Compose ``ppo_trainer`` with these overrides against the installed verl's config
    folder (what ``@hydra.main`` in main_ppo does) and run verl's own ``validate_config``.
    Returns the values the test relies on, read back from the composed config."""
    import warnings

    import verl.trainer
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    config_dir = Path(verl.trainer.__file__).resolve().parent / "config"
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base=None):
            config = compose(config_name="ppo_trainer", overrides=list(items))
    except Exception as exc:  # hydra's errors name the override
        raise Fail(f"verl's config rejects the overrides: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # need_critic warns that GRPO has no critic: intended
        use_critic = need_critic(config)
        try:
            validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=use_critic)
        except (AssertionError, ValueError) as exc:
            raise Fail(f"verl's validate_config rejects the settings: {exc}") from None
    rollout = config.actor_rollout_ref.rollout
    return {
        "adv_estimator": str(config.algorithm.adv_estimator),
        "rollout": str(rollout.name),
        "rollout_n": int(rollout.n),
        "critic": use_critic,
        "reference": bool(need_reference_policy(config)),
        "attn_implementation": str(config.actor_rollout_ref.model.override_config.attn_implementation),
        "reward_function": str(config.reward.custom_reward_function.path),
        "logger": list(config.trainer.logger),
        "total_training_steps": int(config.trainer.total_training_steps),
    }


# ---------------------------------------------------------------------------- the test


def gpu_count() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def body_for(args: argparse.Namespace) -> Any:
    def body(report: Report) -> None:
        import importlib.util
        from importlib.metadata import version

        for package in ("verl", "sglang"):
            if importlib.util.find_spec(package) is None:
                raise Fail(f"{package} is not installed in this environment (verl's SGLang rollout needs both)")
            report.environment[package] = version(package)
        from smoke_tests import tiny_model

        with work_folder(args.workdir, "smoke-grpo-") as workdir:
            ray_dir = workdir / "ray"
            cleanup = add_cleanup(lambda: kill_processes_using(str(ray_dir)))
            try:
                info = tiny_model.build(workdir, rows=args.rows, seed=args.seed, cfg=tiny_model.SERVE_CONFIG, rl_rows=args.rows)
                shown = ("vocab_size", "hidden_size", "layers", "heads", "context", "dtype", "rl_rows", "max_prompt_tokens")
                report.figures["tiny_model"] = {k: info[k] for k in shown}
                if info["max_prompt_tokens"] > args.max_prompt_length:
                    raise Fail(f"a prompt has {info['max_prompt_tokens']} tokens, over --max-prompt-length {args.max_prompt_length}")
                items = overrides(
                    model=info["model"], train_files=info["rl_files"], workdir=str(workdir), steps=args.steps,
                    nproc=args.nproc, batch_size=args.batch_size, rollout_n=args.rollout_n, micro_batch=args.micro_batch,
                    max_prompt_length=args.max_prompt_length, max_response_length=args.max_response_length,
                    gpu_memory_utilization=args.gpu_memory_utilization, ray_dir=str(ray_dir), extra=args.override,
                )  # fmt: skip
                report.figures["config"] = compose_and_validate(items)
                gpus = gpu_count()
                if args.cpu or gpus == 0:
                    what = "GRPO with SGLang rollout needs a GPU (the tiny model, its RL prompts and verl's composed config were checked on the CPU)"
                    raise gpu_unavailable(args, what)
                if gpus < args.nproc:
                    raise too_few_gpus("--nproc", args.nproc, gpus)
                budget = max(10.0, args.timeout - 45)  # time left to stop Ray and report
                # RAY_DEDUP_LOGS=0: every worker's lines, not "repeated 2x"
                started_at = time.time()  # wall clock: verl's log stamps are wall-clock times
                run = run_trainer([sys.executable, "-m", "verl.trainer.main_ppo", *items], report, workdir, budget, RAY_DEDUP_LOGS="0")
                steps = parse_metrics(run.output)
                # where the trainer's start went, the rollout engine's (SGLang) start among it
                parts = startup.phases(run.output.splitlines(), startup.VERL_MARKS, startup.VERL_STAMP, started_at)
                report.figures["startup"] = parts
                rollout = [p["seconds"] for p in parts if p["phase"] == startup.VERL_ROLLOUT]
                if rollout:
                    report.figures["rollout_start_seconds"] = rollout[0]
                    report.notes.append(f"start-up, longest phases: {startup.summary(parts)}")
                report.figures.update(
                    steps=len(steps),
                    metrics={s: {k: m[k] for k in KEPT_KEYS if k in m} for s, m in steps.items()},
                    trainer_seconds=run.seconds,
                    returncode=run.returncode,
                )
                report.table(
                    ["step", "reward mean", "score mean", "pg_loss", "response len"],
                    [[str(s), fmt(m.get(REWARD_KEY), 4), fmt(m.get(SCORE_KEY), 4), fmt(m.get(LOSS_KEY), 5),
                      fmt(m.get("response_length/mean"), 1)] for s, m in steps.items()],
                )  # fmt: skip
                trainer_failed(run, budget)
                verdict = judge_metrics(steps, args.steps)
                expected = "finite rewards and losses; the policy trained"
                report.verdict("training metrics", verdict is None, f"{len(steps)} steps logged", expected, verdict or "")
                if verdict:
                    raise Fail(verdict)
            finally:
                left = kill_processes_using(str(ray_dir))
                if left:
                    report.figures["ray_processes_stopped"] = len(left)
                remove_cleanup(cleanup)

    return body


def main(argv: Iterable[str] | None = None) -> int:
    parser = trainer_parser(__doc__, SMOKE.timeout, steps=2, nproc="GPUs (FSDP ranks and SGLang replicas)", rows="prompts in the tiny RL dataset",
                            kept="model, data, Ray folder and log")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per step")
    parser.add_argument("--rollout-n", type=int, default=4, help="samples per prompt (GRPO's group)")
    parser.add_argument("--micro-batch", type=int, default=8, help="micro batch per GPU (samples)")
    parser.add_argument("--max-prompt-length", type=int, default=64)
    parser.add_argument("--max-response-length", type=int, default=32)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.3, help="SGLang's share of each GPU")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    try:
        overrides(model="m", train_files="f", workdir="w", steps=args.steps, nproc=args.nproc, batch_size=args.batch_size,
                  rollout_n=args.rollout_n, micro_batch=args.micro_batch, max_prompt_length=1, max_response_length=1)  # fmt: skip
    except ValueError as exc:
        parser.error(str(exc))
    return run_test(TEST, body_for(args), json_path=args.json, timeout=args.timeout)


if __name__ == "__main__":
    sys.exit(main())
