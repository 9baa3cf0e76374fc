"""BuildKit builds and BuildKit's cache, through the docker CLI with argv lists (the SDK
cannot run BuildKit builds): the first client that can is chosen (clients.py)."""

from __future__ import annotations

import json
import re
import subprocess
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mlsyskit.engine.base import EngineBase
from mlsyskit.engine.clients import DAEMON_FIX
from mlsyskit.errors import BuildError, EngineError

# a line of BuildKit's plain progress: its step number, and ERROR when that step failed
BUILD_STEP = re.compile(r"^#(\d+) (ERROR\b)?")


@dataclass(frozen=True)
class CacheRecord:
    """One entry of BuildKit's build cache, as `docker system df -v` lists it."""

    id: str
    description: str  # the build step that made it (the RUN line)
    in_use: bool


class BuildPart(EngineBase):
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
