"""Containers: those the kit makes from a `ContainerSpec` run through the docker CLI with
argv lists (the spec's one mapping, spec.py, shared with `invoke shell`, which becomes
`docker run` for its terminal); looking at them, their logs, files and removal go
through the Docker API (api.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NoReturn

from mlsyskit.engine import api
from mlsyskit.engine.emulation import foreign_platform
from mlsyskit.engine.images import ImagesPart
from mlsyskit.engine.records import ContainerInfo
from mlsyskit.engine.refs import container_ref
from mlsyskit.engine.spec import ContainerSpec, DockerCall, run_call
from mlsyskit.errors import KitError

#: docker's refusal of a second container of the same name. A port that is taken also says
#: "already in use" ("bind: address already in use"): that container is the caller's own.
NAME_IN_USE = "is already in use by container"


class ContainersPart(ImagesPart):  # a container's platform is its image's
    # --- looking at containers ------------------------------------------------------------

    def containers(self, label: str) -> list[ContainerInfo]:
        """Every container carrying the label (`key` or `key=value`), running or not."""
        if self.cli_lookups:
            ids = self._cli("ps", "--all", "--quiet", "--no-trunc", "--filter", f"label={label}").stdout.split()
            if not ids:
                return []
            proc = self._cli("container", "inspect", *ids, check=False)  # one may vanish meanwhile
            return [ContainerInfo.from_inspect(d) for d in json.loads(proc.stdout or "[]")]
        with api.errors("docker ps"):
            ids = [c["Id"] for c in self.api.containers(all=True, quiet=True, filters={"label": label})]
        found = [self.container_info(i) for i in ids]  # one may vanish meanwhile
        return [info for info in found if info is not None]

    def container_info(self, name: str) -> ContainerInfo | None:
        """The container of that name or ID, or None when there is none."""
        return self._lookup("container", container_ref(name), lambda r: self.api.inspect_container(r), ContainerInfo.from_inspect)

    def start_container(self, name: str) -> None:
        if self.cli_lookups:
            self._cli("start", container_ref(name))
            return
        with api.errors("docker start"):
            self.api.start(container_ref(name))

    def stop_container(self, name: str, timeout: int = 10) -> None:
        with api.errors("docker stop"):
            self.api.stop(container_ref(name), timeout=timeout)

    def published_port(self, container: str, private: str) -> int | None:
        """The host port docker published a container port on (`80/tcp`), or None."""
        try:
            with api.errors("docker port", lookup=True):
                bound = self.api.port(container_ref(container), private)
        except Exception as exc:
            if api.not_found(exc):
                return None
            raise
        return int(bound[0]["HostPort"]) if bound else None

    def remove_containers(self, ids: Iterable[str]) -> None:
        ids = [container_ref(i) for i in ids]
        if ids and self.cli_lookups:
            self._cli("rm", "--force", "--volumes", *ids, check=False)
            return
        for container in ids:
            self._remove_container(container)

    def container_logs(self, container: str, tail: int = 30) -> str:
        """The container's last lines, its stdout and stderr interleaved as written."""
        try:
            with api.errors("docker logs", lookup=True):
                data = self.api.logs(container_ref(container), stdout=True, stderr=True, tail=tail)
        except Exception as exc:
            if api.not_found(exc):
                return ""
            raise
        return bytes(data).decode(errors="replace")

    def exec_in(self, container: str, command: Sequence[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """`docker exec` of one command, its output captured (subprocess.TimeoutExpired past
        `timeout`, as a child process would)."""
        import requests.exceptions

        with api.errors("docker exec"):
            created = self.api.exec_create(container_ref(container), list(command), stdout=True, stderr=True)
            saved, self.api.timeout = self.api.timeout, timeout
            try:
                out, err = self.api.exec_start(created["Id"], demux=True)
            except requests.exceptions.ReadTimeout:
                raise subprocess.TimeoutExpired(list(command), timeout) from None
            finally:
                self.api.timeout = saved
            code = self.api.exec_inspect(created["Id"]).get("ExitCode")
        return subprocess.CompletedProcess(
            list(command), int(code if code is not None else -1), (out or b"").decode(errors="replace"), (err or b"").decode(errors="replace")
        )

    def copy_from(self, container: str, source: str, dest: Path) -> bool:
        """`docker cp CONTAINER:SOURCE DEST` of one regular file (also from a stopped
        container); False when there is no such file or container."""
        try:
            with api.errors("docker cp", lookup=True):
                chunks, _ = self.api.get_archive(container_ref(container), source)
                data = b"".join(chunks)
        except Exception as exc:
            if api.not_found(exc):
                return False
            raise
        import io
        import tarfile

        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
            member = archive.next()
            stream = archive.extractfile(member) if member is not None and member.isfile() else None
            if stream is None:
                return False
            target = dest / Path(source).name if dest.is_dir() else dest
            target.write_bytes(stream.read())
        return True

    # --- containers made from a spec (the CLI) ---------------------------------------------

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
            return subprocess.run(self._cmd(*call.args), capture_output=True, text=True, timeout=timeout, env={**self._env(), **call.env})
        except subprocess.TimeoutExpired:
            self.remove_containers([name])
            raise KitError(f"`{' '.join(spec.command)[:60]}` in {spec.image} ran past {timeout:.0f}s; its container was removed") from None

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

    def stream(self, args: Sequence[str], env: dict[str, str], *, timeout: float, on_line: Callable[[str], None]) -> tuple[int | None, bool]:
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


@dataclass
class Container:
    """A container the kit started (`Engine.start`, `Engine.container`)."""

    engine: ContainersPart
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
