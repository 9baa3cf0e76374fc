"""A Ray cluster (the head, then the workers) and verl's trainer as the job on it: a KubeRay
RayJob, or `ray start` steps and a driver on Slurm."""

from __future__ import annotations

import shlex
from typing import Any

import yaml

from mlsyskit import REPO_ROOT
from mlsyskit.compose.export import SCRIPTS_TARGET, K8s, Shape, one
from mlsyskit.compose.patterns import Pattern
from mlsyskit.compose.stacks import ComposeStack
from mlsyskit.data.lockfile import key_versions

RAY_API = "ray.io/v1"
KUBERAY_OPERATOR = {"app.kubernetes.io/name": "kuberay-operator"}  # the labels of KubeRay's Helm chart


def trainer_command(shape: Shape) -> list[str]:
    """verl's trainer over the whole cluster (the Ray job's entrypoint / driver)."""
    return [
        "python",
        f"{SCRIPTS_TARGET}/verl_trainer.py",
        f"trainer.nnodes={shape.nodes}",
        f"trainer.n_gpus_per_node={shape.gpus_per_node}",
    ]


class Ray(Pattern):
    slurm_role = "head"

    def shipped_commands(self, shape: Shape) -> list[str]:
        return trainer_command(shape)

    def ingress(self, stack: ComposeStack) -> list[dict[str, Any]]:
        """The head's dashboard also for KubeRay: its operator and the RayJob's submitter pod,
        named after the RayJob, submit and follow the job through it."""
        return [
            {
                "from": [
                    {"podSelector": {"matchLabels": {"batch.kubernetes.io/job-name": stack.name}}},
                    {"namespaceSelector": {}, "podSelector": {"matchLabels": dict(KUBERAY_OPERATOR)}},
                ],
                "ports": [{"protocol": "TCP", "port": 8265}],
            }
        ]

    def k8s(self, k: K8s) -> list[dict[str, Any]]:

        stack, shape = k.stack, k.shape
        head, worker = one(stack, "head"), one(stack, "worker")
        # KubeRay starts Ray itself and points the nodes at the head: only the shape stays.
        compose_only = ("KIT_HEAD", "KIT_NODE_RANK", "KIT_RAY_PORT", "KIT_DASHBOARD_PORT")
        env_head = {k: v for k, v in k.gpu_env(head, {}).items() if k not in compose_only}
        env_worker = {k: v for k, v in k.gpu_env(worker, {}).items() if k not in compose_only}
        ray_ports = [("gcs", 6379), ("dashboard", 8265), ("client", 10001)]
        # KubeRay writes the `ray start` command itself: the containers get none.
        head_c = k.container(head, gpus=shape.gpus_per_node, env=env_head, probe=False, command=[], ports=ray_ports)
        worker_c = k.container(worker, gpus=shape.gpus_per_node, env=env_worker, probe=False, command=[], ports=[("metrics", 8080)])
        lock = REPO_ROOT / "envs" / stack.topic / "uv.lock"
        ray_version = key_versions(lock, ["ray"]).get("ray", "") if lock.is_file() else ""
        gpus = str(shape.gpus_per_node)
        cluster: dict[str, Any] = {
            "headGroupSpec": {
                "rayStartParams": {"dashboard-host": "0.0.0.0", "num-gpus": gpus},
                "template": {"metadata": {"labels": k.labels("head")}, "spec": k.pod([head_c])},
            },
        }
        if ray_version:
            cluster = {"rayVersion": ray_version, **cluster}
        if shape.nodes > 1:
            cluster["workerGroupSpecs"] = [
                {
                    "groupName": "worker",
                    "replicas": shape.nodes - 1,
                    "minReplicas": shape.nodes - 1,
                    "maxReplicas": shape.nodes - 1,
                    "rayStartParams": {"num-gpus": gpus},
                    "template": {"metadata": {"labels": k.labels("worker")}, "spec": k.pod([worker_c])},
                }
            ]
        runtime_env = {"env_vars": {"KIT_NNODES": str(shape.nodes), "KIT_GPUS": gpus, "KIT_DEVICE": "cuda", "PYTHONPATH": "/opt/mlsyskit"}}
        entrypoint = trainer_command(shape)
        return [
            {
                "apiVersion": RAY_API,
                "kind": "RayJob",
                "metadata": k.meta(stack.name, "trainer"),
                "spec": {
                    "entrypoint": shlex.join(entrypoint),
                    "runtimeEnvYAML": yaml.safe_dump(runtime_env, sort_keys=True),
                    "shutdownAfterJobFinishes": True,
                    "ttlSecondsAfterFinished": 600,
                    "rayClusterSpec": cluster,
                },
            }
        ]

    def slurm(self, stack: ComposeStack, shape: Shape) -> list[str]:
        return [
            "# --- Ray: the head, then the workers once it answers; the driver on the head ----------",
            "# The dashboard (and its job API, which runs code as you) on the head's loopback only: the",
            "# driver below reaches Ray through the GCS; `ssh -L 8265:localhost:8265 HEAD` to look at it.",
            "export KIT_RAY_PORT=6379 KIT_DASHBOARD_PORT=8265 KIT_DASHBOARD_HOST=127.0.0.1",
            f'in_container --nodes=1 --ntasks=1 -w "$HEAD" -- bash {SCRIPTS_TARGET}/ray_head.sh &',
            'started $! "the Ray head on $HEAD"',
            'wait_for "the Ray head on $HEAD" 600 in_container --overlap --nodes=1 --ntasks=1 -w "$HEAD" -- ray status --address "$KIT_HEAD:$KIT_RAY_PORT"',
            'if [ "$KIT_NNODES" -gt 1 ]; then',
            "  # --ntasks too: the job's own SLURM_NTASKS (one per node) would ask for the head's as well",
            '  in_container --nodes=$((KIT_NNODES - 1)) --ntasks=$((KIT_NNODES - 1)) --ntasks-per-node=1 --exclude="$HEAD" -- \\',
            f"    bash {SCRIPTS_TARGET}/ray_worker.sh &",
            '  started $! "the Ray workers"',
            "fi",
            *(
                [
                    "# The driver: a trivial Ray program that waits for every node and runs tasks on each.",
                    f'in_container --overlap --nodes=1 --ntasks=1 -w "$HEAD" -- env RAY_ADDRESS="$KIT_HEAD:$KIT_RAY_PORT" python {SCRIPTS_TARGET}/ray_job.py &',
                ]
                if shape.cpu
                else [
                    "# The driver waits until every node has joined (ray_job.py --wait), then trains.",
                    'in_container --overlap --nodes=1 --ntasks=1 -w "$HEAD" -- env RAY_ADDRESS="$KIT_HEAD:$KIT_RAY_PORT" '
                    f"{shlex.join(trainer_command(shape))} &",
                ]
            ),
            "finish $!",
            'say "the Ray job ended; stopping the cluster"',
        ]


PATTERN = Ray()
