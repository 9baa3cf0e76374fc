"""One SGLang server (tensor parallel) over one or more nodes: a Deployment on one node, a
LeaderWorkerSet (rank 0 the leader) on several; the client job asks it once it is up."""

from __future__ import annotations

from typing import Any

from mlsyskit.compose.export import SCRIPTS_TARGET, SLURM_MODEL, K8s, Shape, interpolate, one
from mlsyskit.compose.patterns import Pattern
from mlsyskit.compose.stacks import ComposeStack

LWS_API = "leaderworkerset.x-k8s.io/v1"


class Server(Pattern):
    slurm_role = "server"
    serves_api = True

    def k8s(self, k: K8s) -> list[dict[str, Any]]:
        stack, shape = k.stack, k.shape
        server = one(stack, "server")
        port = stack.services[server].port
        dist_port = int(interpolate(str((stack.compose["services"][server].get("environment") or {}).get("KIT_DIST_PORT", "20000")), {}))
        name = f"{stack.name}-{server}"
        labels = k.labels("server")
        objects: list[dict[str, Any]] = []
        if shape.nodes == 1:
            env = k.gpu_env(server, {"KIT_NODE_RANK": "0", "KIT_HEAD": "localhost"})
            pod = k.pod([k.container(server, gpus=shape.gpus_per_node, env=env)], init=k.prep_init(server))
            objects.append(
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "metadata": k.meta(name, "server"),
                    "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": {"metadata": {"labels": labels}, "spec": pod}},
                }
            )
            selector = labels
        else:
            # LWS injects LWS_LEADER_ADDRESS and LWS_WORKER_INDEX first in every container's
            # env, so $(...) expands them; rank 0 (the leader) hosts --dist-init-addr.
            env = k.gpu_env(server, {"KIT_HEAD": "$(LWS_LEADER_ADDRESS)", "KIT_NODE_RANK": "$(LWS_WORKER_INDEX)"})
            ports = [("http", port), ("dist-init", dist_port)]
            leader = k.container(server, gpus=shape.gpus_per_node, env=env, ports=ports)
            worker = k.container(server, gpus=shape.gpus_per_node, env=env, ports=ports, probe=False)  # ranks >= 1 always answer 200
            init = k.prep_init(server)
            objects.append(
                {
                    "apiVersion": LWS_API,
                    "kind": "LeaderWorkerSet",
                    "metadata": k.meta(name, "server"),
                    "spec": {
                        "replicas": 1,
                        "startupPolicy": "LeaderCreated",
                        "leaderWorkerTemplate": {
                            "size": shape.nodes,
                            "restartPolicy": "RecreateGroupOnPodRestart",
                            "leaderTemplate": {"metadata": {"labels": {**labels, "role": "leader"}}, "spec": k.pod([leader], init=init)},
                            "workerTemplate": {"metadata": {"labels": {**labels, "role": "worker"}}, "spec": k.pod([worker], init=init)},
                        },
                    },
                }
            )
            selector = {**labels, "role": "leader"}
        objects.append(k.service_object(name, "server", selector, [("http", port)]))
        objects += k.client_job(name, port)
        return objects

    def slurm(self, stack: ComposeStack, shape: Shape) -> list[str]:
        server = one(stack, "server")
        port = stack.services[server].port
        return [
            "# --- the model (the tiny one is written from a config, no hub), then SGLang on every node ---",
            *SLURM_MODEL,
            f"export KIT_SERVE_PORT={port} KIT_DIST_PORT=20000",
            "# each node's server listens on that node's address (KIT_BIND_HOST)",
            'in_container --nodes="$KIT_NNODES" --ntasks-per-node=1 -- \\',
            f'  bash -c "$ON_NODE exec bash {SCRIPTS_TARGET}/sglang_server.sh" &',
            "SERVERS=$!",
            'started "$SERVERS" "the SGLang servers"',
            "# Only rank 0 answers /health truthfully: ranks >= 1 say 200 whatever their state.",
            f'wait_for "SGLang on $HEAD:{port}" 3600 curl -fsS "http://$KIT_HEAD:{port}/health"',
            f'in_container --overlap --nodes=1 --ntasks=1 -w "$HEAD" -- env KIT_TARGET="http://$KIT_HEAD:{port}" python {SCRIPTS_TARGET}/sglang_client.py',
            f'echo "serving at http://$KIT_HEAD:{port} until the time limit (scancel $SLURM_JOB_ID stops it)"',
            'finish "$SERVERS"',
        ]


PATTERN = Server()
