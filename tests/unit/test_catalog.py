"""The data files: the real catalog loads, and malformed files fail naming file and field."""

from pathlib import Path

import pytest

from mlsyskit.data.catalog import load_catalog
from mlsyskit.errors import UsageError


def test_real_catalog_loads_with_distributed_on_its_framework():
    catalog = load_catalog()
    topic = catalog.topic("distributed")
    assert topic.framework in catalog.frameworks
    assert "torch" in topic.key_packages
    assert {"pypi", "nvidia"} <= set(catalog.bases)


def test_unknown_topic_lists_the_known_ones():
    catalog = load_catalog()
    with pytest.raises(UsageError) as err:
        catalog.topic("no-such-topic")
    assert "unknown topic 'no-such-topic'" in str(err.value)
    assert "distributed" in err.value.fix


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ('framework = "torch-2.11-cu130"', 'framework = "torch-9"', "field 'framework' names unknown framework 'torch-9'"),
        ("min = 0", 'min = "none"', "field 'gpus.min' must be a whole number"),
        ("ports = []", "ports = [99999]", "field 'run.ports' must be a list of port numbers"),
        ('description = "NCCL', 'colour = "red"\ndescription = "NCCL', "unknown field 'colour'"),
        ("[gpus]", "[gpus", "not valid TOML"),
    ],
)
def test_malformed_topic_file_names_file_and_field(kit_tree, old, new, expected):
    _edit(kit_tree / "envs/distributed/topic.toml", old, new)
    with pytest.raises(UsageError) as err:
        load_catalog(kit_tree)
    assert "envs/distributed/topic.toml" in str(err.value)
    assert expected in str(err.value)


def test_topic_without_lock_says_how_to_make_one(kit_tree):
    (kit_tree / "envs/distributed/uv.lock").unlink()
    with pytest.raises(UsageError) as err:
        load_catalog(kit_tree)
    assert "uv.lock: file is missing" in str(err.value)
    assert "invoke lock" in err.value.fix


def test_context_resolves_the_base_once_and_connects_only_when_asked(tmp_path):
    from mlsyskit.context import Context
    from mlsyskit.errors import UsageError

    calls = []
    ctx = Context.resolve("", connect=lambda: calls.append(1) or "engine")
    assert ctx.base_name == "pypi" and ctx.base.name == "pypi" and calls == []  # kit.toml's base
    assert ctx.engine == "engine" and ctx.engine == "engine" and calls == [1]  # connected once, on first use
    with pytest.raises(UsageError, match="unknown base 'conda'"):
        Context.resolve("conda")
