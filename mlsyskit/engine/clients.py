"""Finding the docker and compose clients on this machine, and what each can do.

Clients differ: a docker CLI >= 23 builds with BuildKit only through the buildx plugin,
while a 20.10 CLI does it natively with DOCKER_BUILDKIT=1. Compose comes as the v2 plugin
(`docker compose`) or the Python docker-compose >= 1.29 (Debian 12 ships only that); both
read the Compose Specification, name containers differently (project-service-1 against
project_service_1) and label them the same way, so the kit finds containers by label."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from mlsyskit.errors import EngineError

CLIENT_CANDIDATES = ("docker", "/usr/bin/docker", "/usr/local/bin/docker")
DAEMON_FIX = "start it with `sudo systemctl start docker` (or `sudo dockerd &` where no init runs), or run `invoke doctor --fix`"
PERMISSION_FIX = "add your user to the docker group (`sudo usermod -aG docker $USER`), then log in again"


@dataclass(frozen=True)
class Client:
    """A docker client binary: where it is, its version, whether it has the buildx plugin."""

    path: str
    version: str
    buildx: bool

    @property
    def buildkit(self) -> bool:
        major = int(self.version.split(".")[0] or 0)
        return self.buildx or major < 23


def version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("+")[0].split("-")[0].split("."):
        parts.append(int(piece) if piece.isdigit() else 0)
    return tuple(parts)


def pick_builder(clients: Sequence[Client]) -> Client:
    """The first client that can run BuildKit builds (the one `Engine.connect` uses)."""
    if not clients:
        raise EngineError("no docker client found", fix="install Docker (`invoke doctor --fix` on Debian/Ubuntu)")
    usable = [c for c in clients if c.buildkit]
    if not usable:
        raise EngineError(
            f"docker {clients[0].version} at {clients[0].path} cannot run BuildKit builds (no buildx plugin)",
            fix="install the docker-buildx plugin, or Debian's docker.io client",
        )
    return usable[0]


def docker_binaries(names: Sequence[str] = CLIENT_CANDIDATES) -> Iterator[str]:
    """Each docker client on this machine once (`docker` on PATH is often a link to one of them)."""
    seen = set()
    for name in names:
        path = shutil.which(name)
        if path and os.path.realpath(path) not in seen:
            seen.add(os.path.realpath(path))
            yield path


def find_clients() -> list[Client]:
    clients = []
    for path in docker_binaries():
        out = subprocess.run([path, "version", "--format", "{{.Client.Version}}"], capture_output=True, text=True)
        version = out.stdout.strip().splitlines()[0] if out.stdout.strip() else ""
        if not version:
            continue
        buildx = subprocess.run([path, "buildx", "version"], capture_output=True).returncode == 0
        clients.append(Client(path, version, buildx))
    return clients


# --- compose ------------------------------------------------------------------------------

COMPOSE_V1_MIN = (1, 29)
COMPOSE_FIX = "install the docker compose v2 plugin (docker-compose-plugin) or docker-compose >= 1.29 (`invoke doctor --fix`)"


@dataclass(frozen=True)
class ComposeCli:
    """A compose client: the argv that starts it and its version."""

    argv: tuple[str, ...]  # ("docker", "compose") or ("docker-compose",)
    version: str

    @property
    def v2(self) -> bool:
        return version_tuple(self.version)[:1] >= (2,)

    def describe(self) -> str:
        return f"{' '.join(Path(self.argv[0]).name if i == 0 else a for i, a in enumerate(self.argv))} {self.version}"


def find_compose(clients: Sequence[str] = CLIENT_CANDIDATES) -> ComposeCli | None:
    """The v2 plugin of the first docker client that has one, else docker-compose >= 1.29."""
    for path in docker_binaries(clients):
        proc = subprocess.run([path, "compose", "version", "--short"], capture_output=True, text=True)
        if proc.returncode == 0 and proc.stdout.strip():
            return ComposeCli((path, "compose"), proc.stdout.strip().lstrip("v"))
    v1 = shutil.which("docker-compose")
    if v1:
        proc = subprocess.run([v1, "version", "--short"], capture_output=True, text=True)
        version = proc.stdout.strip().lstrip("v")
        if proc.returncode == 0 and version and version_tuple(version)[:2] >= COMPOSE_V1_MIN:
            return ComposeCli((v1,), version)
    return None
