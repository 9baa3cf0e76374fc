#!/usr/bin/env bash
# The Ray head node: GCS on KIT_RAY_PORT, dashboard (and job API) on KIT_DASHBOARD_PORT,
# listening on KIT_DASHBOARD_HOST: 0.0.0.0 by default (compose submits the job through it from
# another container); the Slurm exports set 127.0.0.1, as their driver reaches Ray by the GCS.
set -euo pipefail

gpus=${KIT_GPUS:-0}
if [ "${KIT_DEVICE:-cuda}" = cpu ]; then gpus=0; fi
# shellcheck disable=SC2086 # RAY_START_ARGS holds extra flags, split on purpose
exec ray start --head --port "${KIT_RAY_PORT:-6379}" \
  --dashboard-host "${KIT_DASHBOARD_HOST:-0.0.0.0}" --dashboard-port "${KIT_DASHBOARD_PORT:-8265}" \
  --num-gpus "$gpus" --disable-usage-stats --block ${RAY_START_ARGS:-}
