"""data/toml.py: every TOML file the kit reads, parsed once per content and then loaded from a
JSON copy. What users rely on: an edited topic.toml or kit.toml is read as edited (never a
stale copy), a damaged or unwritable cache never breaks a command, bad TOML is still one
line naming the file, and what a copy gives back is exactly what tomllib gives."""

from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path

import pytest

from mlsyskit import REPO_ROOT
from mlsyskit.data import toml
from mlsyskit.data.catalog import load_bases
from mlsyskit.errors import UsageError


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "mlsyskit" / "toml"


def no_tomllib(monkeypatch: pytest.MonkeyPatch) -> None:
    """From here on, a parse fails the test: what is read must come from a copy."""
    monkeypatch.setitem(sys.modules, "tomllib", None)


def test_a_second_read_comes_from_the_copy_not_the_parser(cache, tmp_path, monkeypatch):
    path = tmp_path / "topic.toml"
    path.write_text('name = "x"\nports = [8000, 8001]\n[env]\nA = "1"\n')
    first = toml.read_toml(path)
    assert len(list(cache.glob("*.json"))) == 1
    no_tomllib(monkeypatch)
    assert toml.read_toml(path) == first == {"name": "x", "ports": [8000, 8001], "env": {"A": "1"}}


def test_an_edited_file_is_read_as_edited(cache, tmp_path):
    """Same length, same place, edited within the same second: still the new text."""
    path = tmp_path / "topic.toml"
    path.write_text('name = "a"\n')
    assert toml.read_toml(path) == {"name": "a"}
    stat = path.stat()
    path.write_text('name = "b"\n')
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the same mtime as before
    assert toml.read_toml(path) == {"name": "b"}


def test_a_damaged_copy_is_parsed_over(cache, tmp_path):
    path = tmp_path / "kit.toml"
    path.write_text('[build]\nbase = "pypi"\n')
    toml.read_toml(path)
    (copy,) = cache.glob("*.json")
    for damage in ("{", "[1, 2]", "\x00\xff"):
        copy.write_text(damage)
        assert toml.read_toml(path) == {"build": {"base": "pypi"}}
    assert toml.read_toml(path) == {"build": {"base": "pypi"}}


def test_an_unwritable_cache_only_costs_the_parse(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # mlsyskit/ cannot be made under a file
    path = tmp_path / "kit.toml"
    path.write_text('[build]\nbase = "nvidia"\n')
    assert toml.read_toml(path) == toml.read_toml(path) == {"build": {"base": "nvidia"}}
    assert blocker.read_text() == "" and sorted(p.name for p in tmp_path.iterdir()) == ["kit.toml", "not-a-folder"]


def test_dates_are_parsed_every_time_not_copied(cache, tmp_path):
    """JSON has no dates: a table holding one is never copied, and reads as tomllib gives it."""
    path = tmp_path / "stamped.toml"
    path.write_text("recorded = 2026-12-06T07:00:00Z\n")
    assert toml.read_toml(path) == tomllib.loads(path.read_text())
    assert not cache.exists() or list(cache.glob("*.json")) == []


def test_bad_toml_is_one_line_naming_the_file(cache, tmp_path):
    root = tmp_path / "kit"
    (root / "images").mkdir(parents=True)
    (root / "images" / "bases.toml").write_text("[pypi\n")
    with pytest.raises(UsageError) as caught:
        load_bases(root)
    message = str(caught.value)
    assert message.startswith(f"{root}/images/bases.toml: not valid TOML") and "line 1" in message and "\n" not in message
    (root / "images" / "bases.toml").write_bytes(b'x = "\xff"\n')  # not UTF-8: refused the same way
    with pytest.raises(UsageError, match="not valid TOML"):
        load_bases(root)


def test_every_file_of_the_kit_reads_back_exactly_as_tomllib_parses_it(cache, monkeypatch):
    """Every TOML file in the checkout (topics, frameworks, bases, kit.toml, the Debian lock,
    the uv locks), read twice: the copy equals tomllib's tables, types included (an int
    stays an int, 1.0 stays a float)."""
    files = [p for p in REPO_ROOT.rglob("*.toml") if ".venv" not in p.parts and ".git" not in p.parts]
    files += [p for p in REPO_ROOT.rglob("uv.lock") if ".venv" not in p.parts]
    assert len(files) > 15

    def typed(value: object) -> object:
        if isinstance(value, dict):
            return {k: typed(v) for k, v in value.items()}
        if isinstance(value, list):
            return [typed(v) for v in value]
        return (type(value).__name__, value)

    expected = {p: typed(tomllib.loads(p.read_text())) for p in files}
    for path in files:
        toml.read_toml(path)
    no_tomllib(monkeypatch)
    dated = {p for p in files if "datetime" in repr(expected[p])}
    for path in sorted(set(files) - dated):
        assert typed(toml.read_toml(path)) == expected[path], path
