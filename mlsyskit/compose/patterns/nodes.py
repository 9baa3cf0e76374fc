"""torchrun on every node, rank = the node's index, the rendezvous on the first: an Indexed
Job with a headless Service on Kubernetes, one step over every node on Slurm."""

from __future__ import annotations

from typing import Any

from mlsyskit.compose.export import SCRIPTS_TARGET, K8s, Shape, interpolate
from mlsyskit.compose.patterns import Pattern
from mlsyskit.compose.stacks import ComposeStack
from mlsyskit.errors import UsageError


class Nodes(Pattern):
    slurm_role = "node"

    def check_shape(self, stack: ComposeStack, shape: Shape) -> None:
        if shape.cpu and shape.nodes < 2:
            raise UsageError(f"--nodes {shape.nodes}: {stack.name} on CPU all-reduces across at least 2 nodes (one process each)")
        if not shape.cpu and shape.nodes * shape.gpus_per_node < 2:
            raise UsageError(f"{stack.name} all-reduces over at least 2 GPUs: got {shape.nodes} node(s) x {shape.gpus_per_node} GPU(s)")

    def k8s(self, k: K8s) -> list[dict[str, Any]]:
        stack, shape = k.stack, k.shape
        node = stack.split_services()[0]
        port = int(interpolate(str((stack.compose["services"][node].get("environment") or {}).get("KIT_PORT", "29500")), {}))
        job = stack.name
        env = k.gpu_env(node, {"KIT_HEAD": f"{job}-0.{job}", "KIT_PORT": str(port)})
        env.pop("KIT_NODE_RANK", None)
        container = k.container(
            node,
            gpus=shape.gpus_per_node,
            env=env,
            field_env={"KIT_NODE_RANK": "metadata.annotations['batch.kubernetes.io/job-completion-index']"},
            ports=[("rendezvous", port)],
        )
        container["name"] = "node"
        labels = k.labels("node")
        pod = k.pod([container], restart="Never", subdomain=job)
        return [
            k.service_object(job, "node", labels, [("rendezvous", port)], headless=True),
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": k.meta(job, "node"),
                "spec": {
                    "completionMode": "Indexed",
                    "completions": shape.nodes,
                    "parallelism": shape.nodes,
                    "backoffLimit": 0,
                    "template": {"metadata": {"labels": labels}, "spec": pod},
                },
            },
        ]

    def slurm(self, stack: ComposeStack, shape: Shape) -> list[str]:
        node = stack.split_services()[0]
        port = interpolate(str((stack.compose["services"][node].get("environment") or {}).get("KIT_PORT", "29500")), {})
        return [
            f"# --- torchrun on every node, rank = the node's index, rendezvous on the head:{port} ---",
            f"export KIT_PORT={port}",
            "# rank 0's torchrun store listens on the head's address only (KIT_BIND_HOST)",
            'in_container --nodes="$KIT_NNODES" --ntasks-per-node=1 -- \\',
            f'  bash -c "$ON_NODE exec bash {SCRIPTS_TARGET}/nccl_node.sh"',
        ]


PATTERN = Nodes()
