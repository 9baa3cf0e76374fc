#!/usr/bin/env bash
# An SGLang server: tensor parallel over every GPU of every node of the group
# (tp = KIT_GPUS x KIT_NNODES). With KIT_NNODES > 1 each node runs this script with its
# KIT_NODE_RANK and they meet at KIT_HEAD:KIT_DIST_PORT, a port other than the serving one.
#
# With KIT_PD_ROLE=prefill|decode it is one half of a prefill/decode pair (sglang-pd): it
# serves with --disaggregation-mode over KIT_PD_BACKEND. The pair shares the GPUs it sees
# (CUDA IPC between them needs both to see both): prefill takes the first half, decode the
# second, unless KIT_PD_TP / KIT_PD_BASE_GPU say otherwise (one server per pod or node).
set -euo pipefail

model=$(cat "${KIT_MODELS_DIR:-/models}/model_path" 2>/dev/null || echo "${KIT_MODEL:?no model prepared and KIT_MODEL unset}")
nnodes=${KIT_NNODES:-1}
tp=$(( ${KIT_GPUS:-1} * nnodes ))
port=${KIT_SERVE_PORT:-30000}
args=(--model-path "$model" --host 0.0.0.0 --port "$port")
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
    if ! python -c "import socket, sys; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0', int(sys.argv[1])))" "$bootstrap" 2>/dev/null; then
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
echo "sglang: ${model}, tp ${tp} over ${nnodes} node(s)${role:+, ${role} on GPU ${base}+ over ${KIT_PD_BACKEND:-nixl}}"
# shellcheck disable=SC2086 # SGLANG_ARGS holds extra flags, split on purpose
exec python -m sglang.launch_server "${args[@]}" ${SGLANG_ARGS:-}
