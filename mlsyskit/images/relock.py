"""`invoke lock`: re-resolve every lock (stacks first, then topics) with the uv the kit
itself is locked to, and check that each topic agrees with its stack."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

from mlsyskit.data.catalog import Catalog, Topic
from mlsyskit.data.config import load_config
from mlsyskit.data.lockfile import disagreements, uv_binary
from mlsyskit.errors import LockError


def _uv_lock(folder: Path, check: bool) -> subprocess.CompletedProcess[str]:
    cmd = [uv_binary(), "lock", "--directory", str(folder)]
    if check:
        cmd.append("--check")
    return subprocess.run(cmd, capture_output=True, text=True, env=_lock_env())


def _lock_env() -> dict[str, str]:
    # Resolution never needs a managed Python download; kit.toml's mirror, CA bundle and
    # proxies apply to locking as they do to building.
    config = load_config()
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never", **config.proxy_env()}
    if config.pypi_index:
        env["UV_DEFAULT_INDEX"] = config.pypi_index
    if config.ca_bundle:
        env["SSL_CERT_FILE"] = config.ca_bundle
    return env


def lock(catalog: Catalog, topics: list[Topic], *, check: bool, log: Callable[[str], None] = print) -> None:
    stacks = sorted({t.stack for t in topics if t.stack})
    folders = [catalog.stacks[s].path for s in stacks] + [t.path for t in topics]
    stale = []
    for folder in folders:
        name = folder.relative_to(catalog.root)
        proc = _uv_lock(folder, check)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            if check:
                stale.append(str(name))
                log(f"stale  {name}/uv.lock: {last}")
                continue
            raise LockError(f"cannot resolve {name}: {last}", fix=f"edit {name}/pyproject.toml")
        log(f"{'fresh' if check else 'locked'}  {name}/uv.lock")
    for topic in topics:
        if not topic.stack:
            continue
        stack = catalog.stacks[topic.stack]
        for package, stack_version, topic_version in disagreements(stack.lock_path, topic.lock_path):
            stale.append(f"{topic.name}:{package}")
            log(f"drift  envs/{topic.name}: {package} {topic_version} but stack {stack.name} has {stack_version}")
    if stale:
        raise LockError(
            f"{len(stale)} lock(s) stale or drifting from their stack: {', '.join(stale)}",
            fix="run `invoke lock` (and pin the stack's version in the topic's pyproject.toml if it drifts)",
        )
