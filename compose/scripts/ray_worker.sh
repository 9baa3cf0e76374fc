#!/usr/bin/env bash
# A Ray worker node joining the head at KIT_HEAD:KIT_RAY_PORT. The head must answer first:
# compose orders it with depends_on, the Slurm script waits for it, KubeRay does its own.
set -euo pipefail

gpus=${KIT_GPUS:-0}
if [ "${KIT_DEVICE:-cuda}" = cpu ]; then gpus=0; fi
# Ray wants the head's IP address, not a name that only the container DNS knows.
# (An address already, as the Slurm script gives, is taken as it is: getent fails on those
# it cannot reverse-resolve.)
head=${KIT_HEAD:?}
if ! [[ $head =~ ^[0-9.]+$ ]]; then
  head=$(getent hosts "$head" | awk '{print $1; exit}' || true)
  head=${head:-$KIT_HEAD}
fi
# shellcheck disable=SC2086 # RAY_START_ARGS holds extra flags, split on purpose
exec ray start --address "${head}:${KIT_RAY_PORT:-6379}" --num-gpus "$gpus" \
  --disable-usage-stats --block ${RAY_START_ARGS:-}
