#!/usr/bin/env bash
# An SGLang server: tensor parallel over every GPU of every node of the group
# (tp = KIT_GPUS x KIT_NNODES). With KIT_NNODES > 1 each node runs this script with its
# KIT_NODE_RANK and they meet at KIT_HEAD:KIT_DIST_PORT, a port other than the serving one.
#
# With KIT_PD_ROLE=prefill|decode it is one half of a prefill/decode pair (sglang-pd): it
# serves with --disaggregation-mode over KIT_PD_BACKEND. The pair shares the GPUs it sees
# (CUDA IPC between them needs both to see both): prefill takes the first half, decode the
# second, unless KIT_PD_TP / KIT_PD_BASE_GPU say otherwise (one server per pod or node).
#
# It listens on KIT_BIND_HOST (default 0.0.0.0: a container's or pod's own network; the Slurm
# exports give each node's own address). With KIT_API_KEY set, SGLang answers only requests
# that carry it (`Authorization: Bearer KEY`; /health stays open): the key reaches SGLang in a
# config file of a private folder, never in argv (which `ps` shows every user of a node), and
# is masked in the output (SGLang logs its arguments when it starts).
set -euo pipefail

model=$(cat "${KIT_MODELS_DIR:-/models}/model_path" 2>/dev/null || echo "${KIT_MODEL:?no model prepared and KIT_MODEL unset}")
nnodes=${KIT_NNODES:-1}
tp=$(( ${KIT_GPUS:-1} * nnodes ))
port=${KIT_SERVE_PORT:-30000}
host=${KIT_BIND_HOST:-0.0.0.0}
args=(--model-path "$model" --host "$host" --port "$port")
role=${KIT_PD_ROLE:-}
if [ -n "$role" ]; then
  nnodes=1  # each server of the pair is one node's (or pod's) tensor-parallel group
  gpus=${KIT_GPUS:-2}
  half=$(( gpus / 2 ))
  tp=${KIT_PD_TP:-$half}
  if [ "$tp" -lt 1 ]; then
    echo "error: a prefill/decode pair sharing ${gpus} GPU(s) needs at least 2 (one each); set KIT_GPUS" >&2
    exit 2
  fi
  case "$role" in
    prefill) base=${KIT_PD_BASE_GPU:-0} ;;
    decode) base=${KIT_PD_BASE_GPU:-$half} ;;
    *) echo "error: KIT_PD_ROLE=$role: expected prefill or decode" >&2; exit 2 ;;
  esac
  bootstrap=${KIT_BOOTSTRAP_PORT:-8998}
  args+=(--disaggregation-mode "$role" --disaggregation-transfer-backend "${KIT_PD_BACKEND:-nixl}"
         --base-gpu-id "$base" --nccl-port "${KIT_NCCL_PORT:-$(( port + 100 ))}")
  if [ "$role" = prefill ]; then
    # A taken bootstrap port would only show as a decode server that never gets KV: say it now.
    if ! python -c "import socket, sys; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((sys.argv[2], int(sys.argv[1])))" "$bootstrap" "$host" 2>/dev/null; then
      echo "error: the bootstrap port ${bootstrap} is already in use on $(hostname): set KIT_BOOTSTRAP_PORT to a free one" >&2
      exit 2
    fi
    args+=(--disaggregation-bootstrap-port "$bootstrap")
  fi
  if [ -n "${KIT_IB_DEVICE:-}" ]; then args+=(--disaggregation-ib-device "$KIT_IB_DEVICE"); fi
fi
args+=(--tp-size "$tp")
if [ "$nnodes" -gt 1 ]; then
  args+=(--nnodes "$nnodes" --node-rank "${KIT_NODE_RANK:?}" --dist-init-addr "${KIT_HEAD:?}:${KIT_DIST_PORT:-20000}")
fi
echo "sglang: ${model}, tp ${tp} over ${nnodes} node(s)${role:+, ${role} on GPU ${base}+ over ${KIT_PD_BACKEND:-nixl}}, on ${host}:${port}"
if [ -n "${KIT_API_KEY:-}" ]; then
  secrets=$(mktemp -d)
  python -c 'import json, os, sys
with open(os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
    out.write("api-key: " + json.dumps(os.environ["KIT_API_KEY"]) + "\n")' "$secrets/api-key.yaml"
  args+=(--config "$secrets/api-key.yaml")
  echo "sglang: requests must carry the API key (KIT_API_KEY)"
  # The filter masks the key and removes the folder once SGLang has read it (or ends).
  exec > >(exec python -u /opt/mlsyskit/stacks/mask_secret.py "$secrets") 2>&1
  unset KIT_API_KEY
fi
# shellcheck disable=SC2086 # SGLANG_ARGS holds extra flags, split on purpose
exec python -m sglang.launch_server "${args[@]}" ${SGLANG_ARGS:-}
