#!/usr/bin/env bash
# One node of the nccl-2node stack: torchrun with a static rendezvous on the head node,
# running smoke_tests/nccl.py (exact sums, then bus bandwidth). NCCL on GPUs, gloo when
# KIT_DEVICE=cpu. The same script runs under compose, Kubernetes and Slurm; only the
# KIT_* variables differ (compose/README.md lists them).
set -euo pipefail

nproc=${KIT_GPUS:-1}
# On GPUs the stack was asked for them: a node that sees none fails, saying why (not a skip).
args=(--require-gpu)
if [ "${KIT_DEVICE:-cuda}" = cpu ]; then
  nproc=1
  args=(--cpu)
fi
rank=${KIT_NODE_RANK:?KIT_NODE_RANK is not set}
result=/tmp/nccl-result.json

echo "node ${rank}/${KIT_NNODES:?} on $(hostname): ${nproc} process(es) on ${KIT_DEVICE:-cuda}, head ${KIT_HEAD:?}:${KIT_PORT:-29500}"
# Static rendezvous: rank 0 hosts the TCP store, the others retry until it answers. torch's
# store listens on every interface; with KIT_BIND_HOST (the Slurm exports give the head's
# address) rank 0 starts torchrun through torchrun_bound.py, which binds it to that address.
launcher=(torchrun)
if [ "$rank" = 0 ] && [ -n "${KIT_BIND_HOST:-}" ]; then launcher=(python /opt/mlsyskit/stacks/torchrun_bound.py); fi
# shellcheck disable=SC2086 # NCCL_TEST_ARGS holds extra flags, split on purpose
"${launcher[@]}" --nnodes "$KIT_NNODES" --node-rank "$rank" --nproc-per-node "$nproc" \
  --master-addr "$KIT_HEAD" --master-port "${KIT_PORT:-29500}" \
  -m smoke_tests.nccl "${args[@]}" --json "$result" ${NCCL_TEST_ARGS:-}

# Only global rank 0 writes the result. Whatever the test says, a stack that was asked for
# an all-reduce calls nothing but a pass a success (a skip, e.g. one rank only, fails it).
if [ "$rank" = 0 ]; then
  python - "$result" <<'PY'
import json, sys
result = json.load(open(sys.argv[1]))
figures = result.get("figures", {})
print(f"all-reduce {result['status']}: backend {figures.get('backend')}, world size {figures.get('world_size')}, "
      f"exact sums at every size: {all(row.get('correct') for row in figures.get('sizes', []))}")
sys.exit(0 if result["status"] == "passed" else 1)
PY
fi
