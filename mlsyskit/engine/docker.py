"""The one narrow layer over the Docker engine. Every engine call in the kit goes through
`Engine`, which drives the docker CLI (the Python SDK cannot run BuildKit builds). The
first client that can do a BuildKit build is chosen, so `RUN --mount` and `--secret`
always work (clients.py)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any, NoReturn

from mlsyskit.engine.clients import (
    COMPOSE_FIX,
    DAEMON_FIX,
    PERMISSION_FIX,
    Client,
    ComposeCli,
    docker_binaries,
    find_clients,
    find_compose,
    pick_builder,
)
from mlsyskit.engine.emulation import foreign_platform
from mlsyskit.engine.records import COMPOSE_PROJECT, ContainerInfo, ImageInfo
from mlsyskit.engine.spec import ContainerSpec, DockerCall, run_call
from mlsyskit.errors import BuildError, EngineError, KitError

# a line of BuildKit's plain progress: its step number, and ERROR when that step failed
BUILD_STEP = re.compile(r"^#(\d+) (ERROR\b)?")


class ComposeRun:
    """`compose up -d` running in the background while the caller watches the containers."""

    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path) -> None:
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


@dataclass(frozen=True)
class CacheRecord:
    id: str
    description: str  # the build step that made it (the RUN line)
    in_use: bool


@dataclass(frozen=True)
class DaemonInfo:
    root_dir: str  # where images and containers live (the disk to watch)
    runtimes: tuple[str, ...]  # "runc", and "nvidia" where the container toolkit is set up


class Engine:
    """A Docker engine reached through a BuildKit-capable client."""

    def __init__(self, client: Client) -> None:
        self.client = client

    @classmethod
    def connect(cls) -> Engine:
        engine = cls(pick_builder(find_clients()))
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

    def _cli(self, *args: str, check: bool = True, input: bytes | None = None) -> subprocess.CompletedProcess[str]:
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
        proc = self._cli("version", "--format", "{{.Server.Version}}", check=False)
        version = proc.stdout.strip()
        if proc.returncode != 0 or not version:
            raise EngineError("the Docker daemon is not reachable", fix=DAEMON_FIX)
        return version

    def daemon(self) -> DaemonInfo:
        data = json.loads(self._cli("info", "--format", "{{json .}}").stdout)
        return DaemonInfo(root_dir=str(data.get("DockerRootDir") or ""), runtimes=tuple(sorted(data.get("Runtimes") or {})))

    # --- images -----------------------------------------------------------------------

    def image_exists(self, ref: str) -> bool:
        return self._cli("image", "inspect", ref, check=False).returncode == 0

    def image(self, ref: str) -> ImageInfo | None:
        """The image, or None when there is none of that name (a daemon that is down
        raises, with the fix, instead of reading as "not built"). Asked of the daemon's API
        directly where it listens on a local socket: `invoke shell` asks this on every start,
        and a docker CLI start costs ~20 ms of a `docker run` of ~300."""
        answer = self._api_get(f"/images/{ref}/json")
        if answer is not None and answer[0] in (200, 404):
            return ImageInfo.from_inspect(json.loads(answer[1])) if answer[0] == 200 else None
        data = self._inspect("image", ref)
        return ImageInfo.from_inspect(data) if data is not None else None

    def _api_get(self, path: str) -> tuple[int, bytes] | None:
        """(status, body) of a GET on the Docker API over the local Unix socket; None where
        the daemon is elsewhere (DOCKER_HOST tcp://, a docker context) or will not answer
        (no permission, down): the CLI then asks, and reports any failure with its fix."""
        host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        if not host.startswith("unix://") or os.environ.get("DOCKER_CONTEXT"):
            return None
        # The C module: `socket` itself spends ~7 ms building enums on import, a tenth of
        # what `./kit shell` may add to `docker run`.
        import _socket

        chunks = []
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            sock.settimeout(10)
            sock.connect(host.removeprefix("unix://"))
            sock.sendall(f"GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n".encode())
            while data := sock.recv(1 << 16):
                chunks.append(data)
        except OSError:
            return None
        finally:
            sock.close()
        head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
        try:
            return int(head.split()[1]), body
        except (IndexError, ValueError):
            return None

    def images(self, label: str) -> list[ImageInfo]:
        """Every image carrying the label (`key` or `key=value`), once each."""
        ids = self._cli("images", "--quiet", "--no-trunc", "--filter", f"label={label}").stdout.split()
        ids = list(dict.fromkeys(ids))
        if not ids:
            return []
        proc = self._cli("image", "inspect", *ids, check=False)  # one may vanish meanwhile
        return [ImageInfo.from_inspect(d) for d in json.loads(proc.stdout or "[]")]

    def history(self, ref: str) -> list[str]:
        """Each layer's recorded command and comment: what `docker history` keeps of a build."""
        proc = self._cli("history", "--no-trunc", "--format", "{{.CreatedBy}} {{.Comment}}", ref)
        return [line for line in proc.stdout.splitlines() if line.strip()]

    def image_files(self, ref: str) -> Iterator[bytes]:
        """The image's whole filesystem as a tar stream, in chunks (a container is created
        for the export and removed afterwards)."""
        container = self._cli("create", ref, "true").stdout.strip()
        try:
            with subprocess.Popen(self._cmd("export", container), stdout=subprocess.PIPE) as export:
                assert export.stdout is not None
                yield from iter(lambda: export.stdout.read(1 << 20), b"")  # type: ignore[union-attr]
        finally:
            self.remove_containers([container])

    def tag(self, source: str, target: str) -> None:
        self._cli("tag", source, target)

    def remove_images(self, refs: Iterable[str]) -> None:
        refs = list(refs)
        if refs:
            self._cli("rmi", "--force", *refs, check=False)

    def save(self, refs: Sequence[str]) -> Iterator[bytes]:
        """`docker save` of several images together (each layer once), as chunks of the archive."""
        command = self._cmd("save", *refs)
        with tempfile.TemporaryFile() as errors, subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, env=self._env()) as save:
            assert save.stdout is not None
            yield from iter(lambda: save.stdout.read(1 << 20), b"")  # type: ignore[union-attr]
            if save.wait() != 0:
                errors.seek(0)
                raise self.failure(("save",), errors.read().decode(errors="replace"))

    def load(self, chunks: Iterable[bytes]) -> list[str]:
        """`docker load` of an archive given in chunks; the image refs it says it loaded."""
        command = self._cmd("load")
        with (
            tempfile.TemporaryFile() as output,
            subprocess.Popen(command, stdin=subprocess.PIPE, stdout=output, stderr=subprocess.STDOUT, env=self._env()) as load,
        ):
            assert load.stdin is not None
            try:
                for chunk in chunks:
                    load.stdin.write(chunk)
                load.stdin.close()
            except BrokenPipeError:
                pass  # docker load stopped reading: its own message says why
            except BaseException:
                load.kill()
                raise
            returncode = load.wait()
            output.seek(0)
            text = output.read().decode(errors="replace")
        if returncode != 0:
            raise self.failure(("load",), text)
        return [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith(("Loaded image:", "Loaded image ID:"))]

    def pull(self, ref: str, timeout: float) -> bool:
        try:
            proc = subprocess.run(self._cmd("pull", "--quiet", ref), capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return proc.returncode == 0

    def import_tar(self, tar_stream: IO[bytes], ref: str, changes: Sequence[str] = ()) -> None:
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
        platform: str = "",
    ) -> None:
        """Build with BuildKit, streaming plain progress to `on_line`. On failure raise
        BuildError carrying the last lines of the log (the failing step). `platform`
        (`linux/arm64`) builds for another architecture, through qemu where it is not native."""
        args = ["build", "--progress=plain", "-f", str(dockerfile), "-t", tag]
        if platform:
            args += ["--platform", platform]
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
        # BuildKit's plain progress prefixes each line with its step ("#7 12.3 error: ..."), and
        # its closing summary on Debian's engine 20.10 repeats no output: keep each step's own
        # last lines, so that the error can show what the failing step said (uv's or apt's
        # message), not only that it failed.
        by_step: dict[str, deque[str]] = {}
        failed_step = ""
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
                if step := BUILD_STEP.match(line):
                    by_step.setdefault(step[1], deque(maxlen=20)).append(line)
                    if step[2] == "ERROR" and not failed_step:
                        failed_step = step[1]
                if on_line:
                    on_line(line)
            returncode = proc.wait()
        if returncode != 0:
            if "Cannot connect to the Docker daemon" in "\n".join(tail):
                raise EngineError("the Docker daemon is not reachable", fix=DAEMON_FIX)
            text = "\n".join(by_step[failed_step] if failed_step else tail)
            raise BuildError(f"building {tag} failed", fix="see the failing step's output above", log_tail=text)

    # --- containers -------------------------------------------------------------------

    def _with_platform(self, spec: ContainerSpec) -> ContainerSpec:
        """The spec with the platform of its image where that is another architecture than
        this host's: docker would run it under qemu anyway, and the spec then carries what
        such a container needs (emulation.py)."""
        if spec.platform:
            return spec
        info = self.image(spec.image)
        platform = foreign_platform(info.architecture) if info else ""
        return replace(spec, platform=platform) if platform else spec

    def run(self, spec: ContainerSpec, *, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        """A throw-away container of the spec, its output captured. It is named, so that one
        that outlives `timeout` is removed too, never left running."""
        name = spec.name or f"mlsyskit-run-{os.urandom(6).hex()}"
        call = run_call(replace(self._with_platform(spec), name=name, remove=True, interactive=False, tty=False))
        try:
            return subprocess.run(
                self._cmd(*call.args), capture_output=True, text=True, timeout=timeout, env={**self._env(), **call.env}
            )
        except subprocess.TimeoutExpired:
            self.remove_containers([name])
            raise KitError(f"`{' '.join(spec.command)[:60]}` in {spec.image} ran past {timeout:.0f}s; its container was removed") from None

    def containers(self, label: str) -> list[ContainerInfo]:
        """Every container carrying the label (`key` or `key=value`), running or not."""
        ids = self._cli("ps", "--all", "--quiet", "--no-trunc", "--filter", f"label={label}").stdout.split()
        return self._containers(ids)

    def _containers(self, ids: Sequence[str]) -> list[ContainerInfo]:
        if not ids:
            return []
        proc = self._cli("container", "inspect", *ids, check=False)  # one may vanish meanwhile
        return [ContainerInfo.from_inspect(d) for d in json.loads(proc.stdout or "[]")]

    def container_info(self, name: str) -> ContainerInfo | None:
        """The container of that name or ID, or None when there is none."""
        data = self._inspect("container", name)
        return ContainerInfo.from_inspect(data) if data is not None else None

    def start_container(self, name: str) -> None:
        self._cli("start", name)

    def stop_container(self, name: str, timeout: int = 10) -> None:
        self._cli("stop", "--time", str(timeout), name)

    def published_port(self, container: str, private: str) -> int | None:
        """The host port docker published a container port on (`80/tcp`), or None."""
        proc = self._cli("port", container, private, check=False)
        lines = proc.stdout.strip().splitlines()
        return int(lines[0].rsplit(":", 1)[1]) if proc.returncode == 0 and lines else None

    def remove_containers(self, ids: Iterable[str]) -> None:
        ids = list(ids)
        if ids:
            self._cli("rm", "--force", "--volumes", *ids, check=False)

    # --- compose projects (the stacks) ---------------------------------------------------------

    def compose(self) -> Compose:
        cli = find_compose()
        if cli is None:
            raise EngineError("no usable compose found", fix=COMPOSE_FIX)
        return Compose(cli, self._env())

    def project(self, project: str, path: Path | None = None) -> ComposeProject:
        """A compose project to look at or take down (`compose_project` to own one)."""
        return ComposeProject(self, project, path)

    @contextmanager
    def compose_project(self, project: str, path: Path | None, *, keep: bool = False) -> Iterator[ComposeProject]:
        """A compose project (one stack on this host) for the block. It is taken down when
        the block ends, however it ends; with `keep`, only on Ctrl-C or an unexpected error:
        a stack that is up stays up, and one whose service failed stays for its logs (the
        caller's KitError says `invoke down`)."""
        owned = ComposeProject(self, project, path)
        try:
            yield owned
        except KitError:
            if not keep:
                owned.down()
            raise
        except BaseException:
            owned.down()
            raise
        if not keep:
            owned.down()

    def prune_build_cache(self, *, cache_mounts_only: bool = False) -> None:
        """Empty BuildKit's cache (all of it: it cannot tell which records are the kit's), or
        only the cache mounts (uv, pip, apt downloads)."""
        args = ["builder", "prune", "--force"]
        if cache_mounts_only:
            args += ["--filter", "type=exec.cachemount"]
        self._cli(*args, check=False)

    def build_cache_records(self) -> list[CacheRecord]:
        """BuildKit's cache records (`docker system df -v`)."""
        rows = json.loads(self._cli("system", "df", "-v", "--format", "{{json .BuildCache}}").stdout or "[]") or []
        return [CacheRecord(id=r.get("ID", ""), description=r.get("Description", ""), in_use=r.get("InUse") == "true") for r in rows]

    def remove_build_cache_record(self, record: str) -> None:
        self._cli("builder", "prune", "--force", "--filter", f"id={record}", check=False)

    def project_containers(self, project: str) -> list[ContainerInfo]:
        """Every container of a compose project, running or not."""
        return self.containers(f"{COMPOSE_PROJECT}={project}")

    def project_resources(self, project: str) -> dict[str, list[str]]:
        label = f"label={COMPOSE_PROJECT}={project}"
        return {
            "containers": self._cli("ps", "--all", "--quiet", "--filter", label).stdout.split(),
            "networks": self._cli("network", "ls", "--quiet", "--filter", label).stdout.split(),
            "volumes": self._cli("volume", "ls", "--quiet", "--filter", label).stdout.split(),
        }

    def remove_project_resources(self, project: str) -> None:
        found = self.project_resources(project)
        if found["containers"]:
            self._cli("rm", "--force", "--volumes", *found["containers"], check=False)
        if found["networks"]:
            self._cli("network", "rm", *found["networks"], check=False)
        if found["volumes"]:
            self._cli("volume", "rm", "--force", *found["volumes"], check=False)

    def container_logs(self, container: str, tail: int = 30) -> str:
        """The container's last lines, its stdout and stderr interleaved as written."""
        proc = subprocess.run(
            self._cmd("logs", "--tail", str(tail), container), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
        )
        return proc.stdout or ""

    def exec_in(self, container: str, command: Sequence[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self._cmd("exec", container, *command), capture_output=True, text=True, timeout=timeout)

    # --- interactive containers (`invoke shell`) -------------------------------------------

    def _inspect(self, kind: str, ref: str) -> dict[str, Any] | None:
        """`docker KIND inspect REF`, or None when there is no such object; a daemon that
        is down raises (with the fix) instead of reading as "not there"."""
        args = (kind, "inspect", ref)
        proc = self._cli(*args, check=False)
        if proc.returncode == 0:
            found: dict[str, Any] = json.loads(proc.stdout)[0]
            return found
        if "No such" in proc.stderr:
            return None
        raise self.failure(args, proc.stderr)

    def ulimit_allowed(self, image: str, ulimit: str) -> bool:
        """Whether this engine starts a container with `--ulimit <ulimit>`: some hosts forbid
        raising memlock even for root, and the container then fails to start."""
        args = ("run", "--rm", "--network", "none", "--ulimit", ulimit, "--entrypoint", "true", image)
        proc = self._cli(*args, check=False)
        if proc.returncode == 0:
            return True
        if "rlimit" in proc.stderr:
            return False
        raise self.failure(args, proc.stderr)

    def start(self, spec: ContainerSpec) -> Container:
        """`docker run -d` of the spec (named: a generated name when it has none). A
        container that docker created but could not start (a port taken, a limit refused)
        is removed before the error is raised: nothing is left behind."""
        if not spec.name:
            spec = replace(spec, name=f"mlsyskit-{os.urandom(6).hex()}")
        call = run_call(replace(self._with_platform(spec), remove=False, interactive=False, tty=False), detach=True)
        proc = subprocess.run(self._cmd(*call.args), capture_output=True, text=True, env={**self._env(), **call.env})
        if proc.returncode != 0:
            error = self.failure(("run", "-d"), proc.stderr)
            if NAME_IN_USE not in proc.stderr:  # another's container of that name is not ours
                self.remove_containers([spec.name])
            raise error
        return Container(self, spec.name, proc.stdout.strip())

    @contextmanager
    def container(self, spec: ContainerSpec, *, keep: bool = False) -> Iterator[Container]:
        """A started container for the block; removed when the block ends, however it
        ends (an error, Ctrl-C). With `keep`, it stays when the block ends normally."""
        container = self.start(spec)
        try:
            yield container
        except BaseException:
            container.remove()
            raise
        if not keep:
            container.remove()

    def become(self, call: DockerCall) -> NoReturn:
        """Become `docker ARGS`: the terminal, signals and the exit code are docker's own,
        and no Python process waits in between."""
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(self.client.path, [self.client.path, *call.args], {**os.environ, **call.env})

    # --- attached runs (`invoke smoke`) ------------------------------------------------------

    def stream(
        self, args: Sequence[str], env: dict[str, str], *, timeout: float, on_line: Callable[[str], None]
    ) -> tuple[int | None, bool]:
        """`docker ARGS` as a child: stdin closed, each output line passed to `on_line`.
        Returns (exit code, timed out); at the time limit, or on Ctrl-C (re-raised), the
        client is stopped (what it started is the caller's to remove)."""
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

        import threading  # only attached runs stream (smoke), not `invoke shell`

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
        return self._cli("cp", f"{container}:{source}", str(dest), check=False).returncode == 0


#: docker's refusal of a second container of the same name. A port that is taken also says
#: "already in use" ("bind: address already in use"): that container is the caller's own.
NAME_IN_USE = "is already in use by container"


@dataclass
class Container:
    """A container the kit started (`Engine.start`, `Engine.container`)."""

    engine: Engine
    name: str
    id: str

    def info(self) -> ContainerInfo | None:
        return self.engine.container_info(self.name)

    def exec(self, command: Sequence[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.engine.exec_in(self.name, command, timeout=timeout)

    def logs(self, tail: int = 30) -> str:
        return self.engine.container_logs(self.name, tail=tail)

    def copy_from(self, source: str, dest: Path) -> bool:
        return self.engine.copy_from(self.name, source, dest)

    def follow(self, *, timeout: float, on_line: Callable[[str], None]) -> tuple[int | None, bool]:
        """Pass each output line to `on_line` until the container ends; (its exit code,
        False), or (None, True) when it outlives `timeout` (the caller's block removes it)."""
        returncode, timed_out = self.engine.stream(("logs", "--follow", self.name), {}, timeout=timeout, on_line=on_line)
        if timed_out:
            return None, True
        info = self.info()
        if info is None or info.running:
            return returncode if returncode else None, False
        return info.exit_code, False

    def remove(self) -> None:
        self.engine.remove_containers([self.name])


class ComposeProject:
    """One compose project (a stack) on this host: its rendered file, containers, logs and
    `down`, which removes whatever has its label even when the file is gone."""

    def __init__(self, engine: Engine, project: str, path: Path | None) -> None:
        self.engine, self.project, self.path = engine, project, path

    def start(self, log_path: Path) -> ComposeRun:
        assert self.path is not None
        return self.engine.compose().start(self.project, self.path, log_path)

    def containers(self) -> list[ContainerInfo]:
        return self.engine.project_containers(self.project)

    def service_logs(self, service: str, lines: int) -> str:
        found = [c for c in self.containers() if c.service == service]
        if not found:
            return "(no container)"
        return self.engine.container_logs(found[0].id, tail=lines).rstrip() or "(no output)"

    def resources(self) -> dict[str, list[str]]:
        return self.engine.project_resources(self.project)

    def down(self) -> dict[str, list[str]]:
        """Stop and remove its containers, networks and volumes; what was there before.
        Raises when something is still there afterwards."""
        before = self.resources()
        if self.path is not None and self.path.is_file():
            self.engine.compose().down(self.project, self.path)
        self.engine.remove_project_resources(self.project)  # whatever compose left (or never knew)
        after = self.resources()
        if any(after.values()):
            left = ", ".join(f"{len(v)} {k}" for k, v in after.items() if v)
            raise EngineError(f"{self.project}: {left} still there after `down`", fix="remove them with `docker rm -f` / `docker network rm`")
        return before
