"""Stack patterns: how each kind of stack (the `pattern` of a compose/<stack>.yml's
`x-mlsyskit` block) leaves the host. One module per pattern, named as the stacks name it,
holds everything that differs by pattern: its shape rules (nodes, GPUs per node), its
Kubernetes objects and its Slurm steps; compose/export.py holds what they share and never
asks which pattern it has.

    server  one SGLang server over one or more nodes (a Deployment, or a LeaderWorkerSet)
    router  one SGLang worker per node (one GPU each) behind SGLang's router
    pd      prefill and decode servers behind the router in PD mode
    ray     a Ray cluster and verl's trainer as its job (a KubeRay RayJob)
    nodes   one torchrun process per node (an Indexed Job)

The registry is this folder: a stack may name any module here (compose/stacks.py checks
the name against NAMES), and a new pattern is one new module defining `PATTERN`."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlsyskit.compose.export import K8s, Shape
    from mlsyskit.compose.stacks import ComposeStack

#: Every pattern a stack may declare: the modules of this folder.
NAMES: tuple[str, ...] = tuple(sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if not m.name.startswith("_")))


class Pattern:
    """What one pattern contributes to an export. The defaults suit a pattern with no rules
    of its own; each module overrides what it needs."""

    #: the role whose image and mounts the Slurm script takes
    slurm_role: str = ""
    #: the stack serves SGLang's HTTP API (`--api-key` applies)
    serves_api: bool = False
    #: the most GPUs one node can use, and why (None: the largest common GPU node)
    gpus_per_node_limit: tuple[int, str] | None = None

    def default_shape(self, stack: ComposeStack) -> Shape | None:
        """The nodes and GPUs per node when none are given; None: one node per split service."""
        return None

    def check_shape(self, stack: ComposeStack, shape: Shape) -> None:
        """Refuse, in one line, a shape this pattern cannot run (shape.cpu: the CPU variant)."""

    def k8s(self, k: K8s) -> list[dict[str, Any]]:
        """The pattern's Kubernetes objects (the ConfigMaps and the NetworkPolicy are shared)."""
        raise NotImplementedError

    def slurm(self, stack: ComposeStack, shape: Shape) -> list[str]:
        """The pattern's job steps, at the end of the shared batch script."""
        raise NotImplementedError

    def shipped_commands(self, shape: Shape) -> list[str]:
        """Commands beyond the compose file's that the ConfigMaps must carry the files of."""
        return []

    def ingress(self, stack: ComposeStack) -> list[dict[str, Any]]:
        """NetworkPolicy ingress rules beyond the stack's own pods."""
        return []


def get(name: str) -> Pattern:
    """The pattern of that name (one of NAMES: compose/stacks.py has checked it)."""
    if name not in NAMES:
        raise KeyError(name)
    found: Pattern = importlib.import_module(f"{__name__}.{name}").PATTERN
    return found


def every() -> dict[str, Pattern]:
    return {name: get(name) for name in NAMES}
