"""verl SFT smoke test: loss parsing and judging, the trainer's overrides, skip without GPU."""

import json
import math

import pytest

from smoke_tests import verl_sft

# Two lines as verl 0.9.1's console logger printed them on the H100 (2026-11-27), tqdm in front.
LOG = """\
Epoch 1/1:   0%|          | 0/4 [00:00<?, ?it/s]step:1 - perf/max_memory_allocated_gb:0.0665 - \
train/loss:5.6496477127075195 - train/grad_norm:2.7075 - train/lr:0.001 - train/global_tokens:503
Epoch 1/1:  25%|##5       | 1/4 [00:03<00:09,  3.25s/it]step:2 - train/loss:5.399801254272461 - train/lr:0.001
step:3 - train/loss:nan - train/lr:0.001
"""


def test_parse_losses_from_console_logger():
    losses = verl_sft.parse_losses(LOG)
    assert list(losses) == [1, 2, 3]
    assert losses[1] == pytest.approx(5.6496477)
    assert losses[2] == pytest.approx(5.3998013)
    assert math.isnan(losses[3])
    assert verl_sft.parse_losses("no losses here") == {}


@pytest.mark.parametrize(
    "losses, steps, verdict",
    [
        ({1: 5.6, 2: 5.4, 3: 5.2, 4: 5.1}, 4, None),
        ({}, 4, "logged no loss"),
        ({1: 5.6, 2: 5.4}, 4, "logged 2 of 4 steps"),
        ({1: 5.6, 2: math.nan}, 2, "non-finite loss at step(s) [2]"),
        ({1: 5.6, 2: math.inf}, 2, "non-finite"),
        ({1: 5.0, 2: 5.1}, 2, "loss did not fall by 2%: first 5.0000, last 5.1000 (-2.0% drop)"),
        ({1: 5.0, 2: 5.0}, 2, "did not fall"),
        # a drop too small to say anything was learned (nothing was: the weights barely moved)
        ({1: 5.65, 2: 5.6499}, 2, "loss did not fall by 2%: first 5.6500, last 5.6499 (+0.0% drop)"),
        ({1: 5.65, 2: 5.55}, 2, "(+1.8% drop)"),
        # what verl 0.9.1 did on the H100 and the H200: 5.650 -> 5.102 in 4 steps
        ({1: 5.650, 2: 5.40, 3: 5.25, 4: 5.102}, 4, None),
    ],
)
def test_judge_losses(losses, steps, verdict):
    got = verl_sft.judge_losses(losses, steps)
    if verdict is None:
        assert got is None
    else:
        assert verdict in got


def _overrides(**changes):
    kwargs = dict(
        model="/w/model", train_files="/w/train.parquet", workdir="/w", steps=4, nproc=1, rows=64,
        batch_size=16, micro_batch=4, max_length=256, device="cuda",
    )  # fmt: skip
    kwargs.update(changes)
    return verl_sft.overrides(**kwargs)


def test_overrides_name_sdpa_and_enough_epochs():
    items = _overrides()
    assert "+model.override_config.attn_implementation=sdpa" in items
    assert "trainer.total_training_steps=4" in items
    assert "trainer.total_epochs=1" in items
    assert "trainer.logger=[console]" in items
    assert "trainer.total_epochs=3" in _overrides(steps=10)  # 4 steps an epoch
    assert _overrides(extra=["model.use_remove_padding=False"])[-1] == "model.use_remove_padding=False"
    keys = [item.split("=", 1)[0].lstrip("+") for item in items]
    assert len(keys) == len(set(keys))


def test_overrides_refuse_impossible_batches():
    with pytest.raises(ValueError, match="divide"):
        _overrides(nproc=3)
    with pytest.raises(ValueError, match="smaller than one batch"):
        _overrides(rows=8)


def test_overrides_are_valid_for_verls_own_config():
    """Compose verl's SFT config with our overrides the way its hydra entry point does."""
    pytest.importorskip("verl")
    hydra = pytest.importorskip("hydra")
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="verl.trainer.config", version_base=None):
        cfg = compose(config_name="sft_trainer_engine", overrides=_overrides())
    assert cfg.model.override_config.attn_implementation == "sdpa"
    assert cfg.trainer.total_training_steps == 4
    assert list(cfg.trainer.logger) == ["console"]
    assert cfg.data.val_files is None
    assert hydra.__version__


def test_failure_hint_finds_the_workers_exception():
    log = (
        "Traceback (most recent call last):\n  File x\nValueError: Duplicate device type cpu\n"
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n====\n"
    )
    assert verl_sft.failure_hint(log) == "ValueError: Duplicate device type cpu"
    assert verl_sft.failure_hint("just this\n") == "just this"


def test_cpu_flag_skips_with_a_reason(tmp_path):
    pytest.importorskip("torch")
    path = tmp_path / "r.json"
    assert verl_sft.main(["--cpu", "--json", str(path)]) == 0
    data = json.loads(path.read_text())
    assert data["status"] == "skipped"
    assert "no CPU device" in data["reason"]


def test_too_few_steps_is_a_usage_error():
    with pytest.raises(SystemExit):
        verl_sft.main(["--steps", "1"])
