"""One SGLang worker per node, one GPU each, behind SGLang's router (which finds them
through the Kubernetes API, or is given their addresses on Slurm)."""

from __future__ import annotations

from typing import Any

from mlsyskit.compose.export import SCRIPTS_TARGET, SLURM_MODEL, K8s, Shape, one, service_env
from mlsyskit.compose.patterns import Pattern
from mlsyskit.compose.stacks import ComposeStack


class Router(Pattern):
    slurm_role = "worker"
    serves_api = True
    gpus_per_node_limit = (1, "each worker serves on one GPU; ask for more workers with --nodes")

    def default_shape(self, stack: ComposeStack) -> Shape:
        return Shape(stack.gpus_default, 1)

    def k8s(self, k: K8s) -> list[dict[str, Any]]:
        stack, shape = k.stack, k.shape
        worker = stack.by_role("worker")[0].name  # the group's template (worker-0)
        router = one(stack, "router")
        port = stack.services[worker].port
        router_port = stack.services[router].port
        worker_name = f"{stack.name}-worker"
        worker_labels, router_labels = k.labels("worker"), k.labels("router")
        env = k.gpu_env(worker, {"KIT_NNODES": "1", "KIT_NODE_RANK": "0", "KIT_GPUS": "1"})
        worker_pod = k.pod([k.container(worker, gpus=1, env=env)], init=k.prep_init(worker))
        worker_pod["containers"][0]["name"] = "worker"
        selector = " ".join(f"{k}={v}" for k, v in worker_labels.items())
        router_env = service_env(
            stack,
            router,
            {"KIT_DISCOVERY": "1", "KIT_WORKER_SELECTOR": selector, "KIT_WORKER_PORT": str(port), "KIT_WORKER_HOSTS": ""},
            k.opts.ifname or "eth0",
        )
        router_pod = k.pod(
            [k.container(router, gpus=0, env=router_env, field_env={"KIT_NAMESPACE": "metadata.namespace"})],
            serviceAccountName=f"{stack.name}-router",
        )
        account = f"{stack.name}-router"
        return [
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": k.meta(worker_name, "worker"),
                "spec": {
                    "replicas": shape.nodes,
                    "selector": {"matchLabels": worker_labels},
                    "template": {"metadata": {"labels": worker_labels}, "spec": worker_pod},
                },
            },
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": k.meta(account, "router")},
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": k.meta(account, "router"),
                "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": k.meta(account, "router"),
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account},
                "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": k.opts.namespace}],
            },
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": k.meta(f"{stack.name}-router", "router"),
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": router_labels},
                    "template": {"metadata": {"labels": router_labels}, "spec": router_pod},
                },
            },
            k.service_object(f"{stack.name}-router", "router", router_labels, [("http", router_port)]),
            *k.client_job(f"{stack.name}-router", router_port),
        ]

    def slurm(self, stack: ComposeStack, shape: Shape) -> list[str]:
        worker = stack.by_role("worker")[0].name
        port = stack.services[worker].port
        return [
            "# --- the model, then one SGLang worker per node (one GPU each), then the router --------",
            *SLURM_MODEL,
            "# each worker listens on its node's address (KIT_BIND_HOST)",
            'in_container --nodes="$KIT_NNODES" --ntasks-per-node=1 -- \\',
            f'  bash -c "$ON_NODE exec env KIT_NNODES=1 KIT_GPUS=1 KIT_SERVE_PORT={port} bash {SCRIPTS_TARGET}/sglang_server.sh" &',
            "WORKERS=$!",
            'started "$WORKERS" "the SGLang workers"',
            'for addr in "${NODE_ADDRS[@]}"; do',
            f'  wait_for "the worker at $addr:{port}" 3600 curl -fsS "http://$addr:{port}/health"',
            "done",
            "# The router shares the head node's network with a worker: it serves on ROUTER_PORT.",
            "ROUTER_PORT=${ROUTER_PORT:-8000}",
            f'export KIT_WORKER_HOSTS="${{NODE_ADDRS[*]}}" KIT_WORKER_PORT={port}',
            'in_container --overlap --nodes=1 --ntasks=1 -w "$HEAD" -- \\',
            f'  env KIT_SERVE_PORT="$ROUTER_PORT" KIT_BIND_HOST="$KIT_HEAD" bash {SCRIPTS_TARGET}/sglang_router.sh &',
            'started $! "the router"',
            'wait_for "the router on $HEAD:$ROUTER_PORT" 600 curl -fsS "http://$KIT_HEAD:$ROUTER_PORT/health"',
            'in_container --overlap --nodes=1 --ntasks=1 -w "$HEAD" -- env KIT_TARGET="http://$KIT_HEAD:$ROUTER_PORT" '
            f"python {SCRIPTS_TARGET}/sglang_client.py",
            'echo "routing at http://$KIT_HEAD:$ROUTER_PORT until the time limit (scancel $SLURM_JOB_ID stops it)"',
            'finish "$WORKERS"',
        ]


PATTERN = Router()
