"""The kit's configuration: kit.toml, overlaid by kit.local.toml (or $MLSYSKIT_CONFIG),
overlaid by the environment for proxies. One frozen object, read once, passed down."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlsyskit import REPO_ROOT
from mlsyskit.data.toml import TomlError, read_toml
from mlsyskit.errors import UsageError

SYSTEM_CA_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")
ROOTFS_MODES = ("auto", "registry", "bootstrap")


@dataclass(frozen=True, kw_only=True)
class Config:
    """kit.toml's settings (network, build, bundles), the environment's proxies over them."""

    pypi_index: str = ""
    apt_mirror: str = ""
    hf_endpoint: str = ""
    ca_bundle: str = ""  # resolved path, or "" for none
    http_proxy: str = ""
    https_proxy: str = ""
    no_proxy: str = ""
    base: str = "pypi"
    rootfs: str = "auto"
    python: str = "system"
    uv_version: str = "0.13.9"
    trusted_key: str = ""  # bundles.trusted_key: set, every `invoke load` needs a bundle signed by it
    # Proxy variables for builds (as Docker's predefined proxy args, which stay out of
    # `docker history`) and containers (at run time); derived once, a field to read.
    proxy: Mapping[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        env = {}
        for key in ("http_proxy", "https_proxy", "no_proxy"):
            value = getattr(self, key)
            if value:
                env[key.upper()] = env[key] = value
        object.__setattr__(self, "proxy", env)


_NETWORK = {"pypi_index", "apt_mirror", "hf_endpoint", "ca_bundle", "http_proxy", "https_proxy", "no_proxy"}
_BUILD = {"base", "rootfs", "python", "uv_version"}
_BUNDLES = {"trusted_key"}


def _read(path: Path) -> dict[str, Any]:
    try:
        data = read_toml(path)
    except TomlError as exc:
        raise UsageError(f"{path}: not valid TOML ({exc})") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the config file ({exc.strerror})") from None
    merged: dict[str, Any] = {}
    for table, allowed in (("network", _NETWORK), ("build", _BUILD), ("bundles", _BUNDLES)):
        section = data.get(table, {})
        if not isinstance(section, dict):
            raise UsageError(f"{path}: '{table}' must be a table ([{table}])")
        for key, value in section.items():
            if key not in allowed:
                raise UsageError(f"{path}: unknown field '{table}.{key}'", fix=f"allowed: {', '.join(sorted(allowed))}")
            if not isinstance(value, str):
                raise UsageError(f"{path}: field '{table}.{key}' must be a string")
            merged[key] = value
    unknown = sorted(set(data) - {"network", "build", "bundles"})
    if unknown:
        raise UsageError(f"{path}: unknown table '[{unknown[0]}]'", fix="use [network], [build] and [bundles]")
    return merged


def _resolve_ca(value: str) -> str:
    if value == "auto":
        return next((p for p in SYSTEM_CA_BUNDLES if Path(p).is_file()), "")
    if value and not Path(value).is_file():
        raise UsageError(f"network.ca_bundle: '{value}' is not a file", fix="give a PEM bundle's path, 'auto' or ''")
    return value


def load_config(root: Path = REPO_ROOT, environ: dict[str, str] | None = None) -> Config:
    environ = dict(os.environ) if environ is None else environ
    values = _read(root / "kit.toml") if (root / "kit.toml").exists() else {}
    override = environ.get("MLSYSKIT_CONFIG") or str(root / "kit.local.toml")
    if Path(override).exists():
        values.update({k: v for k, v in _read(Path(override)).items() if v})
    elif environ.get("MLSYSKIT_CONFIG"):
        raise UsageError(f"MLSYSKIT_CONFIG={override}: file not found")
    for key in ("http_proxy", "https_proxy", "no_proxy"):
        if not values.get(key):
            values[key] = environ.get(key.upper()) or environ.get(key) or ""
    values["ca_bundle"] = _resolve_ca(values.get("ca_bundle", "auto"))
    if values.get("trusted_key"):
        key_path = root / Path(values["trusted_key"]).expanduser()  # relative: to the checkout
        if not key_path.is_file():
            fix = "give the path of the public key bundles must be signed with, or ''"
            raise UsageError(f"bundles.trusted_key: '{values['trusted_key']}' is not a file", fix=fix)
        values["trusted_key"] = str(key_path)
    if "@" in values.get("apt_mirror", "").split("//", 1)[-1].split("/", 1)[0]:
        # debootstrap writes the mirror into the root filesystem's sources.list and so into
        # every image: a user:password there would be a secret in a layer.
        raise UsageError(
            "network.apt_mirror carries credentials, which would land in every image's sources.list",
            fix="use a mirror that needs none (or a proxy that adds them)",
        )
    if values.get("rootfs", "auto") not in ROOTFS_MODES:
        raise UsageError(f"build.rootfs: '{values['rootfs']}' is not one of {', '.join(ROOTFS_MODES)}")
    return Config(**values)


def bootstrap_env(config: Config) -> dict[str, str]:
    """What `./kit` sets before it installs the kit's own environment (pip installs uv, uv
    installs the lock), so that kit.toml's mirror, CA bundle and proxies apply there too."""
    env = dict(config.proxy)
    if config.pypi_index:
        env["PIP_INDEX_URL"] = env["KIT_PYPI_INDEX"] = config.pypi_index
    if config.ca_bundle:
        env["PIP_CERT"] = env["SSL_CERT_FILE"] = config.ca_bundle
    return env


def main(argv: list[str]) -> int:
    """`python3 -m mlsyskit.data.config --shell`: bootstrap_env() as `export` lines (stdlib only,
    so it runs before the kit's environment exists); a bad config is one line, exit 2."""
    import shlex
    import sys

    if argv != ["--shell"]:
        print("usage: python3 -m mlsyskit.data.config --shell", file=sys.stderr)
        return 2
    try:
        env = bootstrap_env(load_config())
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    for key, value in sorted(env.items()):
        print(f"export {key}={shlex.quote(value)}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
