"""The only code in the kit that runs docker or compose. Everything above it asks through
`Engine` and gets typed records back (records.py); containers are described by a
`ContainerSpec` (spec.py) and owned by context managers that always clean up.

What this package exports is the engine's whole surface: nothing outside engine/ imports
its modules (pyproject's import-linter contracts, run by the unit tests)."""

from mlsyskit.engine.build import CacheRecord
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
from mlsyskit.engine.emulation import emulation_volumes, foreign_platform
from mlsyskit.engine.records import COMPOSE_PROJECT, COMPOSE_SERVICE, ContainerInfo, ImageInfo
from mlsyskit.engine.refs import image_ref
from mlsyskit.engine.spec import ContainerSpec, DockerCall, exec_call, run_call

__all__ = [
    "COMPOSE_FIX", "COMPOSE_PROJECT", "COMPOSE_SERVICE", "DAEMON_FIX", "CacheRecord", "Client", "Compose", "ComposeCli",
    "ComposeProject", "Container", "ContainerInfo", "ContainerSpec", "DaemonInfo", "DockerCall", "Engine", "ImageInfo",
    "docker_binaries", "emulation_volumes", "exec_call", "find_clients", "find_compose", "foreign_platform", "image_ref",
    "pick_builder", "run_call", "version_tuple",
]  # fmt: skip
