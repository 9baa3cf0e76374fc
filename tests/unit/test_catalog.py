"""The data files: the real catalog loads, and malformed files fail naming file and field."""

import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from mlsyskit import REPO_ROOT
from mlsyskit.data.catalog import load_catalog
from mlsyskit.data.config import Config
from mlsyskit.errors import UsageError
from mlsyskit.images.plan import RootImage, plan


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
        ('framework = "torch-2.11-cu130"', 'stack = "torch-9"', "field 'stack' names unknown framework 'torch-9'"),  # the old name
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


# --- the old spellings of a framework, read for one more release --------------------------

ROOT = RootImage(ref="mlsyskit/rootfs-pypi:bookworm", image_id="sha256:" + "a" * 64, origin="bootstrap")


def plan_tags(catalog):
    return [layer.tag for layer in plan(catalog, Config(), [catalog.topic("distributed")], catalog.base("pypi"), ROOT)]


def test_the_old_stack_key_of_topic_toml_loads_with_a_one_line_warning(kit_tree, capsys):
    new = load_catalog(kit_tree)
    _edit(kit_tree / "envs/distributed/topic.toml", 'framework = "torch-2.11-cu130"', 'stack = "torch-2.11-cu130"')
    old = load_catalog(kit_tree)
    assert old.topic("distributed") == new.topic("distributed") and plan_tags(old) == plan_tags(new)
    err = capsys.readouterr().err
    assert err.startswith("warning: ") and err.count("\n") == 1, err
    assert "envs/distributed/topic.toml: field 'stack' is now spelled 'framework'" in err
    load_catalog(kit_tree)  # read again in the same run: named once
    assert capsys.readouterr().err == ""


def test_framework_and_the_old_stack_key_both_given_is_an_error_naming_the_file(kit_tree):
    _edit(kit_tree / "envs/distributed/topic.toml", 'framework = "torch-2.11-cu130"', 'framework = "torch-2.11-cu130"\nstack = "torch-2.11-cu130"')
    with pytest.raises(UsageError) as err:
        load_catalog(kit_tree)
    assert "envs/distributed/topic.toml: fields 'framework' and 'stack' both given" in str(err.value)
    assert "keep only framework" in err.value.fix and err.value.exit_code == 2
    # on the command line: one line on stderr and exit code 2, like any malformed topic.toml
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "build", "distributed", "--dry-run"],
        cwd=REPO_ROOT, env={**os.environ, "MLSYSKIT_ROOT": str(kit_tree)}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("error: ") and "envs/distributed/topic.toml: fields 'framework' and 'stack' both given" in proc.stderr


def test_an_older_trees_images_stacks_folder_is_read_with_a_one_line_warning(kit_tree, capsys):
    new = load_catalog(kit_tree)
    new_tags = plan_tags(new)
    old_folder = kit_tree / "images/stacks/torch-2.11-cu130"
    old_folder.parent.mkdir()
    (kit_tree / "images/frameworks/torch-2.11-cu130").rename(old_folder)
    (old_folder / "framework.toml").rename(old_folder / "stack.toml")
    old = load_catalog(kit_tree)
    assert old.frameworks["torch-2.11-cu130"] == replace(new.frameworks["torch-2.11-cu130"], path=old_folder)
    assert old.frameworks.keys() == new.frameworks.keys() and plan_tags(old) == new_tags  # the same images
    err = capsys.readouterr().err
    assert err.startswith("warning: ") and err.count("\n") == 1, err
    assert "images/stacks/torch-2.11-cu130/stack.toml is the old place of a framework: move it to images/frameworks/torch-2.11-cu130/framework.toml" in err


def test_images_frameworks_wins_over_an_old_folder_of_the_same_name(kit_tree, capsys):
    old_folder = kit_tree / "images/stacks/torch-2.11-cu130"
    shutil.copytree(kit_tree / "images/frameworks/torch-2.11-cu130", old_folder)
    (old_folder / "framework.toml").rename(old_folder / "stack.toml")
    _edit(old_folder / "stack.toml", 'cuda = "13.0"', 'cuda = "12.8"')
    assert load_catalog(kit_tree).frameworks["torch-2.11-cu130"].cuda == "13.0"
    assert capsys.readouterr().err == ""


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
