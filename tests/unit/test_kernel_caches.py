"""Kernel caches without an engine: what the topics declare, the keys (image ID, GPU
architecture, container user), the mounts and variables every kind of container gets
(shell, smoke, stacks, Kubernetes, Slurm), `invoke cache` on a folder, the bundle's
member written and read back (and refused when hostile), and the command line the GPU
runbook calls."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from mlsyskit.compose.export import ExportOptions, k8s_objects, slurm_script
from mlsyskit.compose.stacks import Devices, RenderOptions, load_stack, render
from mlsyskit.data.catalog import load_catalog
from mlsyskit.data.config import Config
from mlsyskit.engine import ImageInfo
from mlsyskit.engine.spec import run_call
from mlsyskit.errors import KitError, UsageError
from mlsyskit.runtime import caches
from mlsyskit.runtime.caches import TARGET, KernelMount, Key
from mlsyskit.runtime.gpus import GpuSelection
from mlsyskit.runtime.shell import ShellOptions, one_off_spec
from tests.unit.test_export import validate
from tests.unit.test_shell_args import make_host

IMAGE_ID = "sha256:" + "ab12" * 16
OTHER_ID = "sha256:" + "cd34" * 16
FRAMEWORK_VARIABLES = {"TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR", "TORCH_EXTENSIONS_DIR", "CUDA_CACHE_PATH"}


# --- what the topics declare ------------------------------------------------------------------


def variables(catalog, name):
    return {v for cache in caches.declared(catalog, catalog.topic(name)) for v in cache.variables}


def test_every_torch_topic_gets_its_frameworks_caches_and_its_own():
    catalog = load_catalog()
    for topic in catalog.topics.values():
        found = variables(catalog, topic.name)
        assert (found >= FRAMEWORK_VARIABLES) == bool(topic.framework), topic.name
    assert variables(catalog, "docs") == set()  # no torch, nothing compiles: no mount at all
    sglang = variables(catalog, "sglang")
    assert {"SGLANG_CACHE_DIR", "SGLANG_JIT_CACHE_DIR", "SGLANG_DG_CACHE_DIR", "DG_JIT_CACHE_DIR", "FLASHINFER_WORKSPACE_BASE", "TVM_FFI_CACHE_DIR"} <= sglang
    assert {"SGLANG_CACHE_DIR", "FLASHINFER_WORKSPACE_BASE", "DG_JIT_CACHE_DIR"} <= variables(catalog, "verl")
    assert "VLLM_CACHE_ROOT" in variables(catalog, "openrlhf")


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


@pytest.mark.parametrize(
    ("addition", "expected"),
    [
        ('\n[caches]\n"Bad/Name" = "X_DIR"\n', "field 'caches.Bad/Name' must be named in lower case"),
        ('\n[caches]\nthing = "lower_case"\n', "field 'caches.thing' must be an environment variable's name"),
        ("\n[caches]\nthing = []\n", "field 'caches.thing' must be an environment variable's name"),
        ("\n[caches]\nthing = 3\n", "field 'caches.thing' must be an environment variable's name"),
        ('\ncaches = "TRITON_CACHE_DIR"\n', "field 'caches' must be a table"),
    ],
)
def test_a_malformed_caches_table_names_file_and_field(kit_tree, addition, expected):
    path = kit_tree / "envs/distributed/topic.toml"
    text = path.read_text()
    path.write_text(addition + text if addition.startswith("\ncaches =") else text + addition)
    with pytest.raises(UsageError) as err:
        load_catalog(kit_tree)
    assert "envs/distributed/topic.toml" in str(err.value) and expected in str(err.value)


def test_two_caches_may_not_set_one_variable(kit_tree):
    path = kit_tree / "envs/distributed/topic.toml"
    path.write_text(path.read_text() + '\n[caches]\nmine = "TRITON_CACHE_DIR"\n')
    catalog = load_catalog(kit_tree)
    with pytest.raises(UsageError, match="caches 'triton' and 'mine' both set TRITON_CACHE_DIR"):
        caches.declared(catalog, catalog.topic("distributed"))


def test_a_topics_cache_replaces_its_frameworks_of_the_same_name(kit_tree):
    path = kit_tree / "envs/distributed/topic.toml"
    path.write_text(path.read_text() + '\n[caches]\ntriton = ["TRITON_CACHE_DIR", "TRITON_HOME"]\n')
    catalog = load_catalog(kit_tree)
    declared = {c.name: c.variables for c in caches.declared(catalog, catalog.topic("distributed"))}
    assert declared["triton"] == ("TRITON_CACHE_DIR", "TRITON_HOME") and "inductor" in declared


# --- keys -------------------------------------------------------------------------------------


def test_keys():
    assert caches.image_key(IMAGE_ID) == "ab12ab12ab12"
    assert caches.image_key("AB12AB12AB12AB12") == "ab12ab12ab12"
    with pytest.raises(UsageError, match="is not an image ID"):
        caches.image_key("mlsyskit/sglang:pypi")
    assert caches.arch_name(["9.0"]) == "sm_90"
    assert caches.arch_name(["10.0", "9.0", "8.0", "9.0"]) == "sm_80+sm_90+sm_100"  # numeric order, once each
    assert caches.arch_name([]) == "cpu"
    for typed, key in (("sm_90", "sm_90"), ("SM90", "sm_90"), ("9.0", "sm_90"), ("sm_100", "sm_100"), ("sm_90+8.0", "sm_80+sm_90"), ("cpu", "cpu")):
        assert caches.normalize_arch(typed) == key
    with pytest.raises(UsageError, match="not a GPU architecture"):
        caches.normalize_arch("hopper")
    assert (caches.user_dim(0), caches.user_dim(1000)) == ("root", "uid-1000")


def test_the_cache_home_follows_the_environment(tmp_path):
    assert caches.cache_home({"HOME": "/home/ada"}) == Path("/home/ada/.cache/mlsyskit/kernels")
    assert caches.cache_home({"HOME": "/home/ada", "XDG_CACHE_HOME": "/x"}) == Path("/x/mlsyskit/kernels")
    assert caches.cache_home({"MLSYSKIT_KERNEL_CACHE": str(tmp_path / "k")}) == tmp_path / "k"
    for off in ("off", "OFF", "none", "0"):
        assert caches.cache_home({"MLSYSKIT_KERNEL_CACHE": off}) is None


def test_the_gpus_a_container_gets_decide_its_architecture():
    caps = caches.parse_capabilities("0, 9.0\n1, 9.0\n2, 8.0\nbad line\n")
    assert caps == {"0": "9.0", "1": "9.0", "2": "8.0"}
    assert caches.gpu_arch("none", caps) == "cpu"
    assert caches.gpu_arch("all", caps) == "sm_80+sm_90"
    assert caches.gpu_arch("0,1", caps) == "sm_90"
    assert caches.gpu_arch("2", caps) == "sm_80"
    unknown = caches.gpu_arch("0,7", caps)  # a GPU nvidia-smi did not describe: never another architecture's key
    assert unknown.startswith("gpu-") and caches.ARCH_RE.fullmatch(unknown)


def test_capabilities_are_asked_once_per_set_of_gpus(tmp_path, monkeypatch):
    gpus = tmp_path / "gpus"
    (gpus / "0000:01:00.0").mkdir(parents=True)
    (gpus / "0000:01:00.0" / "information").write_text("Model: NVIDIA H100\n")
    monkeypatch.setattr(caches, "PROC_GPUS", str(gpus))
    monkeypatch.setattr(caches, "PROC_VERSION", str(tmp_path / "version"))
    environ = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    asked = []

    def query() -> str:
        asked.append(1)
        return "0, 9.0\n"

    assert caches.host_capabilities(environ, query) == {"0": "9.0"}
    assert caches.host_capabilities(environ, query) == {"0": "9.0"}
    assert len(asked) == 1
    (gpus / "0000:02:00.0").mkdir()  # another GPU: asked again
    caches.host_capabilities(environ, query)
    assert len(asked) == 2


# --- mounts -----------------------------------------------------------------------------------


def distributed_caches():
    catalog = load_catalog()
    return caches.declared(catalog, catalog.topic("distributed"))


def test_a_mount_is_keyed_by_image_architecture_and_user(tmp_path):
    mount = caches.plan(tmp_path, "distributed", distributed_caches(), IMAGE_ID, "sm_90", "uid-1000")
    assert mount is not None
    assert mount.source == tmp_path / "distributed" / "ab12ab12ab12" / "sm_90" / "uid-1000"
    assert mount.volumes == (f"{mount.source}:{TARGET}",)
    assert f"TRITON_CACHE_DIR={TARGET}/triton" in mount.env and f"TORCH_EXTENSIONS_DIR={TARGET}/torch-extensions" in mount.env
    for other in (
        caches.plan(tmp_path, "distributed", distributed_caches(), OTHER_ID, "sm_90", "uid-1000"),
        caches.plan(tmp_path, "distributed", distributed_caches(), IMAGE_ID, "sm_100", "uid-1000"),
        caches.plan(tmp_path, "distributed", distributed_caches(), IMAGE_ID, "sm_90", "root"),
    ):
        assert other is not None and other.source != mount.source
    assert caches.plan(None, "distributed", distributed_caches(), IMAGE_ID, "cpu", "root") is None
    assert caches.plan(tmp_path, "docs", (), IMAGE_ID, "cpu", "root") is None


def test_prepare_makes_every_folder_and_marks_the_use(tmp_path):
    mount = caches.plan(tmp_path, "distributed", distributed_caches(), IMAGE_ID, "cpu", "uid-1000")
    assert mount is not None
    caches.prepare(mount)
    assert all(folder.is_dir() for folder in mount.folders)
    os.utime(mount.source, (1, 1))
    caches.prepare(mount)
    assert time.time() - mount.source.stat().st_mtime < 60


def test_the_shell_container_mounts_the_cache_and_sets_the_variables(tmp_path):
    mount = KernelMount(tmp_path / "k", distributed_caches())
    host = make_host(tmp_path)
    opts = ShellOptions(topic="distributed", command=("true",))
    spec = one_off_spec(opts, host, Config(), GpuSelection(None, "none"),
                        workspace=tmp_path, topic="distributed", base="pypi", image="mlsyskit/distributed:pypi", kernels=mount)  # fmt: skip
    args = run_call(spec).args
    assert f"{tmp_path / 'k'}:{TARGET}" in args
    assert f"TRITON_CACHE_DIR={TARGET}/triton" in args and f"CUDA_CACHE_PATH={TARGET}/cuda" in args
    plain = one_off_spec(opts, host, Config(), GpuSelection(None, "none"),
                         workspace=tmp_path, topic="distributed", base="pypi", image="mlsyskit/distributed:pypi")  # fmt: skip
    assert not any(TARGET in a for a in run_call(plain).args)


def test_each_stack_service_gets_the_cache_of_its_gpus(tmp_path):
    asked = []

    def kernels(topic: str, gpus: tuple[str, ...]) -> KernelMount:
        asked.append((topic, gpus))
        return KernelMount(tmp_path / topic / ("gpu" + "-".join(gpus) if gpus else "cpu"), distributed_caches())

    out = render(load_stack("nccl-2node"), RenderOptions(devices=Devices(gpus=("0", "1")), hf_cache=tmp_path / "hf", kernels=kernels))
    node0 = out["services"]["node-0"]
    assert f"{tmp_path}/distributed/gpu0:{TARGET}" in node0["volumes"]
    assert node0["environment"]["TORCHINDUCTOR_CACHE_DIR"] == f"{TARGET}/inductor"
    assert sorted(asked) == [("distributed", ("0",)), ("distributed", ("1",))]
    cpu = render(load_stack("verl"), RenderOptions(devices=Devices(cpu=True), hf_cache=tmp_path / "hf", kernels=kernels))
    assert all(f"{tmp_path}/verl/cpu:{TARGET}" in body["volumes"] for body in cpu["services"].values())


# --- invoke cache ls | rm | prune -------------------------------------------------------------


class FakeEngine:
    """Only what the cache commands ask of an engine: images by ID."""

    def __init__(self, images: dict[str, tuple[str, ...]]) -> None:
        self.known = images

    def image(self, ref: str) -> ImageInfo | None:
        for image_id, tags in self.known.items():
            if image_id.removeprefix("sha256:").startswith(ref.removeprefix("sha256:")):
                return ImageInfo(id=image_id, tags=tags)
        return None


def fill(home: Path, topic: str, image_id: str, arch: str, user: str, files: dict[str, bytes]) -> Path:
    folder = home / Key(topic, caches.image_key(image_id), arch, user).relative
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


def test_ls_rm_and_prune(tmp_path):
    home = tmp_path / "kernels"
    fill(home, "distributed", IMAGE_ID, "cpu", "uid-1000", {"triton/a.cubin": b"x" * 1000})
    fill(home, "distributed", IMAGE_ID, "sm_90", "root", {"inductor/b.so": b"y" * 10})
    fill(home, "distributed", OTHER_ID, "sm_90", "root", {"inductor/c.so": b"z"})  # an image since rebuilt
    (home / "not-a-cache.txt").write_text("left alone")
    engine = FakeEngine({IMAGE_ID: ("mlsyskit/distributed:pypi", "mlsyskit/topic-distributed:1234"), OTHER_ID: ("mlsyskit/topic-distributed:0000",)})
    text = caches.ls(home, engine)  # type: ignore[arg-type]
    assert "distributed  ab12ab12ab12  current      cpu    uid-1000  1 KB" in text
    assert "distributed  cd34cd34cd34  untagged     sm_90  root" in text and "3 cache(s)" in text
    assert [e.key.arch for e in caches.select(caches.entries(home), arch="9.0")] == ["sm_90", "sm_90"]

    lines: list[str] = []
    doomed, _freed = caches.prune(home, engine, None, lines.append)  # type: ignore[arg-type]
    assert [e.key.image for e in doomed] == ["cd34cd34cd34"] and not (home / "distributed" / "cd34cd34cd34").exists()
    os.utime(home / "distributed/ab12ab12ab12/cpu/uid-1000", (time.time() - 40 * 86400,) * 2)
    doomed, _freed = caches.prune(home, engine, 30, lines.append)  # type: ignore[arg-type]
    assert [(e.key.arch, e.key.user) for e in doomed] == [("cpu", "uid-1000")]

    caches.remove(caches.select(caches.entries(home), topics=["distributed"]), home, lambda: engine, lines.append)  # type: ignore[arg-type,return-value]
    assert caches.entries(home) == [] and not (home / "distributed").exists() and (home / "not-a-cache.txt").exists()


def test_files_a_root_container_wrote_are_removed_through_the_engine(tmp_path, monkeypatch):
    """This user cannot remove what a root container wrote: a root container of the cache's
    own image does, with no network, and nothing else is asked of the engine."""
    home = tmp_path / "kernels"
    fill(home, "distributed", IMAGE_ID, "cpu", "root", {"triton/a": b"1"})
    real_rmtree, calls = shutil.rmtree, []

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied")

    class Runner(FakeEngine):
        def run(self, spec, timeout=None):
            calls.append(spec)
            real_rmtree(home / "distributed/ab12ab12ab12/cpu/root")
            return subprocess.CompletedProcess([], 0, "", "")

    found = caches.entries(home)
    monkeypatch.setattr(caches.shutil, "rmtree", refuse)
    engine = Runner({IMAGE_ID: ("mlsyskit/distributed:pypi",)})
    caches.remove(found, home, lambda: engine, lambda _line: None)  # type: ignore[arg-type,return-value]
    (spec,) = calls
    assert spec.user == "0:0" and spec.network == "none" and spec.image == IMAGE_ID
    assert spec.volumes == (f"{home}/distributed/ab12ab12ab12/cpu:/cache",) and spec.command[-1] == "/cache/root"
    assert not (home / "distributed").exists()


# --- bundles ------------------------------------------------------------------------------------


@contextmanager
def opened(data: bytes):
    yield io.BytesIO(data)


def test_a_bundled_cache_comes_back_under_the_loaders_user(tmp_path):
    sent = tmp_path / "sent"
    fill(sent, "sglang", IMAGE_ID, "sm_90", "uid-1000", {"triton/k.cubin": b"kernel", "sglang/jit/m.so": b"so"})
    fill(sent, "sglang", IMAGE_ID, "sm_90", "root", {"deep-gemm/x.cubin": b"dg"})
    fill(sent, "sglang", OTHER_ID, "sm_90", "root", {"triton/old": b"old"})  # another image: not selected
    (sent / "sglang/ab12ab12ab12/sm_90/uid-1000/triton/link").symlink_to("/etc/passwd")
    lines: list[str] = []
    tar_path = tmp_path / "kernel-cache.tar"
    found = [e for e in caches.entries(sent) if e.key.image == "ab12ab12ab12"]
    held = caches.write_tar(found, tar_path, lines.append)
    assert {(h["user"], h["files"]) for h in held} == {("uid-1000", 2), ("root", 1)}
    assert any("1 file(s) left out" in line for line in lines)  # the link

    home = tmp_path / "received"
    fill(home, "sglang", IMAGE_ID, "sm_90", "uid-2000", {"triton/k.cubin": b"local"})
    data = tar_path.read_bytes()
    written, kept = caches.extract_tar(lambda: opened(data), home, {"ab12ab12ab12": "sglang"}, 2000)
    assert (written, kept) == (2, 1)
    mine = home / "sglang/ab12ab12ab12/sm_90/uid-2000"
    assert (mine / "sglang/jit/m.so").read_bytes() == b"so" and (mine / "triton/k.cubin").read_bytes() == b"local"
    assert (home / "sglang/ab12ab12ab12/sm_90/root/deep-gemm/x.cubin").read_bytes() == b"dg"
    assert not (mine / "triton/link").exists()


def hostile(member: tarfile.TarInfo, data: bytes = b"") -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        good = tarfile.TarInfo("sglang/ab12ab12ab12/sm_90/root/triton/fine")
        good.size = 2
        tar.addfile(good, io.BytesIO(b"ok"))
        member.size = len(data) if member.isreg() else 0
        tar.addfile(member, io.BytesIO(data) if member.isreg() else None)
    return out.getvalue()


def _link(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info


def _device(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.CHRTYPE
    return info


@pytest.mark.parametrize(
    "member",
    [
        _link("sglang/ab12ab12ab12/sm_90/root/triton/evil", "/etc"),
        _device("sglang/ab12ab12ab12/sm_90/root/null"),
        tarfile.TarInfo("sglang/ab12ab12ab12/sm_90/root/../../../../../escape"),
        tarfile.TarInfo("/etc/cron.d/evil"),
        tarfile.TarInfo("sglang/cd34cd34cd34/sm_90/root/not-in-the-bundle"),
        tarfile.TarInfo("verl/ab12ab12ab12/sm_90/root/another-topic"),
        tarfile.TarInfo("sglang/ab12ab12ab12/sm_90/someone/odd-user"),
    ],
    ids=["link", "device", "dotdot", "absolute", "other-image", "other-topic", "odd-user"],
)
def test_a_hostile_cache_member_is_refused_before_anything_is_written(tmp_path, member):
    data = hostile(member, b"x")
    home = tmp_path / "home"
    with pytest.raises(KitError, match="is not a cache file of an image it carries"):
        caches.extract_tar(lambda: opened(data), home, {"ab12ab12ab12": "sglang"}, 1000)
    assert not home.exists() or not any(home.rglob("*"))


# --- Kubernetes and Slurm -------------------------------------------------------------------------


def kernel_opts(**extra) -> ExportOptions:
    catalog = load_catalog()
    topics = ("distributed", "verl", "sglang")
    values = {"kernel_cache": "/local/kernels", **extra}
    return ExportOptions(kernel_images={t: IMAGE_ID for t in topics}, kernel_caches={t: caches.declared(catalog, catalog.topic(t)) for t in topics}, **values)


@pytest.mark.parametrize("name", ["nccl-2node", "verl", "sglang-serve"])
def test_k8s_pods_keep_their_kernels_on_the_node(name):
    objects = k8s_objects(load_stack(name), kernel_opts())
    for obj in objects:
        validate(obj)
    text = json.dumps(objects)
    assert '"subPathExpr": "$(KIT_NODE_NAME)/root"' in text and f'"mountPath": "{TARGET}"' in text
    assert '"type": "DirectoryOrCreate"' in text and "/local/kernels/" in text and "ab12ab12ab12" in text
    assert '"fieldPath": "spec.nodeName"' in text and "TRITON_CACHE_DIR" in text
    assert "subPathExpr" not in json.dumps(k8s_objects(load_stack(name), ExportOptions()))


@pytest.mark.parametrize(("name", "extra"), [("nccl-2node", {}), ("verl", {"runtime": "apptainer"}), ("nccl-2node", {"cpu": True})])
def test_slurm_mounts_the_kernel_cache_on_every_node(tmp_path, name, extra):
    text = slurm_script(load_stack(name), kernel_opts(kernel_cache="/scratch/my kernels", **extra))
    assert "KERNEL_CACHE=${KIT_KERNEL_CACHE:-'/scratch/my kernels'}" in text
    assert f'MOUNTS="$MOUNTS,$KERNEL_DIR:{TARGET}"' in text and f"export TRITON_CACHE_DIR={TARGET}/triton" in text
    assert "srun --ntasks-per-node=1 mkdir -p" in text and "/ab12ab12ab12/$KERNEL_ARCH/$KERNEL_USER" in text
    assert ("KERNEL_ARCH=cpu" in text) == bool(extra.get("cpu"))
    script = tmp_path / "job.sbatch"
    script.write_text(text)
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    checker = shutil.which("shellcheck") or str(Path(sys.executable).with_name("shellcheck"))
    if Path(checker).exists() or shutil.which(checker):
        proc = subprocess.run([checker, str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout
    assert "KERNEL_CACHE" not in slurm_script(load_stack(name), ExportOptions(**extra))


def test_the_export_refuses_a_relative_kernel_cache(tmp_path):
    from mlsyskit.compose.export import run

    with pytest.raises(UsageError, match="give an absolute path"):
        run("slurm", "nccl-2node", output=str(tmp_path), kernel_cache="scratch/kernels")


# --- the command line for hosts without the kit's environment ------------------------------------


def test_the_command_line_prints_the_variables_into_the_given_root(tmp_path, capsys):
    root = tmp_path / "kitcache"
    args = ["--topic", "sglang", "--image-id", IMAGE_ID, "--arch", "9.0", "--root", str(root)]
    assert caches.main(["env", *args, "--mkdir"]) == 0
    lines = capsys.readouterr().out.splitlines()
    folder = root / "sglang" / "ab12ab12ab12" / "sm_90" / "root"
    assert f"SGLANG_CACHE_DIR={folder}/sglang" in lines and f"TRITON_CACHE_DIR={folder}/triton" in lines
    assert f"DG_JIT_CACHE_DIR={folder}/deep-gemm" in lines and f"SGLANG_DG_CACHE_DIR={folder}/deep-gemm" in lines
    assert all(line.count("=") == 1 and line.split("=")[1].startswith(str(folder)) for line in lines)
    assert (folder / "flashinfer").is_dir() and (folder / "sglang-jit").is_dir()
    assert caches.main(["dir", *args, "--uid", "1000"]) == 0
    assert capsys.readouterr().out.strip() == str(root / "sglang" / "ab12ab12ab12" / "sm_90" / "uid-1000")
    assert caches.main(["env", "--topic", "nope", "--image-id", IMAGE_ID, "--arch", "sm_90", "--root", str(root)]) == 2
    assert "unknown topic 'nope'" in capsys.readouterr().err


def test_the_command_line_runs_on_the_standard_library_alone(tmp_path):
    """As the GPU runbook runs it: python3 -S from the checkout, no site-packages."""
    from mlsyskit import REPO_ROOT

    proc = subprocess.run(
        [sys.executable, "-S", "-m", "mlsyskit.runtime.caches", "env", "--topic", "distributed", "--image-id", IMAGE_ID, "--arch", "sm_90", "--root", "/kitcache"],
        cwd=REPO_ROOT, capture_output=True, text=True, env={"PATH": os.environ.get("PATH", "")},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "TRITON_CACHE_DIR=/kitcache/distributed/ab12ab12ab12/sm_90/root/triton" in proc.stdout.splitlines()
