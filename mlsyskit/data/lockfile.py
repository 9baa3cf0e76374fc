"""Reading uv.lock files: the versions an image must contain, and a hash of the lock."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from mlsyskit.data.toml import TomlError, read_toml
from mlsyskit.errors import UsageError


def read_packages(lock: Path) -> dict[str, tuple[str, ...]]:
    """{normalized name: versions} of every package in a uv lock. A universal lock may hold
    several versions of one package, one per Python range (numpy for 3.11 and for 3.12+):
    which one an image gets depends on its Python, see `expected_packages`. The virtual
    project, which is never installed, is left out."""
    try:
        data = read_toml(lock)
    except (FileNotFoundError, TomlError) as exc:
        raise UsageError(f"{lock}: cannot read lock ({exc})", fix="run `invoke lock`") from None
    packages: dict[str, tuple[str, ...]] = {}
    for package in data.get("package", []):
        source = package.get("source", {})
        if "virtual" in source or "editable" in source or "version" not in package:
            continue
        name = normalize(package["name"])
        packages[name] = (*packages.get(name, ()), package["version"])
    return packages


# Run inside an image to get the values PEP 508 markers are evaluated against.
ENVIRONMENT_SCRIPT = """
import json, os, platform, sys
v = sys.version_info
print(json.dumps({
    "implementation_name": sys.implementation.name,
    "implementation_version": platform.python_version(),
    "os_name": os.name,
    "platform_machine": platform.machine(),
    "platform_release": platform.release(),
    "platform_system": platform.system(),
    "platform_version": platform.version(),
    "python_full_version": platform.python_version(),
    "platform_python_implementation": platform.python_implementation(),
    "python_version": f"{v.major}.{v.minor}",
    "sys_platform": sys.platform,
}))
"""


def uv_binary() -> str:
    """The kit's own uv (pinned in its uv.lock), which resolves and exports every lock."""
    from uv import find_uv_bin

    return str(find_uv_bin())


def expected_packages(lock: Path, environment: dict[str, str]) -> dict[str, str]:
    """{name: version} that installing the lock must give in `environment` (the output
    of ENVIRONMENT_SCRIPT in the image): the lock exported by uv, markers evaluated."""
    from packaging.requirements import Requirement

    proc = subprocess.run(
        [
            uv_binary(),
            "export",
            "--frozen",
            "--no-hashes",
            "--no-header",
            "--no-annotate",
            "--no-emit-project",
            "--no-dev",
            "--format",
            "requirements.txt",
            "--project",
            str(lock.parent),
            "--quiet",
        ],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise UsageError(f"{lock}: cannot export the lock ({last})", fix="run `invoke lock`")
    expected = {}
    for line in proc.stdout.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "-")):
            continue
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate(environment):
            pins = [s.version for s in requirement.specifier if s.operator == "=="]
            # A URL or git requirement has no version pin (none of the kit's locks has one).
            expected[normalize(requirement.name)] = pins[0] if pins else ""
    return expected


def normalize(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def lock_sha256(lock: Path) -> str:
    return hashlib.sha256(lock.read_bytes()).hexdigest()


def key_versions(lock: Path, names: tuple[str, ...] | list[str]) -> dict[str, str]:
    """Key packages' locked versions, forks shown as `2.4.6|2.5.5`."""
    packages = read_packages(lock)
    return {name: "|".join(packages[normalize(name)]) for name in names if normalize(name) in packages}


def disagreements(framework_lock: Path, topic_lock: Path) -> list[tuple[str, str, str]]:
    """Packages both locks hold at different versions. A topic must agree with its framework,
    or the topic layer would reinstall (and duplicate) what the framework layer holds."""
    framework, topic = read_packages(framework_lock), read_packages(topic_lock)
    return [(name, "|".join(framework[name]), "|".join(topic[name])) for name in sorted(framework.keys() & topic.keys()) if framework[name] != topic[name]]
