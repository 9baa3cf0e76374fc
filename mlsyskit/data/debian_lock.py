"""images/debian-lock.toml: the exact Debian packages each layer holds.

Python packages are locked by uv; this is the same for the OS. For each base flavour it
records the root filesystem debootstrap made, and for the base layer and every topic with
apt packages: what the files ask for (`asks`) and every package apt installed for it, with
its version (the whole closure, so nothing is left for the mirror to choose). Builds then
install exactly `name=version`; a mirror that no longer serves a locked version fails the
build with one line naming a snapshot mirror.

`invoke lock` records the versions from the built images (what apt really installed);
`invoke lock --check` fails when the files ask for other packages than the lock records.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mlsyskit.data.toml import TomlError, read_toml
from mlsyskit.errors import BuildError, UsageError

FILE = Path("images") / "debian-lock.toml"
SNAPSHOT = "https://snapshot.debian.org/archive/debian/{stamp}/"
MISSING_VERSION = re.compile(r"E: Version '([^']+)' for '([^']+)' was not found")


@dataclass(frozen=True)
class Entry:
    """One layer's entry in images/debian-lock.toml: what its files ask for and the exact packages that gave."""

    asks: tuple[str, ...]  # what the files ask for, sorted ("" for a root filesystem)
    packages: Mapping[str, str] = field(default_factory=dict)  # name -> version


@dataclass
class DebianLock:
    """images/debian-lock.toml: the exact Debian packages of every layer, by layer key."""

    path: Path
    recorded: str = ""  # UTC time of the last `invoke lock` that wrote it
    entries: dict[str, Entry] = field(default_factory=dict)  # "pypi/rootfs", "pypi/base", "pypi/topic/NAME"

    def pins(self, key: str, asks: tuple[str, ...]) -> tuple[str, ...]:
        """`name=version` for the whole recorded closure when the lock matches what is asked
        (sorted, so the build argument and the layer's hash are stable); else the plain asks."""
        entry = self.entries.get(key)
        if entry is None or entry.asks != tuple(sorted(asks)) or not entry.packages:
            return tuple(asks)
        return tuple(f"{name}={version}" for name, version in sorted(entry.packages.items()))

    def pin_all(self, asks: Mapping[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        """`pins` for each layer key and what its files ask for."""
        return {key: self.pins(key, packages) for key, packages in asks.items()}

    def snapshot_url(self) -> str:
        return SNAPSHOT.format(stamp=self.recorded or "YYYYMMDDTHHMMSSZ")


def load(root: Path) -> DebianLock:
    path = root / FILE
    if not path.is_file():
        return DebianLock(path)
    try:
        data = read_toml(path)
    except TomlError as exc:
        raise UsageError(f"{FILE}: cannot read ({exc})", fix="run `invoke lock` to write it again") from None
    entries = {}
    for key, table in data.get("layer", {}).items():
        entries[key] = Entry(asks=tuple(table.get("asks", ())), packages=dict(table.get("packages", {})))
    return DebianLock(path, recorded=str(data.get("recorded", "")), entries=entries)


def dump(lock: DebianLock) -> str:
    lines = [
        "# The exact Debian packages of every layer, written by `invoke lock` from the built images.",
        "# Builds install exactly these (`name=version`); `invoke lock --check` fails when the files",
        "# ask for other packages. Do not edit by hand.",
        f'recorded = "{lock.recorded}"',
        "",
    ]
    for key in sorted(lock.entries):
        entry = lock.entries[key]
        lines.append(f'[layer."{key}"]')
        lines.append("asks = [" + ", ".join(f'"{a}"' for a in entry.asks) + "]")
        lines.append(f'[layer."{key}".packages]')
        lines += [f'"{name}" = "{version}"' for name, version in sorted(entry.packages.items())]
        lines.append("")
    return "\n".join(lines)


def closure(before: Mapping[str, str], after: Mapping[str, str]) -> dict[str, str]:
    """What a layer's apt install added or changed: packages new in `after`, or at another version."""
    return {name: version for name, version in after.items() if before.get(name) != version}


def now_stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def read_dpkg_status(text: str) -> dict[str, str]:
    """{package: version} of the installed packages in a dpkg status file."""
    found = {}
    for stanza in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and not line.startswith(" "))
        if fields.get("Status", "").endswith(" installed") and "Package" in fields:
            found[fields["Package"]] = fields.get("Version", "")
    return found


def differences(locked: Mapping[str, str], found: Mapping[str, str]) -> list[str]:
    """`name: locked -> found` for every package that is not as locked (first few matter)."""
    names = sorted(set(locked) | set(found))
    return [f"{n}: {locked.get(n, '(none)')} -> {found.get(n, '(none)')}" for n in names if locked.get(n) != found.get(n)]


def missing_version_error(log_tail: str, lock: DebianLock, mirror: str) -> BuildError | None:
    """The one-line error for apt refusing a locked version the mirror no longer serves."""
    match = MISSING_VERSION.search(log_tail)
    if not match:
        return None
    version, name = match.groups()
    return BuildError(
        f"the apt mirror ({mirror}) no longer serves {name}={version}, which {FILE} records",
        fix=f"set network.apt_mirror in kit.toml to a snapshot of the day it was recorded ({lock.snapshot_url()}), "
        "or run `invoke lock` after a build to take today's versions",
    )
