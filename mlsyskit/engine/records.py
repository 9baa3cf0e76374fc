"""What the engine says about images and containers, as typed records. `docker inspect`'s
JSON is read here and nowhere else, so the rest of the kit asks `info.labels` and
`info.running`, not `(data.get("Config") or {}).get("Labels")`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

COMPOSE_PROJECT = "com.docker.compose.project"
COMPOSE_SERVICE = "com.docker.compose.service"
NEVER = 0.0


def epoch(stamp: str) -> float:
    """Docker's RFC 3339 time with nanoseconds as epoch seconds ("0001-01-01T00:00:00Z" and
    "" = never)."""
    if not stamp or stamp.startswith("0001-"):
        return NEVER
    from datetime import datetime  # only the compose stacks read times

    main, _, rest = stamp.partition(".")
    zone = ""
    if rest:
        digits = rest[: len(rest) - len(rest.lstrip("0123456789"))]
        zone = rest[len(digits) :]
        main = f"{main}.{digits[:6]}"
    else:
        main, zone = (main[:-1], "Z") if main.endswith("Z") else (main, "")
    zone = "+00:00" if zone in ("Z", "") else zone
    return datetime.fromisoformat(main + zone).timestamp()


def _labels(inspect: Mapping[str, Any]) -> dict[str, str]:
    return dict((inspect.get("Config") or {}).get("Labels") or {})


@dataclass(frozen=True)
class ImageInfo:
    """An image as the engine describes it: ID, tags, labels, size, creation, architecture, environment."""

    id: str
    tags: tuple[str, ...]
    labels: Mapping[str, str] = field(default_factory=dict)
    size: int = 0  # bytes
    created: str = ""
    architecture: str = ""  # the image config's: amd64, arm64
    env: tuple[str, ...] = ()  # the image config's environment, NAME=VALUE each

    @property
    def environment(self) -> dict[str, str]:
        return dict(item.partition("=")[::2] for item in self.env)

    @classmethod
    def from_listing(cls, row: Mapping[str, Any]) -> ImageInfo:
        """One row of the engine's image list (`docker images`): ID, tags, labels and size;
        no creation time, architecture or environment (ask `Engine.image` for those)."""
        return cls(id=str(row.get("Id", "")), tags=tuple(row.get("RepoTags") or ()), labels=dict(row.get("Labels") or {}), size=int(row.get("Size") or 0))

    @classmethod
    def from_inspect(cls, data: Mapping[str, Any]) -> ImageInfo:
        return cls(
            id=str(data.get("Id", "")),
            tags=tuple(data.get("RepoTags") or ()),
            labels=_labels(data),
            size=int(data.get("Size") or 0),
            created=str(data.get("Created", "")),
            architecture=str(data.get("Architecture", "")),
            env=tuple(str(e) for e in (data.get("Config") or {}).get("Env") or ()),
        )


@dataclass(frozen=True)
class ContainerInfo:
    """A container as the engine describes it: ID, name, labels, state, exit code, health, times."""

    id: str
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    status: str = "?"  # created, running, restarting, paused, exited, dead
    exit_code: int = 0
    health: str = ""  # "" without a healthcheck, else starting / healthy / unhealthy
    created: str = ""
    started_at: float = NEVER
    finished_at: float = NEVER

    @property
    def running(self) -> bool:
        return self.status == "running"

    @property
    def service(self) -> str:
        """The compose service it belongs to, else its own name."""
        return self.labels.get(COMPOSE_SERVICE, self.name)

    @classmethod
    def from_inspect(cls, data: Mapping[str, Any]) -> ContainerInfo:
        state = data.get("State") or {}
        return cls(
            id=str(data.get("Id", "")),
            name=str(data.get("Name", "")).lstrip("/"),
            labels=_labels(data),
            status=str(state.get("Status", "?")),
            exit_code=int(state.get("ExitCode") or 0),
            health=str((state.get("Health") or {}).get("Status") or ""),
            created=str(data.get("Created", "")),
            started_at=epoch(str(state.get("StartedAt", ""))),
            finished_at=epoch(str(state.get("FinishedAt", ""))),
        )
