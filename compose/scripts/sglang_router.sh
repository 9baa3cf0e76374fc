#!/usr/bin/env bash
# The SGLang router in front of data-parallel workers. Workers come from KIT_WORKER_HOSTS
# (compose, Slurm: "host[:port] ...") or, with KIT_DISCOVERY=1, from Kubernetes service
# discovery of the pods matching KIT_WORKER_SELECTOR on KIT_WORKER_PORT.
# With KIT_PREFILL_URL and KIT_DECODE_URL it routes a prefill/decode pair instead (sglang-pd):
# the router gives the decode server the prefill URL's host and KIT_BOOTSTRAP_PORT to fetch
# the KV from, so that host name must resolve where the decode server runs.
#
# It listens on KIT_BIND_HOST (default 0.0.0.0). With KIT_API_KEY set, the router asks it of
# every request but /health and hands it to the workers (SGLang servers started with the same
# key); it is given to the router inside Python, never in argv, and masked in the output.
set -euo pipefail

port=${KIT_WORKER_PORT:-30000}
args=(--host "${KIT_BIND_HOST:-0.0.0.0}" --port "${KIT_SERVE_PORT:-30000}")
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
if [ -n "${KIT_API_KEY:-}" ]; then
  echo "router: requests must carry the API key (KIT_API_KEY)"
  exec > >(exec python -u /opt/mlsyskit/stacks/mask_secret.py) 2>&1
  # shellcheck disable=SC2086 # ROUTER_ARGS holds extra flags, split on purpose
  exec python -c 'import os, sys
from sglang_router.launch_router import launch_router, parse_router_args
args = parse_router_args(sys.argv[1:])
args.api_key = os.environ.pop("KIT_API_KEY")
launch_router(args)' "${args[@]}" ${ROUTER_ARGS:-}
fi
# shellcheck disable=SC2086 # ROUTER_ARGS holds extra flags, split on purpose
exec python -m sglang_router.launch_router "${args[@]}" ${ROUTER_ARGS:-}
