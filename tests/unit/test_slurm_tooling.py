"""The Slurm test tooling itself (tests/slurm/): the apptainer stand-in runs as root on a shared
machine, so it must not create or chmod anything where another user could have planted a link."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from mlsyskit import REPO_ROOT

STAND_IN = REPO_ROOT / "tests" / "slurm" / "bin" / "apptainer"


def stand_in() -> types.ModuleType:
    """The stand-in's functions (the file has no .py suffix to import it by)."""
    module = types.ModuleType("apptainer_stand_in")
    exec(compile(STAND_IN.read_text(), str(STAND_IN), "exec"), module.__dict__)
    return module


def test_node_folders_are_made_without_following_a_planted_link(tmp_path):
    roots = tmp_path / "roots"
    roots.mkdir(mode=0o700)
    victim = tmp_path / "etc"
    victim.mkdir(mode=0o755)
    (roots / "node-n1").mkdir()
    (roots / "node-n1" / "tmp").symlink_to(victim)  # what a local user would plant
    with pytest.raises(OSError):
        stand_in().private_dir(str(roots / "node-n1" / "tmp"), 0o1777)
    assert victim.stat().st_mode & 0o7777 == 0o755  # the link's target kept its mode
    stand_in().private_dir(str(roots / "node-n1" / "var-tmp"), 0o1777)
    assert (roots / "node-n1" / "var-tmp").stat().st_mode & 0o7777 == 0o1777


@pytest.mark.parametrize("case", ["unset", "shared", "link"])
def test_the_stand_in_refuses_roots_that_are_not_private(tmp_path, case):
    env = {k: v for k, v in os.environ.items() if k != "KIT_STANDIN_ROOTS"}
    if case == "shared":
        shared = tmp_path / "shared"
        shared.mkdir()
        shared.chmod(0o1777)
        env["KIT_STANDIN_ROOTS"] = str(shared)
    elif case == "link":
        (tmp_path / "real").mkdir(mode=0o700)
        (tmp_path / "link").symlink_to(tmp_path / "real")
        env["KIT_STANDIN_ROOTS"] = str(tmp_path / "link")
    image = tmp_path / "image.sif"
    image.write_text('{"layers": [], "env": []}')
    proc = subprocess.run([sys.executable, str(STAND_IN), "exec", str(image), "true"], env=env, capture_output=True, text=True)
    assert proc.returncode == 255 and "KIT_STANDIN_ROOTS" in proc.stderr, proc.stderr
    assert not list(Path(env.get("KIT_STANDIN_ROOTS", str(tmp_path / "none"))).glob("root-*"))
