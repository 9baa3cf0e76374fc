"""Compose projects (the stacks): `compose up/down/logs/config` through the compose CLI with
argv lists; a project's containers, networks and volumes found and removed by label
through the Docker API, so `down` clears whatever has the label even when the file is gone."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from mlsyskit.engine import api
from mlsyskit.engine.clients import COMPOSE_FIX, ComposeCli, find_compose
from mlsyskit.engine.containers import ContainersPart
from mlsyskit.engine.records import COMPOSE_PROJECT, ContainerInfo
from mlsyskit.errors import EngineError, KitError


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


class ComposePart(ContainersPart):
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

    def project_containers(self, project: str) -> list[ContainerInfo]:
        """Every container of a compose project, running or not."""
        return self.containers(f"{COMPOSE_PROJECT}={project}")

    def project_resources(self, project: str) -> dict[str, list[str]]:
        filters = {"label": f"{COMPOSE_PROJECT}={project}"}
        with api.errors("docker ps"):
            return {
                "containers": [c["Id"] for c in self.api.containers(all=True, quiet=True, filters=filters)],
                "networks": [n["Id"] for n in self.api.networks(filters=filters)],
                "volumes": [v["Name"] for v in self.api.volumes(filters=filters).get("Volumes") or []],
            }

    def remove_project_resources(self, project: str) -> None:
        found = self.project_resources(project)
        self.remove_containers(found["containers"])
        for remove, names in ((self.api.remove_network, found["networks"]), (lambda v: self.api.remove_volume(v, force=True), found["volumes"])):
            for name in names:
                try:
                    with api.errors("docker network/volume rm", lookup=True):
                        remove(name)
                except EngineError:
                    pass  # what is still there is reported by ComposeProject.down
                except Exception as exc:
                    if not api.not_found(exc):
                        raise


class ComposeProject:
    """One compose project (a stack) on this host: its rendered file, containers, logs and
    `down`, which removes whatever has its label even when the file is gone."""

    def __init__(self, engine: ComposePart, project: str, path: Path | None) -> None:
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
