"""Reading uv.lock files: the versions an image must contain, and a hash of the lock."""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path

from .errors import UsageError


def read_packages(lock: Path) -> dict[str, str]:
    """{normalized name: version} of every package in a uv lock (the virtual project,
    which has no version and is never installed, is left out)."""
    try:
        data = tomllib.loads(lock.read_text())
    except (FileNotFoundError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"{lock}: cannot read lock ({exc})", fix="run `invoke lock`") from None
    packages = {}
    for package in data.get("package", []):
        source = package.get("source", {})
        if "virtual" in source or "editable" in source or "version" not in package:
            continue
        packages[normalize(package["name"])] = package["version"]
    return packages


def normalize(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def lock_sha256(lock: Path) -> str:
    return hashlib.sha256(lock.read_bytes()).hexdigest()


def key_versions(lock: Path, names: tuple[str, ...] | list[str]) -> dict[str, str]:
    packages = read_packages(lock)
    return {name: packages[normalize(name)] for name in names if normalize(name) in packages}


def disagreements(stack_lock: Path, topic_lock: Path) -> list[tuple[str, str, str]]:
    """Packages both locks hold at different versions. A topic must agree with its stack,
    or the topic layer would reinstall (and duplicate) what the stack layer holds."""
    stack, topic = read_packages(stack_lock), read_packages(topic_lock)
    return [(name, stack[name], topic[name]) for name in sorted(stack.keys() & topic.keys()) if stack[name] != topic[name]]
