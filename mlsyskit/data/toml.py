"""Every TOML file the kit reads (topics, bases, kit.toml, the Debian lock, uv locks), read
one way: parsed once per content, then loaded from a JSON copy of the parsed tables.

tomllib is written in Python: the dozen files `./kit shell` reads on every start (the catalog,
kit.toml, the Debian lock for the image's freshness) took ~6 ms to parse, with ~3 ms more to
import it, a sixth of the kit's own start-up. The copy is named by the text it was parsed
from (its length and two checksums, CRC-32 and Adler-32: zlib is loaded anyway, where
hashlib's OpenSSL takes 2 ms to load), so an edited file is parsed again; a copy that
cannot be read or decoded is parsed over. Tables holding TOML dates or times
(which JSON cannot carry) are never copied. The copies live in ~/.cache/mlsyskit/toml
($XDG_CACHE_HOME respected); where that cannot be written, every read parses."""

from __future__ import annotations

import contextlib
import json
import os
import zlib
from pathlib import Path
from typing import Any

from mlsyskit import kit_cache

KEEP = 512  # copies kept; beyond it the oldest go (an edit leaves one behind)


class TomlError(ValueError):
    """Text that is not valid TOML; the message is tomllib's (line and column)."""


def read_toml(path: Path) -> dict[str, Any]:
    """The file's tables (TOML is UTF-8). OSError (a missing file) and TomlError are the
    caller's to word."""
    return _parsed(path.read_bytes())


def loads(text: str) -> dict[str, Any]:
    return _parsed(text.encode())


def _parsed(raw: bytes) -> dict[str, Any]:
    copy = kit_cache() / "toml" / f"{len(raw):x}-{zlib.crc32(raw):08x}{zlib.adler32(raw):08x}.json"
    try:
        cached = json.loads(copy.read_bytes())
        if isinstance(cached, dict):
            return cached
    except (OSError, ValueError):
        pass
    import tomllib

    try:
        data = tomllib.loads(raw.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise TomlError(str(exc)) from None
    _keep(copy, data)
    return data


def _keep(copy: Path, data: dict[str, Any]) -> None:
    """Write the copy whole or not at all (a temporary name, then a rename), never failing
    the read: a cache that cannot be written only costs the parse."""
    try:
        text = json.dumps(data, separators=(",", ":"), allow_nan=True)
    except TypeError:  # a date or time: JSON has none
        return
    scratch = copy.with_name(f".{copy.name}.{os.getpid()}")
    try:
        copy.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        scratch.write_text(text)
        os.replace(scratch, copy)
        _prune(copy.parent)
    except OSError:
        with contextlib.suppress(OSError):  # never made, or no folder to make it in
            scratch.unlink()


def _prune(folder: Path) -> None:
    copies = list(folder.glob("*.json"))
    if len(copies) > KEEP:
        copies.sort(key=lambda p: p.stat().st_mtime)
        for old in copies[: len(copies) - KEEP]:
            old.unlink(missing_ok=True)
