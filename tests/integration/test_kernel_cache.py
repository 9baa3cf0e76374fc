"""Kernel caches on the real engine: a JIT build made in one `invoke shell` container is
reused by the next one (as a non-root UID and as root), from the folder the kit keys by
image ID, GPU architecture and container user; a rebuilt image starts a new cache, and
`invoke cache prune` removes the old one. The JIT is torch's cpp_extension (load_inline:
g++ on torch/extension.h), which needs no GPU; the CLI runs as the suite's test user, as
in test_shell.py. The numbers are printed (`pytest -s`)."""

# ruff: noqa: F401, F811 -- test_shell.py's fixtures (its workspace and image) are imported by name

from __future__ import annotations

import json
import os
import shutil
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlsyskit import REPO_ROOT
from mlsyskit.engine import Engine
from mlsyskit.runtime.caches import TARGET
from tests.integration.conftest import KitUser, kit, run_kit, scratch_kit_tree, shared_dir
from tests.integration.test_shell import image, remove_topic_images, workspace

LIBRARY = "torch-extensions/mlsyskit_cache_probe/mlsyskit_cache_probe.so"
PROBE = """
import json, os, time
import torch
from torch.utils import cpp_extension

start = time.perf_counter()
module = cpp_extension.load_inline(
    name="mlsyskit_cache_probe",
    cpp_sources="torch::Tensor axpy(double a, torch::Tensor x, torch::Tensor y) { return a * x + y; }",
    functions=["axpy"],
)
seconds = time.perf_counter() - start
assert torch.equal(module.axpy(2.0, torch.ones(3), torch.ones(3)), torch.full((3,), 3.0))
print(json.dumps({"seconds": seconds, "library": module.__file__, "uid": os.getuid(),
                  "variables": {k: v for k, v in os.environ.items() if k.endswith(("_CACHE_DIR", "_CACHE_PATH", "EXTENSIONS_DIR"))}}))
"""


@pytest.fixture
def cache_home(kit_user: KitUser) -> Iterator[Path]:
    home = shared_dir(kit_user, "mlsyskit-kernels-")
    yield home
    # what a root container wrote there is removed the way users remove it
    kit(kit_user, "cache", "rm", "--all", cwd=home, env={"MLSYSKIT_KERNEL_CACHE": str(home)})
    shutil.rmtree(home, ignore_errors=True)


def probe(user: KitUser, workspace: Path, home: Path, *flags: str, topic: str = "distributed", env: dict[str, str] | None = None) -> dict:
    script = workspace / "probe.py"
    script.write_text(PROBE)
    proc = kit(user, "shell", topic, "--gpus", "none", *flags, "--", "python", "probe.py", cwd=workspace,
               env={"MLSYSKIT_KERNEL_CACHE": str(home), **(env or {})}, timeout=1200)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("as_root", [False, True], ids=["uid", "root"])
def test_a_jit_build_is_reused_by_the_next_container(kit_user, workspace, image, engine: Engine, cache_home, as_root):
    flags = ("--root",) if as_root else ()
    first = probe(kit_user, workspace, cache_home, *flags)
    user = "root" if as_root or kit_user.uid == 0 else f"uid-{kit_user.uid}"
    folder = cache_home / "distributed" / engine.image(image).id[7:19] / "cpu" / user
    library = folder / LIBRARY
    assert first["library"] == f"{TARGET}/{LIBRARY}"
    assert first["variables"]["TORCH_EXTENSIONS_DIR"] == f"{TARGET}/torch-extensions"
    assert first["variables"]["TRITON_CACHE_DIR"] == f"{TARGET}/triton"
    assert library.is_file() and library.stat().st_uid == (0 if as_root else kit_user.uid)
    built = library.stat().st_mtime_ns

    second = probe(kit_user, workspace, cache_home, *flags)
    print(f"\nkernel cache ({user}): load_inline {first['seconds']:.2f} s in the first container, {second['seconds']:.3f} s in the second")
    assert library.stat().st_mtime_ns == built  # loaded, not built again
    assert second["seconds"] < 0.2 * first["seconds"]
    listed = kit(kit_user, "cache", "ls", cwd=workspace, env={"MLSYSKIT_KERNEL_CACHE": str(cache_home)})
    assert listed.returncode == 0 and f"distributed  {folder.parent.parent.name}  current      cpu   {user}" in listed.stdout, listed.stdout


def scratch_tree(user: KitUser, topic: str, marker: str) -> Path:
    """A kit tree with one topic on the `distributed` topic's framework that adds no package:
    building it reuses base and framework and makes a topic layer in seconds. Its [env] marker
    changes the image (a rebuild) without changing anything else."""
    root = scratch_kit_tree(user, topic, "")
    set_marker(root / "envs" / topic, marker)
    return root


def set_marker(env: Path, marker: str) -> None:
    text = f'description = "kernel cache test topic"\nframework = "torch-2.11-cu130"\n\n[env]\nKIT_TEST_BUILD = "{marker}"\n'
    (env / "topic.toml").write_text(text)
    (env / "topic.toml").chmod(0o644)


def test_a_rebuilt_image_starts_a_new_cache_and_prune_removes_the_old(kit_user, workspace, engine: Engine, build_topic, cache_home):
    build_topic("distributed")  # base and framework, reused by the scratch topic
    topic = f"cachetest-{uuid.uuid4().hex[:6]}"
    root = scratch_tree(kit_user, topic, "1")
    where = {"MLSYSKIT_ROOT": str(root)}
    user = "root" if kit_user.uid == 0 else f"uid-{kit_user.uid}"
    try:
        cold = probe(kit_user, workspace, cache_home, topic=topic, env=where)  # builds the image first
        warm = probe(kit_user, workspace, cache_home, topic=topic, env=where)
        old_id = engine.image(f"mlsyskit/{topic}:pypi").id[7:19]
        old = cache_home / topic / old_id / "cpu" / user

        set_marker(root / "envs" / topic, "2")
        built = kit(kit_user, "build", topic, cwd=workspace, env=where, timeout=1200)
        assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
        new_id = engine.image(f"mlsyskit/{topic}:pypi").id[7:19]
        assert new_id != old_id
        rebuilt = probe(kit_user, workspace, cache_home, topic=topic, env=where)
        new = cache_home / topic / new_id / "cpu" / user
        print(f"\nkernel cache, rebuilt image: {cold['seconds']:.2f} s cold, {warm['seconds']:.3f} s warm, {rebuilt['seconds']:.2f} s after the rebuild")
        assert (new / LIBRARY).is_file() and (old / LIBRARY).is_file()
        assert rebuilt["seconds"] > 5 * warm["seconds"]  # compiled again, not taken from the old image's cache

        pruned = kit(kit_user, "cache", "prune", cwd=workspace, env={**where, "MLSYSKIT_KERNEL_CACHE": str(cache_home)})
        assert pruned.returncode == 0, pruned.stderr
        assert not old.exists() and (new / LIBRARY).is_file()
        assert f"removed {topic}/{old_id}/cpu/{user}" in pruned.stdout
    finally:
        remove_topic_images(engine, topic)
        shutil.rmtree(root, ignore_errors=True)


def test_a_bundle_with_cache_brings_the_kernels_to_another_machine(kit_user, workspace, engine: Engine, build_topic, tmp_path_factory):
    """`invoke bundle --with-cache` carries the topic image's cache (checksummed in the
    manifest); `invoke load` on "another machine" (an empty cache home) puts it back under
    the same image ID, where the next container finds it."""
    build_topic("distributed")  # the base layer the scratch topic sits on
    topic = f"cachebundle-{uuid.uuid4().hex[:6]}"
    root = scratch_tree(kit_user, topic, "1")
    (root / "envs" / topic / "topic.toml").write_text('description = "kernel cache bundle test"\nframework = ""\n\n[caches]\nprobe = "KIT_PROBE_CACHE"\n')
    sender, receiver, out = (shared_dir(kit_user, f"mlsyskit-{what}-") for what in ("sender", "receiver", "bundle"))
    user = "root" if kit_user.uid == 0 else f"uid-{kit_user.uid}"
    try:
        made = kit(kit_user, "shell", topic, "--gpus", "none", "--", "sh", "-c", 'echo compiled > "$KIT_PROBE_CACHE/kernel.bin"', cwd=workspace,
                   env={"MLSYSKIT_ROOT": str(root), "MLSYSKIT_KERNEL_CACHE": str(sender)}, timeout=1200)  # fmt: skip
        assert made.returncode == 0, made.stderr[-3000:]
        image_key = engine.image(f"mlsyskit/{topic}:pypi").id[7:19]
        bundle = out / "topic.bundle"
        written = kit(
            kit_user,
            "bundle",
            topic,
            "-o",
            str(bundle),
            "--with-cache",
            cwd=workspace,
            env={"MLSYSKIT_ROOT": str(root), "MLSYSKIT_KERNEL_CACHE": str(sender)},
            timeout=1800,
        )
        assert written.returncode == 0, written.stdout[-2000:] + written.stderr[-2000:]
        with tarfile.open(bundle) as archive:
            manifest = json.load(archive.extractfile("mlsyskit-bundle/manifest.json"))
        assert [(c["topic"], c["image"], c["arch"], c["user"], c["files"]) for c in manifest["kernel_cache"]] == [(topic, image_key, "cpu", user, 1)]
        assert any(f["name"] == "mlsyskit-bundle/kernel-cache.tar" and len(f["sha256"]) == 64 for f in manifest["files"])

        # Loaded by the suite's own user, with the suite's Python: the other machine's user is
        # someone else, whose caches the bundle's become (root's stay root's).
        receiving = {"MLSYSKIT_ROOT": str(root), "MLSYSKIT_KERNEL_CACHE": str(receiver)}
        loaded = run_kit("load", str(bundle), "--to", str(out / "unpacked"), env=receiving)
        assert loaded.returncode == 0, loaded.stdout[-2000:] + loaded.stderr[-2000:]
        assert "kernel caches: 1 file(s) unpacked" in loaded.stdout
        me = "root" if os.geteuid() == 0 else f"uid-{os.geteuid()}"
        assert (receiver / topic / image_key / "cpu" / me / "probe" / "kernel.bin").read_text() == "compiled\n"
        seen = run_kit("shell", topic, "--gpus", "none", "--workspace", str(workspace), "--", "sh", "-c", 'cat "$KIT_PROBE_CACHE/kernel.bin"', env=receiving)
        assert (seen.returncode, seen.stdout.strip()) == (0, "compiled"), seen.stderr
    finally:
        remove_topic_images(engine, topic)
        for path in (root, sender, receiver, out):
            shutil.rmtree(path, ignore_errors=True)
