"""The one narrow layer over the Docker engine. Every engine call in the kit goes through
`Engine`, which drives the docker CLI (the Python SDK cannot run BuildKit builds).

Clients differ: a docker CLI >= 23 builds with BuildKit only through the buildx plugin,
while a 20.10 CLI does it natively with DOCKER_BUILDKIT=1. The first client that can do a
BuildKit build is chosen, so `RUN --mount` and `--secret` always work."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from .errors import BuildError, EngineError, KitError

CLIENT_CANDIDATES = ("docker", "/usr/bin/docker", "/usr/local/bin/docker")
DAEMON_FIX = "start it with `sudo systemctl start docker` (or `sudo dockerd &` where no init runs), or run `invoke doctor --fix`"
PERMISSION_FIX = "add your user to the docker group (`sudo usermod -aG docker $USER`), then log in again"


@dataclass(frozen=True)
class Client:
    path: str
    version: str
    buildx: bool

    @property
    def buildkit(self) -> bool:
        major = int(self.version.split(".")[0] or 0)
        return self.buildx or major < 23


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("+")[0].split("-")[0].split("."):
        parts.append(int(piece) if piece.isdigit() else 0)
    return tuple(parts)


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
# Compose runs the stacks (mlsyskit/stacks.py). Users have either the v2 plugin
# (`docker compose`) or the Python docker-compose >= 1.29 (Debian 12 ships only that); both
# read the Compose Specification, name containers differently (project-service-1 against
# project_service_1) and label them the same way, so the kit finds containers by label.

COMPOSE_V1_MIN = (1, 29)
COMPOSE_FIX = "install the docker compose v2 plugin (docker-compose-plugin) or docker-compose >= 1.29 (`invoke doctor --fix`)"


@dataclass(frozen=True)
class ComposeCli:
    argv: tuple[str, ...]  # ("docker", "compose") or ("docker-compose",)
    version: str

    @property
    def v2(self) -> bool:
        return _version_tuple(self.version)[:1] >= (2,)

    def describe(self) -> str:
        return f"{' '.join(Path(self.argv[0]).name if i == 0 else a for i, a in enumerate(self.argv))} {self.version}"


def find_compose(clients: Sequence[str] = CLIENT_CANDIDATES) -> ComposeCli | None:
    """The v2 plugin of the first docker client that has one, else docker-compose >= 1.29."""
    for path in docker_binaries(clients):
        proc = subprocess.run([path, "compose", "version", "--short"], capture_output=True, text=True)
        if proc.returncode == 0 and proc.stdout.strip():
            return ComposeCli((path, "compose"), proc.stdout.strip().lstrip("v"))
    path = shutil.which("docker-compose")
    if path:
        proc = subprocess.run([path, "version", "--short"], capture_output=True, text=True)
        version = proc.stdout.strip().lstrip("v")
        if proc.returncode == 0 and version and _version_tuple(version)[:2] >= COMPOSE_V1_MIN:
            return ComposeCli((path,), version)
    return None


class ComposeRun:
    """`compose up -d` running in the background while the caller watches the containers."""

    def __init__(self, proc: subprocess.Popen, log_path: Path) -> None:
        self.proc, self.log_path = proc, log_path

    def __enter__(self) -> ComposeRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def poll(self) -> int | None:
        return self.proc.poll()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])


class Compose:
    """Compose commands on one project (a stack) and its rendered file."""

    def __init__(self, cli: ComposeCli, env: dict[str, str]) -> None:
        self.cli, self.env = cli, env

    def describe(self) -> str:
        return self.cli.describe()

    def _cmd(self, project: str, path: Path, *args: str) -> list[str]:
        return [*self.cli.argv, "--ansi", "never", "-p", project, "-f", str(path), *args]

    def check(self, project: str, path: Path) -> None:
        """`compose config`: the file is valid Compose for this compose version."""
        proc = subprocess.run(self._cmd(project, path, "config", "-q"), capture_output=True, text=True, env=self.env)
        if proc.returncode != 0:
            last = (proc.stderr.strip() or proc.stdout.strip()).splitlines() or ["(no output)"]
            raise EngineError(f"{self.describe()} rejects {path}: {' '.join(last)[:400]}")

    def config(self, project: str, path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self._cmd(project, path, "config"), capture_output=True, text=True, env=self.env)

    def start(self, project: str, path: Path, log_path: Path) -> ComposeRun:
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                self._cmd(project, path, "up", "--detach", "--remove-orphans"),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
            )
        return ComposeRun(proc, log_path)

    def down(self, project: str, path: Path, timeout: int = 10) -> None:
        args = ("down", "--volumes", "--remove-orphans", "--timeout", str(timeout))
        proc = subprocess.run(self._cmd(project, path, *args), capture_output=True, text=True, env=self.env)
        if proc.returncode != 0 and "No such" not in proc.stderr:
            last = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
            raise EngineError(f"`{self.describe()} down` failed: {last[0]}")

    def logs(self, project: str, path: Path, services: Sequence[str], tail: int = 0, follow: bool = False) -> int:
        """Stream the services' logs to this terminal; returns compose's exit code."""
        args = ["logs", "--no-color"]
        if tail:
            args += ["--tail", str(tail)]
        if follow:
            args.append("--follow")
        try:
            return subprocess.run(self._cmd(project, path, *args, *services), env=self.env).returncode
        except KeyboardInterrupt:
            return 130


class Engine:
    """A Docker engine reached through a BuildKit-capable client."""

    def __init__(self, client: Client) -> None:
        self.client = client

    @classmethod
    def connect(cls) -> Engine:
        clients = find_clients()
        if not clients:
            raise EngineError("no docker client found", fix="install Docker (`invoke doctor --fix` on Debian/Ubuntu)")
        usable = [c for c in clients if c.buildkit]
        if not usable:
            raise EngineError(
                f"docker {clients[0].version} at {clients[0].path} cannot run BuildKit builds (no buildx plugin)",
                fix="install the docker-buildx plugin, or Debian's docker.io client",
            )
        engine = cls(usable[0])
        engine.server_version()  # fails early, with the fix, when the daemon is down
        return engine

    @classmethod
    def for_running(cls) -> Engine:
        """An engine that only runs containers (`invoke shell`): the first docker client on
        PATH, without the version probes `connect` makes (each one starts the CLI, which
        `invoke shell`'s start-up cannot afford). The first call finds a daemon that is down."""
        path = next(docker_binaries(), None)
        if not path:
            raise EngineError("no docker client found", fix="install Docker (`invoke doctor --fix` on Debian/Ubuntu)")
        return cls(Client(path, version="", buildx=False))

    # --- plumbing ---------------------------------------------------------------------

    def _cmd(self, *args: str) -> list[str]:
        return [self.client.path, *args]

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        if not self.client.buildx:
            env["DOCKER_BUILDKIT"] = "1"
        return env

    def run_cli(self, *args: str, check: bool = True, input: bytes | None = None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(self._cmd(*args), capture_output=True, text=input is None, input=input, env=self._env())
        if check and proc.returncode != 0:
            stderr = proc.stderr if isinstance(proc.stderr, str) else proc.stderr.decode(errors="replace")
            raise self.failure(args, stderr)
        return proc

    @staticmethod
    def failure(args: Sequence[str], stderr: str) -> EngineError:
        """The one-line error for a failed CLI call: the daemon being down gets its fix."""
        if "Cannot connect to the Docker daemon" in stderr or "Is the docker daemon running" in stderr:
            return EngineError("the Docker daemon is not reachable", fix=DAEMON_FIX)
        if "permission denied while trying to connect to the Docker daemon" in stderr:
            return EngineError("no permission to use the Docker daemon", fix=PERMISSION_FIX)
        lines = [line for line in stderr.strip().splitlines() if line.strip() and not line.startswith("Run 'docker")]
        return EngineError(f"`docker {' '.join(args[:2])}` failed: {(lines or ['(no output)'])[-1]}")

    # --- engine facts -----------------------------------------------------------------

    def server_version(self) -> str:
        proc = self.run_cli("version", "--format", "{{.Server.Version}}", check=False)
        version = proc.stdout.strip()
        if proc.returncode != 0 or not version:
            raise EngineError("the Docker daemon is not reachable", fix=DAEMON_FIX)
        return version

    def info(self) -> dict:
        return json.loads(self.run_cli("info", "--format", "{{json .}}").stdout)

    # --- images -----------------------------------------------------------------------

    def image_exists(self, ref: str) -> bool:
        return self.run_cli("image", "inspect", ref, check=False).returncode == 0

    def inspect_image(self, ref: str) -> dict | None:
        proc = self.run_cli("image", "inspect", ref, check=False)
        return json.loads(proc.stdout)[0] if proc.returncode == 0 else None

    def image_labels(self, ref: str) -> dict[str, str]:
        data = self.inspect_image(ref) or {}
        return (data.get("Config") or {}).get("Labels") or {}

    def images(self, label: str) -> list[dict]:
        proc = self.run_cli("images", "--filter", f"label={label}", "--format", "{{json .}}")
        return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]

    def history(self, ref: str) -> list[dict]:
        proc = self.run_cli("history", "--no-trunc", "--format", "{{json .}}", ref)
        return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]

    def tag(self, source: str, target: str) -> None:
        self.run_cli("tag", source, target)

    def remove_images(self, refs: Iterable[str]) -> None:
        refs = list(refs)
        if refs:
            self.run_cli("rmi", "--force", *refs, check=False)

    def pull(self, ref: str, timeout: float) -> bool:
        try:
            proc = subprocess.run(self._cmd("pull", "--quiet", ref), capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return proc.returncode == 0

    def import_tar(self, tar_stream, ref: str, changes: Sequence[str] = ()) -> None:
        args = ["import"]
        for change in changes:
            args += ["--change", change]
        proc = subprocess.run(self._cmd(*args, "-", ref), stdin=tar_stream, capture_output=True, text=True)
        if proc.returncode != 0:
            raise EngineError(f"`docker import` failed: {proc.stderr.strip()}")

    def build(
        self,
        *,
        dockerfile: Path,
        context: Path,
        tag: str,
        build_args: dict[str, str],
        labels: dict[str, str],
        build_env: dict[str, str] | None = None,
        secrets: dict[str, Path],
        no_cache: bool = False,
        on_line: Callable[[str], None] | None = None,
    ) -> None:
        """Build with BuildKit, streaming plain progress to `on_line`. On failure raise
        BuildError carrying the last lines of the log (the failing step)."""
        args = ["build", "--progress=plain", "-f", str(dockerfile), "-t", tag]
        if self.client.buildx:
            args = ["buildx", *args, "--load"]
        for key, value in sorted(build_args.items()):
            args += ["--build-arg", f"{key}={value}"]
        # Values that may carry credentials (proxies) are named here and read by the client
        # from its environment, so they never show in `ps` or /proc/*/cmdline.
        build_env = build_env or {}
        for key in sorted(build_env):
            args += ["--build-arg", key]
        for key, value in sorted(labels.items()):
            args += ["--label", f"{key}={value}"]
        for key, path in sorted(secrets.items()):
            args += ["--secret", f"id={key},src={path}"]
        if no_cache:
            args.append("--no-cache")
        tail: deque[str] = deque(maxlen=25)
        with subprocess.Popen(
            self._cmd(*args, str(context)),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**self._env(), **build_env},
            errors="replace",
        ) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip("\n")
                tail.append(line)
                if on_line:
                    on_line(line)
            returncode = proc.wait()
        if returncode != 0:
            text = "\n".join(tail)
            if "Cannot connect to the Docker daemon" in text:
                raise EngineError("the Docker daemon is not reachable", fix=DAEMON_FIX)
            raise BuildError(f"building {tag} failed", fix="see the failing step's output above", log_tail=text)

    # --- containers -------------------------------------------------------------------

    def run(self, image: str, command: Sequence[str], *, options: Sequence[str] = (), timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        """Run a throw-away container and capture its output. It is named, so that one that
        outlives `timeout` is removed too, never left running."""
        name = f"mlsyskit-run-{uuid.uuid4().hex[:12]}"
        try:
            return subprocess.run(
                self._cmd("run", "--rm", "--name", name, *options, image, *command),
                capture_output=True, text=True, timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            self.remove_containers([name])
            raise KitError(f"`{' '.join(command)[:60]}` in {image} ran past {timeout:.0f}s; its container was removed") from None

    def containers(self, label: str, all: bool = True) -> list[dict]:
        args = ["ps", "--filter", f"label={label}", "--format", "{{json .}}"]
        if all:
            args.insert(1, "--all")
        return [json.loads(line) for line in self.run_cli(*args).stdout.splitlines() if line.strip()]

    def remove_containers(self, ids: Iterable[str]) -> None:
        ids = list(ids)
        if ids:
            self.run_cli("rm", "--force", "--volumes", *ids, check=False)

    # --- compose projects (the stacks) ---------------------------------------------------------

    def compose(self) -> Compose:
        cli = find_compose()
        if cli is None:
            raise EngineError("no usable compose found", fix=COMPOSE_FIX)
        return Compose(cli, self._env())

    def project_containers(self, project: str) -> list[dict]:
        """Every container of a compose project, running or not, as `docker inspect` gives it."""
        label = f"label=com.docker.compose.project={project}"
        ids = self.run_cli("ps", "--all", "--quiet", "--no-trunc", "--filter", label).stdout.split()
        if not ids:
            return []
        proc = self.run_cli("container", "inspect", *ids, check=False)  # one may vanish meanwhile
        return json.loads(proc.stdout or "[]")

    def project_resources(self, project: str) -> dict[str, list[str]]:
        label = f"label=com.docker.compose.project={project}"
        return {
            "containers": self.run_cli("ps", "--all", "--quiet", "--filter", label).stdout.split(),
            "networks": self.run_cli("network", "ls", "--quiet", "--filter", label).stdout.split(),
            "volumes": self.run_cli("volume", "ls", "--quiet", "--filter", label).stdout.split(),
        }

    def remove_project_resources(self, project: str) -> None:
        found = self.project_resources(project)
        if found["containers"]:
            self.run_cli("rm", "--force", "--volumes", *found["containers"], check=False)
        if found["networks"]:
            self.run_cli("network", "rm", *found["networks"], check=False)
        if found["volumes"]:
            self.run_cli("volume", "rm", "--force", *found["volumes"], check=False)

    def container_logs(self, container: str, tail: int = 30) -> str:
        """The container's last lines, its stdout and stderr interleaved as written."""
        proc = subprocess.run(
            self._cmd("logs", "--tail", str(tail), container), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
        )
        return proc.stdout or ""

    def exec_in(self, container: str, command: Sequence[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self._cmd("exec", container, *command), capture_output=True, text=True, timeout=timeout)

    # --- interactive containers (`invoke shell`) -------------------------------------------

    def _inspect(self, kind: str, ref: str) -> dict | None:
        """`docker KIND inspect REF`, or None when there is no such object; a daemon that
        is down raises (with the fix) instead of reading as "not there"."""
        args = (kind, "inspect", ref)
        proc = self.run_cli(*args, check=False)
        if proc.returncode == 0:
            return json.loads(proc.stdout)[0]
        if "No such" in proc.stderr:
            return None
        raise self.failure(args, proc.stderr)

    def find_image(self, ref: str) -> dict | None:
        """The image's inspect data, or None when it is not built (see `_inspect`)."""
        return self._inspect("image", ref)

    def ulimit_allowed(self, image: str, ulimit: str) -> bool:
        """Whether this engine starts a container with `--ulimit <ulimit>`: some hosts forbid
        raising memlock even for root, and the container then fails to start."""
        args = ("run", "--rm", "--network", "none", "--ulimit", ulimit, "--entrypoint", "true", image)
        proc = self.run_cli(*args, check=False)
        if proc.returncode == 0:
            return True
        if "rlimit" in proc.stderr:
            return False
        raise self.failure(args, proc.stderr)

    def container(self, name: str) -> dict | None:
        """A container's inspect data, or None when there is none of that name."""
        return self._inspect("container", name)

    def inspect_containers(self, ids: Sequence[str]) -> list[dict]:
        return json.loads(self.run_cli("container", "inspect", *ids).stdout) if ids else []

    def start_container(self, name: str) -> None:
        self.run_cli("start", name)

    def run_detached(self, args: Sequence[str], env: dict[str, str]) -> str:
        """`docker run -d ARGS` with `env` added to the client's environment (values passed
        by name with `-e NAME` stay out of argv); returns the container ID."""
        proc = subprocess.run(self._cmd("run", "-d", *args), capture_output=True, text=True, env={**self._env(), **env})
        if proc.returncode != 0:
            raise self.failure(("run", "-d"), proc.stderr)
        return proc.stdout.strip()

    def exec_replace(self, args: Sequence[str], env: dict[str, str]) -> NoReturn:
        """Become `docker ARGS`: the terminal, signals and the exit code are docker's own,
        and no Python process waits in between."""
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(self.client.path, [self.client.path, *args], {**os.environ, **env})

    # --- attached runs (`invoke smoke`) ------------------------------------------------------

    def run_attached(
        self, args: Sequence[str], env: dict[str, str], *, timeout: float, on_line: Callable[[str], None]
    ) -> tuple[int | None, bool]:
        """`docker ARGS` (a `run` with a --name) as a child: stdin closed, each output line
        passed to `on_line`. Returns (exit code, timed out); at the time limit, or on
        Ctrl-C (re-raised), the client is stopped and the caller removes the container by
        name: stopping the client alone would leave the container running."""
        proc = subprocess.Popen(
            self._cmd(*args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            env={**self._env(), **env},
        )
        assert proc.stdout is not None

        def pump() -> None:
            for line in proc.stdout:  # type: ignore[union-attr]
                on_line(line.rstrip("\n"))

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None, True
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            reader.join(timeout=5)
            proc.stdout.close()
        return proc.returncode, False

    def copy_from(self, container: str, source: str, dest: Path) -> bool:
        """`docker cp CONTAINER:SOURCE DEST` (also from a stopped container); False when
        there is no such file or container."""
        return self.run_cli("cp", f"{container}:{source}", str(dest), check=False).returncode == 0
