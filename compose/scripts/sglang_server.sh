#!/usr/bin/env bash
# An SGLang server: tensor parallel over every GPU of every node of the group
# (tp = KIT_GPUS x KIT_NNODES). With KIT_NNODES > 1 each node runs this script with its
# KIT_NODE_RANK and they meet at KIT_HEAD:KIT_DIST_PORT, a port other than the serving one.
set -euo pipefail

model=$(cat "${KIT_MODELS_DIR:-/models}/model_path" 2>/dev/null || echo "${KIT_MODEL:?no model prepared and KIT_MODEL unset}")
nnodes=${KIT_NNODES:-1}
tp=$(( ${KIT_GPUS:-1} * nnodes ))
args=(--model-path "$model" --tp-size "$tp" --host 0.0.0.0 --port "${KIT_SERVE_PORT:-30000}")
if [ "$nnodes" -gt 1 ]; then
  args+=(--nnodes "$nnodes" --node-rank "${KIT_NODE_RANK:?}" --dist-init-addr "${KIT_HEAD:?}:${KIT_DIST_PORT:-20000}")
fi
echo "sglang: ${model}, tp ${tp} over ${nnodes} node(s)"
# shellcheck disable=SC2086 # SGLANG_ARGS holds extra flags, split on purpose
exec python -m sglang.launch_server "${args[@]}" ${SGLANG_ARGS:-}
