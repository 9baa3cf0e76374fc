"""The Docker API, spoken by the `docker` SDK: every path parameter escaped, HTTP read and
written by a maintained client. The SDK is imported on the first API call, not before:
its import (requests, urllib3) costs about 0.3 s, which `./kit shell` does not pay (its
engine asks the docker CLI it runs anyway, docker.py `Engine.for_running`)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from mlsyskit.engine.clients import DAEMON_FIX, PERMISSION_FIX
from mlsyskit.errors import EngineError

# A lookup or a small request; long transfers (save, load, import, export, pull) lift it.
TIMEOUT_S = 120


def _load_sdk() -> None:
    """Import the SDK; under `python -S` (`./kit shell`, stdlib only) site-packages are added
    first: only a build the shell starts gets here, and it takes minutes, not milliseconds."""
    try:
        import docker  # noqa: F401
    except ModuleNotFoundError:
        if not sys.flags.no_site:
            raise
        import site

        site.main()


def connect() -> Any:
    """An `APIClient` for the daemon the docker CLI would use (DOCKER_HOST, else the current
    docker context, else the local socket), speaking the daemon's own API version."""
    _load_sdk()
    import docker

    with errors("connect to the Docker daemon"):
        return docker.from_env(timeout=TIMEOUT_S).api


def not_found(exc: BaseException) -> bool:
    _load_sdk()
    import docker.errors

    return isinstance(exc, docker.errors.NotFound)


def describe(exc: BaseException, what: str) -> EngineError:
    """The one-line error for a failed API call: a daemon that is down or refuses this user
    gets its fix; anything else says what the daemon said."""
    text = str(exc)
    if "Permission denied" in text or isinstance(exc, PermissionError):
        return EngineError("no permission to use the Docker daemon", fix=PERMISSION_FIX)
    if any(s in text for s in ("Connection refused", "No such file or directory", "Connection aborted", "Max retries exceeded")):
        return EngineError("the Docker daemon is not reachable", fix=DAEMON_FIX)
    explanation = getattr(exc, "explanation", None) or text
    line = " ".join(str(explanation).split())
    return EngineError(f"`{what}` failed: {line[:300]}")


@contextmanager
def errors(what: str, *, lookup: bool = False) -> Iterator[None]:
    """SDK and transport errors as EngineError; in a `lookup`, NotFound is left to the
    caller, for whom it means "there is none"."""
    _load_sdk()
    import docker.errors
    import requests.exceptions

    try:
        yield
    except docker.errors.NotFound as exc:
        if lookup:
            raise
        raise describe(exc, what) from None
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
        raise describe(exc, what) from None


@contextmanager
def no_timeout(api: Any) -> Iterator[None]:
    """No per-read time limit for a long transfer (a multi-GB load reads nothing back for
    minutes while the daemon unpacks)."""
    saved, api.timeout = api.timeout, None
    try:
        yield
    finally:
        api.timeout = saved


def stream_lines(chunks: Iterator[dict[str, Any]], what: str) -> list[str]:
    """The `stream` lines of a JSON progress stream (load, import, pull); its error, if any,
    as an EngineError."""
    lines: list[str] = []
    for chunk in chunks:
        if "error" in chunk or "errorDetail" in chunk:
            message = (chunk.get("errorDetail") or {}).get("message") or chunk.get("error") or "(no message)"
            raise EngineError(f"`{what}` failed: {' '.join(str(message).split())[:300]}")
        if "stream" in chunk:
            lines.extend(line for line in str(chunk["stream"]).splitlines() if line.strip())
    return lines
