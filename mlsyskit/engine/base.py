"""What every part of the engine shares: the docker CLI it runs (BuildKit builds, compose,
containers made from a spec) and the Docker API client (everything else), connected on
first use. Which one a call takes is the engine's choice, never its caller's."""

from __future__ import annotations

import functools
import os
import subprocess
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from mlsyskit.engine import api
from mlsyskit.engine.clients import DAEMON_FIX, PERMISSION_FIX, Client
from mlsyskit.errors import EngineError

Record = TypeVar("Record")


class EngineBase:
    def __init__(self, client: Client, *, cli_lookups: bool = False) -> None:
        self.client = client
        # `invoke shell`'s engine: its few lookups go through the docker CLI, which it runs
        # anyway, so that its start-up does not import the SDK (docker.py `for_running`).
        self.cli_lookups = cli_lookups
        self._api: Any = None

    @property
    def api(self) -> Any:
        """The SDK's `APIClient`, connected on first use."""
        if self._api is None:
            self._api = api.connect()
        return self._api

    # --- the CLI ------------------------------------------------------------------------

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

    def _inspect_cli(self, kind: str, ref: str) -> Callable[[], dict[str, Any] | None]:
        """`docker KIND inspect REF` (the shell's lookups), started now and read when the
        returned function is called: the CLI's start-up (~12 ms) runs beside the kit's own
        work. A thread reads the CLI's output as it comes, so the process is reaped even
        where the answer is never asked for (a command that stops with an error first).
        The call gives None when there is no such object; a daemon that is down raises
        (with the fix) instead of reading as "not there"."""
        args = (kind, "inspect", ref)  # checked refs: none starts with "-"
        proc = subprocess.Popen(self._cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self._env())
        reply: list[tuple[str, str]] = []
        reader = threading.Thread(target=lambda: reply.append(proc.communicate()), name=f"docker {kind} inspect", daemon=True)
        reader.start()

        def answer() -> dict[str, Any] | None:
            import json

            reader.join()
            if not reply:
                raise EngineError(f"`docker {kind} inspect` gave no answer")
            stdout, stderr = reply[0]
            if proc.returncode == 0:
                found: dict[str, Any] = json.loads(stdout)[0]
                return found
            if "No such" in stderr:
                return None
            raise self.failure(args, stderr)

        return answer

    def _lookup(self, kind: str, ref: str, from_api: Callable[[str], dict[str, Any]], record: Callable[[dict[str, Any]], Record]) -> Record | None:
        """One image or container by name or ID as a record, or None when there is none."""
        return self._lookup_soon(kind, ref, from_api, record)()

    def _lookup_soon(
        self, kind: str, ref: str, from_api: Callable[[str], dict[str, Any]], record: Callable[[dict[str, Any]], Record]
    ) -> Callable[[], Record | None]:
        """`_lookup` asked now, answered when the returned function is called (the same
        record on every call): through the CLI for the shell's engine (started at once, so
        the caller's work overlaps it), else the API (asked on the first call). A daemon
        that is down raises (with the fix) instead of reading as "not there"."""
        if self.cli_lookups:
            pending = self._inspect_cli(kind, ref)

            def answered() -> Record | None:
                data = pending()
                return None if data is None else record(data)

            return functools.cache(answered)

        def from_engine() -> Record | None:
            try:
                with api.errors(f"docker {kind} inspect", lookup=True):
                    return record(from_api(ref))
            except Exception as exc:
                if api.not_found(exc):
                    return None
                raise

        return functools.cache(from_engine)
