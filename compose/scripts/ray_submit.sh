#!/usr/bin/env bash
# The trainer job: submitted to the Ray head's job API and followed until it ends; the
# exit status is the job's. On CPU (KIT_DEVICE=cpu) the job is a trivial Ray program that
# checks the cluster (ray_job.py); on GPUs it is verl's trainer (verl_trainer.py). Both run
# on the head as the job's driver, where /opt/mlsyskit/stacks is mounted too.
set -euo pipefail

address=${KIT_RAY_ADDRESS:-http://${KIT_HEAD:?}:${KIT_DASHBOARD_PORT:-8265}}
if [ "${KIT_DEVICE:-cuda}" = cpu ]; then
  entry=(python /opt/mlsyskit/stacks/ray_job.py)
else
  entry=(python /opt/mlsyskit/stacks/verl_trainer.py "trainer.nnodes=${KIT_NNODES:-2}" "trainer.n_gpus_per_node=${KIT_GPUS:-1}")
fi
# The job sees the cluster's shape through the same variables.
runtime_env=$(printf '{"env_vars": {"KIT_NNODES": "%s", "KIT_GPUS": "%s", "KIT_DEVICE": "%s", "PYTHONPATH": "/opt/mlsyskit"}}' \
  "${KIT_NNODES:-2}" "${KIT_GPUS:-0}" "${KIT_DEVICE:-cuda}")
echo "submitting to ${address}: ${entry[*]}"
exec ray job submit --address "$address" --runtime-env-json "$runtime_env" -- "${entry[@]}"
