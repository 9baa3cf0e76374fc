"""The one narrow layer over the Docker engine. Every engine call in the kit goes through
`Engine`, made of four parts, each with the client that suits it:

    images.py      images: lookups, tags, save/load, import, pull     the Docker API (SDK)
    containers.py  looking at containers, logs, files, removal         the Docker API (SDK)
                   containers made from a ContainerSpec                the docker CLI (argv)
    compose.py     compose projects                                    the compose CLI (argv)
    build.py       BuildKit builds and their cache                     the docker CLI (argv)

The engine chooses, never its callers: `Engine.connect` takes the first client that can
run BuildKit builds (clients.py) and the SDK for the API; `Engine.for_running` (`invoke
shell`) asks its few lookups of the CLI it runs anyway, so that its start-up never imports
the SDK. Refs are checked against Docker's grammar before any client sees them (refs.py)."""

from __future__ import annotations

from dataclasses import dataclass

from mlsyskit.engine import api
from mlsyskit.engine.build import BuildPart, CacheRecord
from mlsyskit.engine.clients import DAEMON_FIX, Client, docker_binaries, find_clients, pick_builder
from mlsyskit.engine.compose import Compose, ComposePart, ComposeProject, ComposeRun
from mlsyskit.engine.containers import NAME_IN_USE, Container
from mlsyskit.errors import EngineError

__all__ = ["NAME_IN_USE", "CacheRecord", "Compose", "ComposeProject", "ComposeRun", "Container", "DaemonInfo", "Engine"]


@dataclass(frozen=True)
class DaemonInfo:
    """What the daemon says of itself that the kit uses."""

    root_dir: str  # where images and containers live (the disk to watch)
    runtimes: tuple[str, ...]  # "runc", and "nvidia" where the container toolkit is set up


class Engine(ComposePart, BuildPart):
    """A Docker engine reached through a BuildKit-capable client and the Docker API."""

    @classmethod
    def connect(cls) -> Engine:
        engine = cls(pick_builder(find_clients()))
        engine.server_version()  # fails early, with the fix, when the daemon is down
        return engine

    @classmethod
    def for_running(cls) -> Engine:
        """An engine that only runs containers (`invoke shell`): the first docker client on
        PATH, without the version probes `connect` makes (each one starts the CLI, which
        `invoke shell`'s start-up cannot afford), and its lookups asked of that client. The
        first call finds a daemon that is down."""
        path = next(docker_binaries(), None)
        if not path:
            raise EngineError("no docker client found", fix="install Docker (`invoke doctor --fix` on Debian/Ubuntu)")
        return cls(Client(path, version="", buildx=False), cli_lookups=True)

    def for_building(self) -> Engine:
        """This engine where it can run BuildKit builds; the shell's (`for_running`: the first
        client on PATH, which may have no BuildKit) connects one that can, for the build."""
        return Engine.connect() if self.cli_lookups else self

    def server_version(self) -> str:
        with api.errors("docker version"):
            version = str(self.api.version().get("Version") or "")
        if not version:
            raise EngineError("the Docker daemon is not reachable", fix=DAEMON_FIX)
        return version

    def daemon(self) -> DaemonInfo:
        with api.errors("docker info"):
            data = self.api.info()
        return DaemonInfo(root_dir=str(data.get("DockerRootDir") or ""), runtimes=tuple(sorted(data.get("Runtimes") or {})))
