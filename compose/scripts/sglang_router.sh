#!/usr/bin/env bash
# The SGLang router in front of data-parallel workers. Workers come from KIT_WORKER_HOSTS
# (compose, Slurm: "host[:port] ...") or, with KIT_DISCOVERY=1, from Kubernetes service
# discovery of the pods matching KIT_WORKER_SELECTOR on KIT_WORKER_PORT.
# With KIT_PREFILL_URL and KIT_DECODE_URL it routes a prefill/decode pair instead (sglang-pd):
# the router gives the decode server the prefill URL's host and KIT_BOOTSTRAP_PORT to fetch
# the KV from, so that host name must resolve where the decode server runs.
set -euo pipefail

port=${KIT_WORKER_PORT:-30000}
args=(--host 0.0.0.0 --port "${KIT_SERVE_PORT:-30000}")
if [ -n "${KIT_PREFILL_URL:-}" ]; then
  args+=(--pd-disaggregation --prefill "$KIT_PREFILL_URL" "${KIT_BOOTSTRAP_PORT:-8998}" --decode "${KIT_DECODE_URL:?KIT_DECODE_URL goes with KIT_PREFILL_URL}")
elif [ "${KIT_DISCOVERY:-0}" = 1 ]; then
  # shellcheck disable=SC2206 # the selector is "key=value key=value", split on purpose
  selector=(${KIT_WORKER_SELECTOR:?})
  args+=(--service-discovery --selector "${selector[@]}" --service-discovery-port "$port")
  if [ -n "${KIT_NAMESPACE:-}" ]; then args+=(--service-discovery-namespace "$KIT_NAMESPACE"); fi
else
  urls=()
  for host in ${KIT_WORKER_HOSTS:?}; do
    case "$host" in *:*) urls+=("http://$host") ;; *) urls+=("http://$host:$port") ;; esac
  done
  args+=(--worker-urls "${urls[@]}")
fi
echo "router: ${args[*]}"
# shellcheck disable=SC2086 # ROUTER_ARGS holds extra flags, split on purpose
exec python -m sglang_router.launch_router "${args[@]}" ${ROUTER_ARGS:-}
