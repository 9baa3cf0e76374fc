"""Typed reads of the kit's data files (topic.toml, bases.toml, the stacks' x-mlsyskit
tables), with errors that name the file and the field. Shared by catalog.py and stacks.py."""

from __future__ import annotations

import builtins
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mlsyskit import REPO_ROOT
from mlsyskit.errors import UsageError

ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")


def rel_path(path: Path) -> str:
    """`path` relative to the checkout where it is inside it: what error lines show."""
    try:
        return str(path.relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


class Fields:
    """One table of a data file. `prefix` is the table's dotted path, for messages."""

    def __init__(self, path: Path, table: Any, prefix: builtins.str = "") -> None:
        if not isinstance(table, dict):
            raise UsageError(f"{rel_path(path)}: field '{prefix.rstrip('.')}' must be a table")
        self.path, self.table, self.prefix = path, table, prefix

    def fail(self, key: builtins.str, expected: builtins.str) -> UsageError:
        return UsageError(f"{rel_path(self.path)}: field '{self.prefix}{key}' must be {expected}")

    def str(self, key: builtins.str, default: builtins.str | None = None, choices: Sequence[builtins.str] = ()) -> builtins.str:
        value = self.table.get(key, default)
        if not isinstance(value, builtins.str) or (default is None and not value):
            raise self.fail(key, "a non-empty string" if default is None else "a string")
        if choices and value not in choices:
            raise self.fail(key, f"one of {', '.join(choices)}")
        return value

    def int(self, key: builtins.str, default: builtins.int | None = None, minimum: builtins.int = 0) -> builtins.int:
        value = self.table.get(key, default)
        if not isinstance(value, builtins.int) or isinstance(value, builtins.bool) or value < minimum:
            raise self.fail(key, f"a whole number >= {minimum}")
        return value

    def bool(self, key: builtins.str, default: builtins.bool) -> builtins.bool:
        value = self.table.get(key, default)
        if not isinstance(value, builtins.bool):
            raise self.fail(key, "true or false")
        return value

    def str_list(self, key: builtins.str) -> tuple[builtins.str, ...]:
        value = self.table.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, builtins.str) and v for v in value):
            raise self.fail(key, "a list of strings")
        return tuple(value)

    def int_list(self, key: builtins.str) -> tuple[builtins.int, ...]:
        value = self.table.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, builtins.int) and 0 < v < 65536 for v in value):
            raise self.fail(key, "a list of port numbers")
        return tuple(value)

    def env_table(self, key: builtins.str) -> tuple[tuple[builtins.str, builtins.str], ...]:
        """A table of environment variables baked into an image (`ENV`): names in capitals,
        values plain text (no quotes, backslashes, `$` or line breaks, which ENV would
        interpret), sorted so that the same table always renders the same Dockerfile."""
        value = self.table.get(key, {})
        if not isinstance(value, dict):
            raise self.fail(key, 'a table of NAME = "value"')
        for name, text in value.items():
            if not ENV_NAME.fullmatch(name):
                raise self.fail(f"{key}.{name}", "named in capitals, digits and _ (an environment variable)")
            if not isinstance(text, builtins.str) or any(c in text for c in '"\\$\n\r'):
                raise self.fail(f"{key}.{name}", "a string without quotes, backslashes, $ or line breaks")
        return tuple(sorted(value.items()))

    def sub(self, key: builtins.str) -> Fields:
        value = self.table.get(key, {})
        if not isinstance(value, dict):
            raise self.fail(key, "a table")
        return Fields(self.path, value, f"{self.prefix}{key}.")

    def reject_unknown(self, allowed: set[builtins.str]) -> None:
        unknown = sorted(set(self.table) - allowed)
        if unknown:
            raise UsageError(
                f"{rel_path(self.path)}: unknown field '{self.prefix}{unknown[0]}'",
                fix=f"allowed fields: {', '.join(sorted(allowed))}",
            )
