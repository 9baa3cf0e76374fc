"""verl's GRPO trainer (SGLang rollout) as the driver of the stack's Ray cluster: the
`verl` stack's trainer job on GPUs, the Kubernetes RayJob's entrypoint, the Slurm driver.

    python verl_trainer.py [HYDRA_OVERRIDE ...]          # wait for every node, then train
    python verl_trainer.py --check [HYDRA_OVERRIDE ...]  # compose + validate the config only

The overrides are smoke_tests/verl_grpo.py's (verl 0.9.1 keys, checked there), spread
over the cluster: trainer.nnodes=KIT_NNODES, trainer.n_gpus_per_node=KIT_GPUS. An override
given here replaces the default of the same key (Hydra refuses a key given twice);
VERL_ARGS adds more. With KIT_MODEL unset or `tiny`, a tiny random-weight Qwen2 and its sum
prompts are written first (no hub access): the run shows the plumbing, not learning. With
a real model, KIT_TRAIN_FILES names the RL parquet. `--check` needs no GPU and no cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path


def merge(defaults: Sequence[str], given: Sequence[str]) -> list[str]:
    """Defaults whose key no given override names, then the given ones."""
    keys = {item.split("=", 1)[0].lstrip("+~") for item in given}
    return [item for item in defaults if item.split("=", 1)[0].lstrip("+~") not in keys] + list(given)


def main(argv: Sequence[str]) -> int:
    from smoke_tests import tiny_model
    from smoke_tests._result import Fail
    from smoke_tests.verl_grpo import compose_and_validate, overrides

    check = "--check" in argv
    given = [a for a in argv if a != "--check"] + os.environ.get("VERL_ARGS", "").split()
    nodes, gpus = int(os.environ.get("KIT_NNODES", "1")), int(os.environ.get("KIT_GPUS", "1"))
    for item in given:  # the shape given as overrides wins over the environment
        key, _, value = item.partition("=")
        if key == "trainer.nnodes":
            nodes = int(value)
        elif key == "trainer.n_gpus_per_node":
            gpus = int(value)
    work = Path(os.environ.get("KIT_WORK_DIR") or "/tmp/verl-work")
    model = os.environ.get("KIT_MODEL", "tiny") or "tiny"
    if model == "tiny":
        info = tiny_model.build(work / "tiny", rows=256, seed=0, cfg=tiny_model.SERVE_CONFIG, rl_rows=256)
        model, train_files = info["model"], info["rl_files"]
    else:
        train_files = os.environ.get("KIT_TRAIN_FILES", "")
        if not train_files:
            print("verl: KIT_TRAIN_FILES must name an RL parquet when KIT_MODEL is not `tiny`", file=sys.stderr)
            return 2
    world = nodes * gpus
    defaults = overrides(
        model=model, train_files=train_files, workdir=str(work), steps=int(os.environ.get("KIT_STEPS", "2")),
        nproc=world, batch_size=8 * world, rollout_n=4, micro_batch=8, max_prompt_length=64, max_response_length=32,
    )  # fmt: skip
    shape = [f"trainer.nnodes={nodes}", f"trainer.n_gpus_per_node={gpus}", "trainer.experiment_name=verl_stack"]
    items = merge(merge(defaults, shape), given)
    if check:
        try:
            print(json.dumps({"nnodes": nodes, "n_gpus_per_node": gpus, **compose_and_validate(items)}))
        except Fail as exc:
            print(f"verl: {exc}", file=sys.stderr)
            return 1
        return 0
    wait = subprocess.run([sys.executable, str(Path(__file__).with_name("ray_job.py")), "--wait"], env={**os.environ, "KIT_NNODES": str(nodes)})
    if wait.returncode:
        return wait.returncode
    print(f"verl: trainer over {nodes} node(s) x {gpus} GPU(s)", flush=True)
    os.execvp(sys.executable, [sys.executable, "-m", "verl.trainer.main_ppo", *items])
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
