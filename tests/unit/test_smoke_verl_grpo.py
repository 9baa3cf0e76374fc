"""verl GRPO smoke test on a CPU: metric parsing and judging, the trainer's overrides, the
graded reward, and finding Ray's processes that leave the trainer's process group.
(Composing the overrides with Hydra against verl's real config runs inside the verl image:
tests/integration/test_smoke.py.)"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time

import pytest

from smoke_tests import _grpo_reward, verl_grpo

# verl 0.9.1's console logger (verl/utils/logger/aggregate_logger.py: "step:K" then
# "name:value" joined by " - "), forwarded by Ray from the TaskRunner actor with its prefix.
LOG = (
    "\x1b[36m(TaskRunnerV1 pid=567)\x1b[0m step:1 - global_seqlen/min:410 - actor/entropy:5.62 - "
    "actor/pg_loss:-0.0123 - actor/pg_clipfrac:0.0 - actor/grad_norm:0.51 - critic/score/mean:0.0431 - "
    "critic/rewards/mean:0.0431 - response_length/mean:32.0 - timing_s/gen:3.1 - timing_s/step:12.3 - "
    "training/global_step:1 - training/epoch:0 - actor/lr:0.0001 - perf/flag:True\n"
    "(TaskRunnerV1 pid=567) Training Progress:  50%|#####     | 1/2\n"
    "(TaskRunnerV1 pid=567) step:2 - actor/pg_loss:0.0042 - critic/rewards/mean:0.0655 - critic/score/mean:0.0655 - "
    "training/global_step:2 - timing_s/step:2.5\n"
    "unrelated: training/global_step:9 - actor/pg_loss:1.0\n"
)


def test_parse_metrics_reads_ray_prefixed_console_lines():
    steps = verl_grpo.parse_metrics(LOG)
    assert list(steps) == [1, 2]  # "global_step:9 - " is not a step line
    assert steps[1]["actor/pg_loss"] == pytest.approx(-0.0123)
    assert steps[1]["critic/rewards/mean"] == pytest.approx(0.0431)
    assert steps[1]["timing_s/step"] == pytest.approx(12.3)
    assert steps[1]["perf/flag"] == 1.0
    assert steps[2]["critic/rewards/mean"] == pytest.approx(0.0655)
    assert verl_grpo.parse_metrics("nothing here") == {}


def test_parse_metrics_keeps_nan():
    steps = verl_grpo.parse_metrics("step:1 - actor/pg_loss:nan - critic/rewards/mean:inf\n")
    assert math.isnan(steps[1]["actor/pg_loss"]) and math.isinf(steps[1]["critic/rewards/mean"])


def step(**changes: float) -> dict[str, float]:
    """One step's metrics as a run that learned logs them; ``changes`` override some."""
    base = {
        "critic/rewards/mean": 0.0226, "actor/pg_loss": -0.0076, "actor/grad_norm": 0.41,
        "response_length/mean": 30.5, "critic/advantages/max": 1.5, "critic/advantages/min": -1.4,
    }  # fmt: skip
    return {k: v for k, v in {**base, **changes}.items() if v is not None}


NOTHING_LEARNED = {"critic/rewards/mean": 0.0, "actor/pg_loss": 0.0, "actor/grad_norm": 0.0, "critic/advantages/max": 0.0, "critic/advantages/min": 0.0}


@pytest.mark.parametrize(
    "steps, want, verdict",
    [
        ({1: step(), 2: step(**{"actor/pg_loss": 0.0})}, 2, None),
        # the H200 run: pg_loss -0.00003 at step 1, then -0.00755; advantages spread
        ({1: step(**{"actor/pg_loss": -0.00003}), 2: step(**{"actor/pg_loss": -0.00755})}, 2, None),
        ({}, 2, "logged no step"),
        ({1: step()}, 2, "logged 1 of 2 steps (missing [2])"),
        ({1: step(**{"critic/rewards/mean": None})}, 1, "no critic/rewards/mean logged at step(s) [1]"),
        ({1: step(**{"actor/pg_loss": None})}, 1, "no actor/pg_loss logged at step(s) [1]"),
        ({1: step(**{"actor/grad_norm": None})}, 1, "no actor/grad_norm logged at step(s) [1]"),
        ({1: step(**{"critic/rewards/mean": math.nan})}, 1, "non-finite critic/rewards/mean at step(s) [1]"),
        ({1: step(**{"actor/pg_loss": math.inf})}, 1, "non-finite actor/pg_loss"),
        # finite numbers, nothing learned: each must fail
        ({1: step(**{"response_length/mean": 0.0})}, 1, "empty responses at step(s) [1]"),
        (
            {1: step(**{"critic/advantages/max": 0.0, "critic/advantages/min": 0.0}),
             2: step(**{"critic/advantages/max": 0.0, "critic/advantages/min": 0.0})},
            2, "every sample of every group got the same reward",
        ),
        (
            {1: step(**{"actor/pg_loss": 0.0, "actor/grad_norm": 0.0}), 2: step(**{"actor/pg_loss": 0.0, "actor/grad_norm": 0.0})},
            2, "no update: actor/grad_norm and actor/pg_loss were 0 at every step",
        ),
        ({1: step(**NOTHING_LEARNED), 2: step(**NOTHING_LEARNED)}, 2, "same reward"),
    ],
)  # fmt: skip
def test_judge_metrics(steps, want, verdict):
    got = verl_grpo.judge_metrics(steps, want)
    assert got is None if verdict is None else verdict in got


def _overrides(**changes):
    kwargs = dict(
        model="/w/model", train_files="/w/rl.parquet", workdir="/w", steps=2, nproc=1, batch_size=8,
        rollout_n=4, micro_batch=8, max_prompt_length=64, max_response_length=32, ray_dir="/w/ray",
    )  # fmt: skip
    kwargs.update(changes)
    return verl_grpo.overrides(**kwargs)


def test_overrides_ask_for_grpo_with_sglang_rollout():
    items = _overrides()
    for item in (
        "algorithm.adv_estimator=grpo",
        "actor_rollout_ref.rollout.name=sglang",
        "actor_rollout_ref.rollout.n=4",
        "+actor_rollout_ref.model.override_config.attn_implementation=sdpa",
        "trainer.logger=[console]",
        "trainer.total_training_steps=2",
        "trainer.val_before_train=False",
        "reward.custom_reward_function.name=compute_score",
        "+ray_kwargs.ray_init._temp_dir=/w/ray",
    ):
        assert item in items, item
    path = next(i for i in items if i.startswith("reward.custom_reward_function.path=")).split("=", 1)[1]
    assert path.endswith("smoke_tests/_grpo_reward.py") and os.path.isfile(path)
    keys = [i.split("=", 1)[0].lstrip("+") for i in items]
    assert len(keys) == len(set(keys)), "an override is given twice"
    assert _overrides(extra=["trainer.nnodes=2"])[-1] == "trainer.nnodes=2"


@pytest.mark.parametrize(
    "changes, error",
    [({"rollout_n": 1}, "at least 2"), ({"nproc": 3, "batch_size": 8, "rollout_n": 4}, "must divide by --nproc 3")],
)
def test_overrides_refuse_what_cannot_run(changes, error):
    with pytest.raises(ValueError, match=error):
        _overrides(**changes)


def test_main_refuses_bad_sizes_before_anything_runs(capsys):
    with pytest.raises(SystemExit):
        verl_grpo.main(["--rollout-n", "1"])
    assert "at least 2" in capsys.readouterr().err


def test_key_figure():
    figures = {
        "metrics": {
            "1": {"critic/rewards/mean": 0.05, "actor/pg_loss": 0.01},
            "2": {"critic/rewards/mean": 0.1, "actor/pg_loss": -0.02, "actor/grad_norm": 0.412},
        }
    }
    assert verl_grpo.key_figure(figures) == "reward 0.050 -> 0.100, pg_loss -0.0200, grad norm 0.412, 2 steps"
    assert verl_grpo.key_figure({}) == "-"


def test_graded_reward_separates_samples_of_one_prompt():
    assert _grpo_reward.compute_score("smoke/sums", "12 + 30 = 42.", "42") == 1.0
    assert _grpo_reward.compute_score("smoke/sums", "about 420", "42") < 1.0  # not the number 42
    assert _grpo_reward.compute_score("smoke/sums", "", "42") == 0.0
    some_digits = _grpo_reward.compute_score("smoke/sums", "ab12", "42")
    assert some_digits == pytest.approx(0.25)
    assert 0.0 == _grpo_reward.compute_score("smoke/sums", "abcd", "42") < some_digits


def test_ray_processes_are_found_by_folder_and_stopped(tmp_path):
    """Ray's daemons name the temp folder in argv; its workers only hold files in it open."""
    marker = tmp_path / "ray"
    marker.mkdir()
    by_argv = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", str(marker / "session")])
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import time; f = open({str(marker / 'worker.out')!r}, 'w'); time.sleep(600)"],
        start_new_session=True,
    )
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(verl_grpo.processes_using(str(marker))) < 2:
            time.sleep(0.05)
        assert sorted(verl_grpo.processes_using(str(marker))) == sorted([by_argv.pid, holder.pid])
        assert sorted(verl_grpo.kill_processes_using(str(marker), grace=2)) == sorted([by_argv.pid, holder.pid])
        assert by_argv.wait(5) is not None and holder.wait(5) is not None
        assert stranger.poll() is None
        assert verl_grpo.processes_using(str(marker)) == []
    finally:
        for proc in (by_argv, holder, stranger):
            proc.kill()
            proc.wait()


def test_our_own_parents_are_never_killed(tmp_path):
    """A parent whose argv happens to contain the folder (a shell, `invoke smoke --workdir`)."""
    marker = str(tmp_path / "ray")
    script = f"from smoke_tests import verl_grpo as g; print(g.processes_using({marker!r}))"
    out = subprocess.run(["sh", "-c", f"{sys.executable} -c \"{script}\"; : {marker}"], capture_output=True, text=True, timeout=60,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # fmt: skip
    assert out.stdout.strip() == "[]", out.stderr
