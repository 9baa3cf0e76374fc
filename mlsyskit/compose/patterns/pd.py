"""Prefill and decode SGLang servers and the router in PD mode in front: on one node the
pair shares its GPUs (half each, CUDA IPC between them), on two each has a node's GPUs."""

from __future__ import annotations

from typing import Any

from mlsyskit.compose.export import SCRIPTS_TARGET, SLURM_MODEL, K8s, Shape, interpolate, one, service_env
from mlsyskit.compose.patterns import Pattern
from mlsyskit.compose.stacks import ComposeStack
from mlsyskit.errors import UsageError


class PrefillDecode(Pattern):
    slurm_role = "prefill"
    serves_api = True

    def default_shape(self, stack: ComposeStack) -> Shape:
        return Shape(1, stack.gpus_default)  # the pair shares one node's GPUs (CUDA IPC between them)

    def check_shape(self, stack: ComposeStack, shape: Shape) -> None:
        if shape.cpu:
            return
        nodes, gpus = shape.nodes, shape.gpus_per_node
        if nodes > 2:
            raise UsageError(f"--nodes {nodes}: {stack.name} runs on 1 node (prefill and decode share its GPUs) or 2 (one server each)")
        if nodes == 1 and gpus % 2:
            raise UsageError(
                f"--gpus-per-node {gpus}: on one node {stack.name} gives half of the GPUs to prefill and half to decode",
                fix=f"give an even count (`--gpus-per-node {gpus + 1}`), or --nodes 2 for one server per node",
            )

    def k8s(self, k: K8s) -> list[dict[str, Any]]:
        """Prefill and decode as Deployments of their own (one pod each, half of a node's GPUs
        each on one node, a node's GPUs each on two), the router in PD mode in front. Pods do
        not share GPUs, so UCX moves the KV over the network (TCP, or InfiniBand with --rdma),
        not CUDA IPC."""
        stack, shape = k.stack, k.shape
        prefill, decode, router = one(stack, "prefill"), one(stack, "decode"), one(stack, "router")
        gpus = shape.gpus_per_node // 2 if shape.nodes == 1 else shape.gpus_per_node
        port = stack.services[prefill].port
        router_port = stack.services[router].port
        bootstrap = int(interpolate(str((stack.compose["services"][prefill].get("environment") or {}).get("KIT_BOOTSTRAP_PORT", "8998")), {}))
        objects: list[dict[str, Any]] = []
        for service in (prefill, decode):
            name, labels = f"{stack.name}-{service}", k.labels(service)
            env = k.gpu_env(service, {"KIT_GPUS": str(gpus), "KIT_NNODES": "1", "KIT_NODE_RANK": "0", "KIT_PD_TP": str(gpus), "KIT_PD_BASE_GPU": "0"})
            ports = [("http", port), *([("bootstrap", bootstrap)] if service == prefill else [])]
            pod = k.pod([k.container(service, gpus=gpus, env=env, ports=ports)], init=k.prep_init(service))
            objects.append(
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "metadata": k.meta(name, service),
                    "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": {"metadata": {"labels": labels}, "spec": pod}},
                }
            )
            objects.append(k.service_object(name, service, labels, ports))
        # the router gives the decode pod this host name for the bootstrap: the prefill Service
        router_env = service_env(
            stack,
            router,
            {
                "KIT_PREFILL_URL": f"http://{stack.name}-{prefill}:{port}",
                "KIT_DECODE_URL": f"http://{stack.name}-{decode}:{port}",
                "KIT_BOOTSTRAP_PORT": str(bootstrap),
            },
            k.opts.ifname or "eth0",
        )
        router_labels = k.labels("router")
        router_pod = k.pod([k.container(router, gpus=0, env=router_env)])
        objects += [
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": k.meta(f"{stack.name}-router", "router"),
                "spec": {"replicas": 1, "selector": {"matchLabels": router_labels}, "template": {"metadata": {"labels": router_labels}, "spec": router_pod}},
            },
            k.service_object(f"{stack.name}-router", "router", router_labels, [("http", router_port)]),
            *k.client_job(f"{stack.name}-router", router_port),
        ]
        return objects

    def slurm(self, stack: ComposeStack, shape: Shape) -> list[str]:
        prefill = one(stack, "prefill")
        one(stack, "decode")
        port = stack.services[prefill].port
        bootstrap = interpolate(str((stack.compose["services"][prefill].get("environment") or {}).get("KIT_BOOTSTRAP_PORT", "8998")), {})
        lines = [
            "# --- the model, then the prefill and decode servers, then the router in PD mode ---------",
            *SLURM_MODEL,
            f"export KIT_BOOTSTRAP_PORT=${{KIT_BOOTSTRAP_PORT:-{bootstrap}}} UCX_PROTO_INFO=${{UCX_PROTO_INFO:-y}}",
        ]
        if shape.nodes == 1:
            lines += [
                "# One node: the pair shares its GPUs (prefill the first half, decode the second) and its",
                "# network, so they serve on two ports; both see every GPU, which CUDA IPC between them needs.",
                f"PREFILL_NODE=$HEAD PREFILL_ADDR=$KIT_HEAD PREFILL_PORT={port}",
                f"DECODE_NODE=$HEAD DECODE_ADDR=$KIT_HEAD DECODE_PORT={port + 1}",
                "PREFILL_ENV=(KIT_NNODES=1 KIT_PD_ROLE=prefill)",
                "DECODE_ENV=(KIT_NNODES=1 KIT_PD_ROLE=decode)",
                "DECODE_STEP=(--overlap)  # a second step on the node whose GPUs the prefill step holds",
            ]
        else:
            lines += [
                "# Two nodes: one server on each, with every GPU of its node.",
                f"PREFILL_NODE=$HEAD PREFILL_ADDR=$KIT_HEAD PREFILL_PORT={port}",
                "DECODE_NODE=${NODES[1]}",
                'DECODE_ADDR=$(node_addr "$DECODE_NODE")',
                f"DECODE_ADDR=${{DECODE_ADDR:-$DECODE_NODE}} DECODE_PORT={port}",
                'PREFILL_ENV=(KIT_NNODES=1 KIT_PD_ROLE=prefill KIT_PD_TP="$KIT_GPUS" KIT_PD_BASE_GPU=0)',
                'DECODE_ENV=(KIT_NNODES=1 KIT_PD_ROLE=decode KIT_PD_TP="$KIT_GPUS" KIT_PD_BASE_GPU=0)',
                "DECODE_STEP=()",
            ]
        lines += [
            "# each server's own NCCL port (on one node they share the network) and its node's address",
            'PREFILL_ENV+=(KIT_SERVE_PORT="$PREFILL_PORT" KIT_NCCL_PORT=30100 KIT_BIND_HOST="$PREFILL_ADDR")',
            'DECODE_ENV+=(KIT_SERVE_PORT="$DECODE_PORT" KIT_NCCL_PORT=30200 KIT_BIND_HOST="$DECODE_ADDR")',
            f'in_container --nodes=1 --ntasks=1 -w "$PREFILL_NODE" -- env "${{PREFILL_ENV[@]}}" bash {SCRIPTS_TARGET}/sglang_server.sh &',
            'started $! "the prefill server on $PREFILL_NODE"',
            f'in_container "${{DECODE_STEP[@]}}" --nodes=1 --ntasks=1 -w "$DECODE_NODE" -- env "${{DECODE_ENV[@]}}" bash {SCRIPTS_TARGET}/sglang_server.sh &',
            "DECODE=$!",
            'started "$DECODE" "the decode server on $DECODE_NODE"',
            'wait_for "the prefill server at $PREFILL_ADDR:$PREFILL_PORT" 3600 curl -fsS "http://$PREFILL_ADDR:$PREFILL_PORT/health"',
            'wait_for "the decode server at $DECODE_ADDR:$DECODE_PORT" 3600 curl -fsS "http://$DECODE_ADDR:$DECODE_PORT/health"',
            "# The router hands the decode server the prefill URL's host as the bootstrap host: an address.",
            "ROUTER_PORT=${ROUTER_PORT:-8000}",
            'in_container --overlap --nodes=1 --ntasks=1 -w "$HEAD" -- env KIT_SERVE_PORT="$ROUTER_PORT" KIT_BIND_HOST="$KIT_HEAD" \\',
            '  KIT_PREFILL_URL="http://$PREFILL_ADDR:$PREFILL_PORT" KIT_DECODE_URL="http://$DECODE_ADDR:$DECODE_PORT" '
            f"bash {SCRIPTS_TARGET}/sglang_router.sh &",
            'started $! "the router"',
            'wait_for "the router on $HEAD:$ROUTER_PORT" 600 curl -fsS "http://$KIT_HEAD:$ROUTER_PORT/health"',
            'in_container --overlap --nodes=1 --ntasks=1 -w "$HEAD" -- env KIT_TARGET="http://$KIT_HEAD:$ROUTER_PORT" '
            f"python {SCRIPTS_TARGET}/sglang_client.py",
            'echo "routing prefill/decode at http://$KIT_HEAD:$ROUTER_PORT until the time limit (scancel $SLURM_JOB_ID stops it)"',
            'finish "$DECODE"',
        ]
        return lines


PATTERN = PrefillDecode()
