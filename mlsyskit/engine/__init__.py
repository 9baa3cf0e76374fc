"""The only code in the kit that runs docker or compose. Everything above it asks through
`Engine` and gets typed records back (records.py); containers are described by a
`ContainerSpec` (spec.py) and owned by context managers that always clean up."""

from mlsyskit.engine.clients import (
    COMPOSE_FIX,
    DAEMON_FIX,
    Client,
    ComposeCli,
    docker_binaries,
    find_clients,
    find_compose,
    pick_builder,
    version_tuple,
)
from mlsyskit.engine.docker import Compose, ComposeProject, Container, DaemonInfo, Engine
from mlsyskit.engine.records import COMPOSE_PROJECT, COMPOSE_SERVICE, ContainerInfo, ImageInfo
from mlsyskit.engine.spec import ContainerSpec, DockerCall

__all__ = [
    "COMPOSE_FIX", "COMPOSE_PROJECT", "COMPOSE_SERVICE", "DAEMON_FIX", "Client", "Compose", "ComposeCli", "ComposeProject",
    "Container", "ContainerInfo", "ContainerSpec", "DaemonInfo", "DockerCall", "Engine", "ImageInfo", "docker_binaries",
    "find_clients", "find_compose", "pick_builder", "version_tuple",
]  # fmt: skip
