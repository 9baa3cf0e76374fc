"""The facts about the machine a container is started on, gathered in one place for
`shell`, `smoke` and `up`: who the user is, where the Hugging Face cache lives, whether
the Docker daemon lets containers raise memlock (probed once per daemon start, cached in
~/.cache/mlsyskit/), which ports are taken. (Which GPUs to hand over: runtime/gpus.py.) (The topic image
itself comes from images/ensure.py.)"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from mlsyskit import kit_cache
from mlsyskit.engine import Engine

Log = Callable[[str], None]
MEMLOCK = "memlock=-1:-1"


@dataclass(frozen=True, kw_only=True)
class Host:
    """The facts about the invoking host that the docker arguments depend on."""

    uid: int
    gid: int
    user: str
    cwd: Path
    hf_cache: Path
    environ: Mapping[str, str] = field(default_factory=dict)
    tty: bool = False
    # The daemon lets a container raise memlock to unlimited; None: not known yet (not probed
    # since the daemon started: `memlock_allowed` asks it, with an image).
    memlock: bool | None = True
    as_root: bool = field(init=False)  # uid 0 (a field: read by the stages after this one)

    def __post_init__(self) -> None:
        object.__setattr__(self, "as_root", self.uid == 0)


def host_hf_cache(environ: Mapping[str, str], home: Path) -> Path:
    """Where the host keeps Hugging Face's cache: $HF_HOME, else ~/.cache/huggingface."""
    if environ.get("HF_HOME"):
        return Path(environ["HF_HOME"]).expanduser()
    cache = Path(environ["XDG_CACHE_HOME"]) if environ.get("XDG_CACHE_HOME") else home / ".cache"
    return cache / "huggingface"


def user_name(uid: int, environ: Mapping[str, str]) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return environ.get("USER") or f"uid{uid}"


def _is_terminal(stream: IO[str] | None) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


def read_host(environ: Mapping[str, str] | None = None, *, known_memlock: bool = False) -> Host:
    """The host's facts; `known_memlock`: with what this daemon said of memlock before
    (cached, no engine call: None when it has not been asked since it started)."""
    environ = dict(os.environ) if environ is None else environ
    home = Path(environ.get("HOME") or Path.home())
    uid = os.getuid()
    return Host(
        uid=uid,
        gid=os.getgid(),
        user=user_name(uid, environ),
        cwd=Path.cwd(),
        hf_cache=host_hf_cache(environ, home),
        environ=environ,
        tty=_is_terminal(sys.stdin) and _is_terminal(sys.stdout),
        memlock=cached_memlock(environ) if known_memlock else True,
    )


def facts_file(environ: Mapping[str, str]) -> Path:
    return kit_cache(environ) / "engine-facts.json"


def daemon_key(environ: Mapping[str, str]) -> str:
    """Names the running daemon without asking it (a CLI call costs a start-up): its
    endpoint, plus, for a local socket, the socket's inode and time, which change when
    dockerd restarts (the time a new limit would take effect)."""
    host = environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    key = f"{host}|{environ.get('DOCKER_CONTEXT', '')}"
    if host.startswith("unix://"):
        try:
            st = os.stat(host.removeprefix("unix://"))
            key += f"|{st.st_ino}|{st.st_mtime_ns}"
        except OSError:
            pass
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _load_facts(path: Path) -> dict[str, Any]:
    try:
        facts = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return facts if isinstance(facts, dict) else {}


def _save_facts(path: Path, facts: dict[str, Any]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        import tempfile  # written once per daemon start, not on every shell

        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as out:
            json.dump(facts, out)
        os.replace(out.name, path)
    except OSError:
        pass  # a cache only: the next run probes again


MEMLOCK_WARNING = (
    "warning: this Docker host does not let containers raise memlock (--ulimit memlock=-1 fails): "
    "running with its default, so RDMA/NCCL-over-InfiniBand may fail (checked once per daemon start)"
)


def cached_memlock(environ: Mapping[str, str]) -> bool | None:
    """What this daemon said of memlock=-1 when it was last asked; None: not since it started."""
    facts = _load_facts(facts_file(environ)).get(daemon_key(environ))
    return bool(facts["memlock"]) if isinstance(facts, dict) and "memlock" in facts else None


def memlock_allowed(engine: Engine, image: str, environ: Mapping[str, str], log: Log) -> bool:
    """Whether containers may have memlock=-1: probed once per daemon start, then cached.
    The warning is printed once, when the probe finds it refused."""
    known = cached_memlock(environ)
    if known is not None:
        return known
    path, key = facts_file(environ), daemon_key(environ)
    allowed = engine.ulimit_allowed(image, MEMLOCK)
    if not allowed:
        log(MEMLOCK_WARNING)
    _save_facts(path, {key: {"memlock": allowed}})  # only the current daemon's facts are kept
    return allowed


def forget_memlock(environ: Mapping[str, str]) -> None:
    path = facts_file(environ)
    facts = _load_facts(path)
    facts.pop(daemon_key(environ), None)
    _save_facts(path, facts)


# --- ports -----------------------------------------------------------------------------


def published_ports(ports: Sequence[str]) -> list[tuple[str, int, str]]:
    """(host address, host port, protocol) of each `-p` value: `8000`, `8080:80`,
    `127.0.0.1:8000:8000`, `8000/udp`. A range or an unpublished port gives nothing."""
    found = []
    for port in ports:
        spec, _, proto = port.partition("/")
        parts = spec.rsplit(":", 2) if not spec.startswith("[") else [spec]
        if len(parts) == 3:
            address, host_port = parts[0], parts[1]
        else:
            address, host_port = "", parts[0]
        if host_port.isdigit():
            found.append((address, int(host_port), proto or "tcp"))
    return found


def port_taken(address: str, port: int, proto: str = "tcp") -> bool:
    """Whether something on this host already holds the port docker would publish on."""
    import socket

    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not "taken"
        try:
            sock.bind((address or "0.0.0.0", port))
        except PermissionError:
            return False  # a privileged port: docker binds it, we may not; let docker decide
        except OSError:
            return True
    return False


def first_taken_port(ports: Sequence[str], taken: Callable[[str, int, str], bool] = port_taken) -> tuple[str, int, str] | None:
    """The first of these `-p` values whose host port is in use here: ("ADDRESS:PORT" or
    "PORT", port, protocol), or None."""
    for address, port, proto in published_ports(ports):
        if taken(address, port, proto):
            return (f"{address}:{port}" if address else str(port)), port, proto
    return None
