"""The Slurm exports on a real two-node Slurm cluster: Debian's slurm-wlm 22.05 and munge,
started by tests/slurm/cluster.sh on this one machine (each slurmd in its own network and
UTS namespace, with its own address and hostname), scripts written by `invoke export slurm`
and submitted unmodified with `sbatch`.

What is real: Slurm (sbatch, srun steps on both nodes, --gpus-per-node scheduling against
gres.conf), the kit's images and the programs in them, the network between the nodes.
What stands in: the container runtime. Apptainer is not packaged for Debian bookworm, so
tests/slurm/bin/apptainer runs `apptainer build|exec` the way Apptainer does, on the kit's
real image (its overlay layers as the root, in the step's namespaces). The GPU-only stacks
(sglang-serve, sglang-router) cannot start SGLang without a GPU: their scripts are accepted
by `sbatch --test-only` and run for real with tests/slurm/rehearsal/apptainer, which plays
the programs in the image so that the script's own orchestration (head discovery, readiness
waits, order of steps) is exercised. pyxis/enroot cannot be installed here: their scripts are
checked offline only (tests/unit/test_export.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mlsyskit import REPO_ROOT
from tests.conftest import need
from tests.integration.conftest import run_kit

CLUSTER = REPO_ROOT / "tests" / "slurm" / "cluster.sh"
STAND_IN = REPO_ROOT / "tests" / "slurm" / "bin"
REHEARSAL = REPO_ROOT / "tests" / "slurm" / "rehearsal"
TOOLS = ("slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "scancel", "munged", "nsenter", "unshare", "ip", "curl")
NODES = {"n1": "10.77.0.11", "n2": "10.77.0.12"}


@dataclass
class Job:
    id: str
    output: Path
    returncode: int | None = None

    @property
    def text(self) -> str:
        return self.output.read_text() if self.output.exists() else ""


@dataclass
class Slurm:
    folder: Path
    env: dict[str, str]

    def export(self, stack: str, *flags: str) -> Path:
        out = self.folder / "export"
        proc = run_kit("export", "slurm", stack, "-o", str(out), *flags, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return out / f"{stack}.sbatch"

    def sbatch(self, script: Path, *args: str, runtime: Path = STAND_IN, env: dict[str, str] | None = None, wait: bool = True) -> Job:
        """Submit SCRIPT as a user would (`sbatch [ARGS] SCRIPT`) with RUNTIME's apptainer on PATH;
        with `wait`, until the job ends (polled: `sbatch --wait` checks only every few seconds)."""
        jobs = self.folder / "jobs"
        jobs.mkdir(exist_ok=True)
        full_env = {**self.env, "PATH": f"{runtime}:{self.env['PATH']}", **(env or {})}
        proc = subprocess.run(["sbatch", *args, str(script)], cwd=jobs, env=full_env, capture_output=True, text=True, timeout=60)
        match = re.search(r"Submitted batch job (\d+)", proc.stdout)
        assert match, f"sbatch did not take {script.name}: {proc.stdout}{proc.stderr}"
        job = Job(match.group(1), jobs / f"mlsyskit-{script.stem}-{match.group(1)}.out")
        if wait:
            job.returncode = self.wait_ended(job)
        return job

    def wait_ended(self, job: Job, timeout: float = 900) -> int:
        """The job's exit code once Slurm says it ended (ExitCode=CODE:SIGNAL)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.run("scontrol", "show", "job", "-o", job.id).stdout
            state = re.search(r"JobState=(\S+)", info)
            if state and state.group(1) not in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING"):
                code = re.search(r"\bExitCode=(\d+):(\d+)", info)
                assert code, info
                status, signal = int(code.group(1)), int(code.group(2))
                return 128 + signal if signal else status
            time.sleep(0.5)
        raise AssertionError(f"job {job.id} did not end within {timeout:.0f}s:\n{job.text}")

    def run(self, *cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(cmd), env=self.env, capture_output=True, text=True, timeout=60)

    def wait_gone(self, job: Job, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.run("squeue", "-h", "-j", job.id).stdout.strip():
            assert time.monotonic() < deadline, f"job {job.id} still in the queue after {timeout:.0f}s"
            time.sleep(1)


def leftovers(folder: Path) -> list[str]:
    """What the cluster would leave behind: its daemons, namespaces, the stand-in's mounts."""
    found = []
    procs = subprocess.run(["pgrep", "-af", str(folder)], capture_output=True, text=True).stdout
    found += [line for line in procs.splitlines() if re.search(r"slurmd|slurmctld|munged", line)]
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    found += [line for line in netns.splitlines() if line.startswith("kitslurm-")]
    found += [line for line in Path("/proc/mounts").read_text().splitlines() if str(folder / "roots") in line]
    if (folder / "roots").exists():
        found.append(f"{folder / 'roots'} (the stand-in's roots)")
    return found


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slurm]:
    missing = [tool for tool in TOOLS if not shutil.which(tool)]
    need(not missing, f"no {', '.join(missing)}: `apt-get install slurmctld slurmd slurm-client munge iproute2 curl`")
    need(os.geteuid() == 0, "the test Slurm cluster needs root (network namespaces, munge, slurmd)")
    folder = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "SLURM_CONF": str(folder / "slurm.conf"), "KIT_IMAGE_DIR": str(folder / "images"), "KIT_WORK_DIR": str(folder / "work")}
    env["HF_HOME"] = str(folder / "hf")
    env["KIT_STANDIN_ROOTS"] = str(folder / "roots")  # made by `cluster.sh up`, private to root
    up = subprocess.run([str(CLUSTER), "up", str(folder)], capture_output=True, text=True, timeout=180)
    try:
        assert up.returncode == 0, f"the Slurm cluster did not start:\n{up.stdout}{up.stderr}"
        yield Slurm(folder, env)
    finally:
        down = subprocess.run([str(CLUSTER), "down", str(folder)], capture_output=True, text=True, timeout=120)
        left = leftovers(folder)
        assert down.returncode == 0 and not left, f"the cluster left: {left}\n{down.stderr}"


def test_the_cluster_has_two_nodes_with_their_own_addresses(slurm: Slurm):
    nodes = slurm.run("sinfo", "-h", "-N", "-o", "%N %T %G").stdout.split("\n")
    assert sorted(line.split()[:2] for line in nodes if line) == [["n1", "idle"], ["n2", "idle"]]
    step = slurm.run("srun", "-N2", "--ntasks-per-node=1", "--label", "sh", "-c", "echo $(hostname) $(ip -o -4 addr show eth0)")
    assert step.returncode == 0, step.stderr
    for node, address in NODES.items():
        assert re.search(rf"^\d: {node} .*inet {re.escape(address)}/24", step.stdout, re.M), step.stdout


def test_nccl_2node_cpu_all_reduces_across_the_two_slurm_nodes(slurm: Slurm, build_topic):
    build_topic("distributed")
    script = slurm.export("nccl-2node", "--cpu", "--runtime", "apptainer")
    job = slurm.sbatch(script)
    out = job.text
    assert job.returncode == 0, out
    assert f"nodes: n1 n2; head n1 at {NODES['n1']}" in out
    # one torchrun per node, each on its own Slurm node, both meeting at the head's address
    assert f"node 0/2 on n1: 1 process(es) on cpu, head {NODES['n1']}:29500" in out
    assert f"node 1/2 on n2: 1 process(es) on cpu, head {NODES['n1']}:29500" in out
    assert "all-reduce passed: backend gloo, world size 2, exact sums at every size: True" in out
    assert re.search(r"^nccl: PASSED", out, re.M), out


def test_the_image_comes_from_a_bundle_where_there_is_no_registry(slurm: Slurm, nccl_2node_bundle: Path):
    """`--bundle`: the nodes make the image file from an `invoke bundle` file (no daemon needed
    by Apptainer; the stand-in loads the archive into one)."""
    script = slurm.export("nccl-2node", "--cpu", "--runtime", "apptainer", "--bundle", str(nccl_2node_bundle))
    text = script.read_text()
    assert f"KIT_BUNDLE=${{KIT_BUNDLE:-{nccl_2node_bundle}}}" in text and "docker-archive:" in text
    job = slurm.sbatch(script, env={"KIT_IMAGE_DIR": str(slurm.folder / "images-from-bundle")})
    out = job.text
    assert job.returncode == 0, out
    assert "importing the image to" in out and "Build complete" in out and "images-from-bundle" in out
    assert "all-reduce passed: backend gloo, world size 2, exact sums at every size: True" in out
    assert not list((slurm.folder / "images-from-bundle").glob("*.images.tar")), "the extracted archive was left"
    nccl_2node_bundle.unlink()  # its last user: 6 GB less on CI's disk for the rest of the run
    shutil.rmtree(slurm.folder / "images-from-bundle", ignore_errors=True)


def test_verl_cpu_runs_a_ray_cluster_across_the_two_slurm_nodes(slurm: Slurm, build_topic):
    build_topic("verl")
    script = slurm.export("verl", "--cpu", "--runtime", "apptainer")
    job = slurm.sbatch(script)
    out = job.text
    assert job.returncode == 0, out
    assert "ready: the Ray head on n1" in out
    assert f"ray job: 2 node(s) alive: {NODES['n1']}, {NODES['n2']}" in out, out
    assert "tasks ran on 2 node(s)" in out and "ray job: passed" in out, out


def test_a_missing_image_file_stops_the_job_with_one_line(slurm: Slurm):
    # The image cannot be made on the node (no registry here) and no file was copied there.
    script = slurm.export("nccl-2node", "--cpu", "--runtime", "apptainer", "--image-registry", "registry.invalid/kit")
    job = slurm.sbatch(script, env={"KIT_IMAGE_FILE": str(slurm.folder / "shared" / "missing.sif")})
    assert job.returncode == 2, job.text
    errors = [line for line in job.text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "missing.sif is missing and could not be made on n1" in errors[0], job.text
    assert "set KIT_IMAGE_FILE" in errors[0] and "torchrun" not in job.text


@pytest.mark.parametrize(
    ("stack", "flags"),
    [
        ("nccl-2node", ("--nodes", "2", "--gpus-per-node", "1")),
        ("verl", ("--nodes", "2", "--gpus-per-node", "1")),
        ("sglang-serve", ("--nodes", "2", "--gpus-per-node", "1")),
        ("sglang-router", ("--nodes", "2")),
        ("sglang-pd", ("--nodes", "2", "--gpus-per-node", "1")),
    ],
)
@pytest.mark.parametrize("runtime", ["apptainer", "pyxis"])
def test_gpu_scripts_are_accepted_and_scheduled_on_the_nodes_gpus(slurm: Slurm, stack, flags, runtime):
    script = slurm.export(stack, "--runtime", runtime, *flags)
    proc = subprocess.run(["sbatch", "--test-only", str(script)], env=slurm.env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and re.search(r"to start at .* on nodes n\[1-2\]", proc.stderr), proc.stderr
    # ...and more GPUs than the nodes have is refused by Slurm, not by the script
    too_many = subprocess.run(["sbatch", "--test-only", "--gpus-per-node=2", str(script)], env=slurm.env, capture_output=True, text=True)
    assert too_many.returncode != 0, too_many.stderr


def _rehearse(slurm: Slurm, script: Path, announce: str, env: dict[str, str] | None = None) -> tuple[str, list[dict]]:
    log = slurm.folder / f"rehearsal-{script.stem}-{time.monotonic_ns()}.jsonl"
    job = slurm.sbatch(script, runtime=REHEARSAL, env={"KIT_REHEARSAL_LOG": str(log), **(env or {})}, wait=False)
    try:
        deadline = time.monotonic() + 120
        while announce not in job.text:
            assert time.monotonic() < deadline, f"the script never got to '{announce}':\n{job.text}"
            assert slurm.run("squeue", "-h", "-j", job.id).stdout.strip(), f"the job ended early:\n{job.text}"
            time.sleep(1)
    finally:
        slurm.run("scancel", job.id)
        slurm.wait_gone(job)
    steps = [json.loads(line) for line in log.read_text().splitlines()]
    return job.text, steps


def test_sglang_serve_orchestration_with_a_rehearsal_runtime(slurm: Slurm):
    script = slurm.export("sglang-serve", "--runtime", "apptainer", "--nodes", "2", "--gpus-per-node", "1")
    out, steps = _rehearse(slurm, script, "serving at")
    assert [s["step"] for s in steps][:1] == ["prepare_model"] and steps[0]["node"] == "n1"
    servers = sorted((s["node"], s["env"]["KIT_NODE_RANK"], s["env"]["KIT_HEAD"]) for s in steps if s["step"] == "server")
    assert servers == [("n1", "0", NODES["n1"]), ("n2", "1", NODES["n1"])]
    client = [s for s in steps if s["step"] == "client"]
    assert len(client) == 1 and client[0]["node"] == "n1" and client[0]["env"]["KIT_TARGET"] == f"http://{NODES['n1']}:30000"
    assert steps.index(client[0]) == len(steps) - 1  # the client only after the servers
    # ...and only once rank 0 answered /health (the rehearsal answers 503 for its first 2 s)
    assert client[0]["t"] - max(s["t"] for s in steps if s["step"] == "server") >= 2
    # the script waited for readiness (the rehearsal answers /health only after a delay)
    assert "ready: SGLang on n1:30000" in out and "'rehearsal reply from server rank 0 on n1'" in out  # the stack's real client
    # each server listened on its own node's address, not on every interface
    assert {s["node"]: s["env"]["KIT_BIND_HOST"] for s in steps if s["step"] == "server"} == NODES


def test_sglang_router_orchestration_with_a_rehearsal_runtime(slurm: Slurm):
    script = slurm.export("sglang-router", "--runtime", "apptainer", "--nodes", "2")
    out, steps = _rehearse(slurm, script, "routing at")
    order = [s["step"] for s in steps]
    assert order[0] == "prepare_model" and order[-2:] == ["router", "client"] and order.count("server") == 2, order
    assert sorted(s["node"] for s in steps if s["step"] == "server") == ["n1", "n2"]
    router = steps[-2]
    assert router["node"] == "n1"
    # the router started only once every worker answered /health (503 for their first 2 s)
    assert router["t"] - max(s["t"] for s in steps if s["step"] == "server") >= 2
    assert router["env"]["KIT_WORKER_HOSTS"] == f"http://{NODES['n1']}:30000 http://{NODES['n2']}:30000"
    assert router["env"]["KIT_BIND_HOST"] == NODES["n1"]
    assert {s["node"]: s["env"]["KIT_BIND_HOST"] for s in steps if s["step"] == "server"} == NODES
    for address in NODES.values():
        assert f"ready: the worker at {address}:30000" in out
    assert steps[-1]["env"]["KIT_TARGET"] == f"http://{NODES['n1']}:8000" and "rehearsal reply from router on n1" in out


def test_sglang_pd_orchestration_with_a_rehearsal_runtime(slurm: Slurm):
    """Two nodes: prefill on the head, decode on the other, each with its node's GPU; the
    router on the head only once both answered /health, pointed at both by address."""
    script = slurm.export("sglang-pd", "--runtime", "apptainer", "--nodes", "2", "--gpus-per-node", "1")
    out, steps = _rehearse(slurm, script, "routing prefill/decode at")
    order = [s["step"] for s in steps]
    assert order[0] == "prepare_model" and order[-2:] == ["router", "client"] and order.count("server") == 2, order
    servers = {s["env"]["KIT_PD_ROLE"]: s for s in steps if s["step"] == "server"}
    assert servers["prefill"]["node"] == "n1" and servers["decode"]["node"] == "n2"
    for server in servers.values():
        assert server["env"]["KIT_PD_TP"] == "1" and server["env"]["KIT_PD_BASE_GPU"] == "0" and server["env"]["KIT_NNODES"] == "1"
        assert server["env"]["KIT_PD_BACKEND"] == "nixl" and server["env"]["KIT_BOOTSTRAP_PORT"] == "8998"
    assert servers["prefill"]["env"]["KIT_NCCL_PORT"] != servers["decode"]["env"]["KIT_NCCL_PORT"]
    router = steps[-2]
    assert router["node"] == "n1" and router["t"] - max(s["t"] for s in servers.values()) >= 2
    assert router["env"]["KIT_PREFILL_URL"] == f"http://{NODES['n1']}:30000" and router["env"]["KIT_DECODE_URL"] == f"http://{NODES['n2']}:30000"
    assert f"ready: the decode server at {NODES['n2']}:30000" in out and "rehearsal reply from router on n1" in out
    assert servers["prefill"]["env"]["KIT_BIND_HOST"] == NODES["n1"] and servers["decode"]["env"]["KIT_BIND_HOST"] == NODES["n2"]


# --- what listens where --------------------------------------------------------------------


def listening(node: str) -> set[str]:
    """The TCP sockets listening in a node's network namespace, as ADDRESS:PORT."""
    out = subprocess.run(["ip", "netns", "exec", f"kitslurm-{node}", "ss", "-Hltn"], capture_output=True, text=True).stdout
    return {line.split()[3] for line in out.splitlines() if len(line.split()) > 3}


def watch_listening(node: str, until: Callable[[], bool], timeout: float = 900) -> set[str]:
    """Every listening socket seen on NODE while a job runs (polled until `until()`)."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while not until():
        seen |= listening(node)
        assert time.monotonic() < deadline, "the job did not end"
        time.sleep(0.2)
    return seen


def job_ended(slurm: Slurm, job: Job) -> Callable[[], bool]:
    def ended() -> bool:
        return not slurm.run("squeue", "-h", "-j", job.id).stdout.strip()

    return ended


def test_nccl_2node_torchrun_store_listens_on_the_heads_address_only(slurm: Slurm, build_topic):
    build_topic("distributed")
    script = slurm.export("nccl-2node", "--cpu", "--runtime", "apptainer")
    job = slurm.sbatch(script, wait=False)
    seen = watch_listening("n1", job_ended(slurm, job))
    job.returncode = slurm.wait_ended(job)
    assert job.returncode == 0, job.text
    store = {sock for sock in seen if sock.endswith(":29500")}
    assert store == {f"{NODES['n1']}:29500"}, seen  # not 0.0.0.0 / [::] / *
    assert f"the rendezvous store listens on {NODES['n1']}:29500 only" in job.text


def test_verl_ray_dashboard_listens_on_the_heads_loopback_only(slurm: Slurm, build_topic):
    build_topic("verl")
    script = slurm.export("verl", "--cpu", "--runtime", "apptainer")
    job = slurm.sbatch(script, wait=False)
    seen = watch_listening("n1", job_ended(slurm, job))
    job.returncode = slurm.wait_ended(job)
    assert job.returncode == 0, job.text
    assert {sock for sock in seen if sock.endswith(":8265")} == {"127.0.0.1:8265"}, seen


def test_sglang_servers_listen_on_their_nodes_address(slurm: Slurm):
    """The rehearsal serves where the script tells SGLang to (KIT_BIND_HOST): on each node's
    address, reachable from the other node, and not on every interface."""
    script = slurm.export("sglang-serve", "--runtime", "apptainer", "--nodes", "2", "--gpus-per-node", "1")
    log = slurm.folder / "rehearsal-bind.jsonl"
    job = slurm.sbatch(script, runtime=REHEARSAL, env={"KIT_REHEARSAL_LOG": str(log)}, wait=False)
    try:
        deadline = time.monotonic() + 120
        while "serving at" not in job.text:
            assert time.monotonic() < deadline, job.text
            time.sleep(1)
        for node, address in NODES.items():
            assert {s for s in listening(node) if s.endswith(":30000")} == {f"{address}:30000"}
    finally:
        slurm.run("scancel", job.id)
        slurm.wait_gone(job)


def test_sglang_behind_the_api_key_from_the_environment(slurm: Slurm):
    """Exported with --api-key: without KIT_API_KEY the job stops with one line; with it, the
    servers want it and the stack's client sends it; the key is in no file and no argv."""
    canary = "kit-canary-7f3a9c"
    script = slurm.export("sglang-serve", "--runtime", "apptainer", "--nodes", "2", "--gpus-per-node", "1", "--api-key")
    assert canary not in script.read_text()
    missing = slurm.sbatch(script, runtime=REHEARSAL, env={"KIT_REHEARSAL_LOG": str(slurm.folder / "nokey.jsonl")})
    errors = [line for line in missing.text.splitlines() if line.startswith("error:")]
    assert missing.returncode == 2 and len(errors) == 1 and "exported with --api-key: set KIT_API_KEY" in errors[0], missing.text
    out, steps = _rehearse(slurm, script, "serving at", env={"KIT_API_KEY": canary})
    servers = [s for s in steps if s["step"] == "server"]
    assert len(servers) == 2 and all(s["api_key"] for s in servers)
    assert "client: 1 request(s) answered by" in out  # the real client, with the key, against servers that want it
    assert canary not in out and not any(canary in " ".join(s["command"]) for s in steps)


# --- values from outside stay values; the image file from a bundle ---------------------------

HOSTILE = "$(touch pwned) } ' \" `touch pwned2` a  b"


def fake_bundle(path: Path, images: bytes = b"rehearsal layers") -> Path:
    """A bundle the export and the nodes read (manifest, images.tar); the rehearsal's
    `apptainer build` does not look inside the archive."""
    import hashlib
    import io
    import tarfile

    files = [{"name": "mlsyskit-bundle/images.tar", "size": len(images), "sha256": hashlib.sha256(images).hexdigest()}]
    manifest = json.dumps({"images": [{"id": "sha256:x", "tags": ["mlsyskit/sglang:pypi"]}], "files": files}).encode()
    with tarfile.open(path, "w") as archive:
        for name, body in (("mlsyskit-bundle/images.tar", images), ("mlsyskit-bundle/manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            archive.addfile(info, io.BytesIO(body))
    return path


def pwned(slurm: Slurm) -> list[str]:
    places = [slurm.folder, REPO_ROOT, Path("/tmp"), Path.home(), Path("/")]
    return [str(p) for place in places for p in (place.rglob("pwned*") if place == slurm.folder else place.glob("pwned*"))]


def test_hostile_option_values_run_nothing_and_arrive_intact(slurm: Slurm):
    """--model, --ifname, --kit-root, --image-file and --bundle filled with command
    substitutions, a closing brace, quotes and spaces: the job runs them as values."""
    hostile_dir = slurm.folder / HOSTILE
    hostile_dir.mkdir()
    kit_root = hostile_dir / "kit"
    kit_root.symlink_to(REPO_ROOT)  # the checkout, under a hostile name
    image_file = hostile_dir / f"{HOSTILE}.sif"
    image_file.write_text("rehearsal image\n")
    flags = ("--runtime", "apptainer", "--nodes", "2", "--gpus-per-node", "1", "--kit-root", str(kit_root))
    script = slurm.export("sglang-serve", *flags, "--model", HOSTILE, "--ifname", HOSTILE, "--image-file", str(image_file))
    out, steps = _rehearse(slurm, script, "serving at")
    for step in steps:
        env = step["env"]
        assert env["KIT_MODEL"] == HOSTILE and env["NCCL_SOCKET_IFNAME"] == HOSTILE and env["GLOO_SOCKET_IFNAME"] == HOSTILE
        assert step["image"] == str(image_file)
        assert f"{kit_root}/compose/scripts:/opt/mlsyskit/stacks:ro" in step["binds"]
    assert "client: 1 request(s) answered by" in out  # run from the hostile kit root
    bundle = fake_bundle(hostile_dir / f"{HOSTILE}.bundle")
    script = slurm.export("sglang-serve", *flags, "--bundle", str(bundle))
    images = slurm.folder / "images-hostile"
    out, steps = _rehearse(slurm, script, "serving at", env={"KIT_IMAGE_DIR": str(images)})
    assert f"image: {images}/mlsyskit+sglang+pypi.sif" in out and steps[0]["image"] == f"{images}/mlsyskit+sglang+pypi.sif"
    assert sorted(p.name for p in images.iterdir()) == ["mlsyskit+sglang+pypi.sif", "mlsyskit+sglang+pypi.sif.lock"]
    assert pwned(slurm) == []


def test_a_changed_bundle_is_refused_on_the_node_before_apptainer_reads_it(slurm: Slurm):
    bundle = fake_bundle(slurm.folder / "changed.bundle")
    script = slurm.export("sglang-serve", "--runtime", "apptainer", "--nodes", "2", "--gpus-per-node", "1", "--bundle", str(bundle))
    fake_bundle(bundle, images=b"other layers")  # replaced on shared storage after the export
    images = slurm.folder / "images-changed"
    job = slurm.sbatch(script, runtime=REHEARSAL, env={"KIT_IMAGE_DIR": str(images), "KIT_REHEARSAL_LOG": str(slurm.folder / "changed.jsonl")})
    errors = [line for line in job.text.splitlines() if line.startswith("error:")]
    assert job.returncode == 2 and len(errors) == 1, job.text
    assert "mlsyskit-bundle/images.tar in" in errors[0] and "not the" in errors[0] and "recorded at export" in errors[0]
    assert [p.name for p in images.iterdir()] == ["mlsyskit+sglang+pypi.sif.lock"]  # no image, no half, no archive
    assert not (slurm.folder / "changed.jsonl").exists()  # no step ran


def test_a_job_killed_while_importing_leaves_no_image_file_a_later_job_accepts(slurm: Slurm, tmp_path):
    """The import is killed halfway (scancel while `apptainer build` writes): no image file is
    left, only a half under a temporary name, which the next job removes before it imports."""
    slow = tmp_path / "slow"
    slow.mkdir()
    (slow / "apptainer").write_text('#!/bin/sh\n[ "$1" = build ] && { echo half > "$2"; exec sleep 600; }\nexit 1\n')
    (slow / "apptainer").chmod(0o755)
    script = slurm.export("sglang-serve", "--runtime", "apptainer", "--nodes", "2", "--gpus-per-node", "1")
    images = slurm.folder / "images-killed"
    job = slurm.sbatch(script, runtime=slow, env={"KIT_IMAGE_DIR": str(images)}, wait=False)
    deadline = time.monotonic() + 60
    while not list(images.glob("*.part-*")) if images.exists() else True:
        assert time.monotonic() < deadline, job.text
        time.sleep(0.5)
    slurm.run("scancel", job.id)
    slurm.wait_gone(job)
    image = images / "mlsyskit+sglang+pypi.sif"
    assert not image.exists() and [p.name for p in images.glob("*.part-*")] == [f"{image.name}.part-{job.id}"]
    out, _ = _rehearse(slurm, script, "serving at", env={"KIT_IMAGE_DIR": str(images)})
    assert "importing the image to" in out and image.read_text().startswith("rehearsal image")
    assert not list(images.glob("*.part-*"))


# --- the tooling's own teardown (last: it takes the cluster down and brings it back up) -------


def test_teardown_stops_running_job_steps_and_leaves_a_stale_pids_process_alone(slurm: Slurm):
    """`cluster.sh down` while a job step runs on both nodes, with a pidfile whose PID now
    belongs to an unrelated process: the steps (which outlive slurmd) are gone, the unrelated
    process still runs, and nothing of the cluster is left."""
    seconds = str(4000 + os.getpid() % 1000)  # the steps' command line, to find them by
    script = slurm.folder / "long.sbatch"
    script.write_text(f"#!/bin/bash\n#SBATCH --nodes=2\n#SBATCH --ntasks-per-node=1\n#SBATCH --output=%x-%j.out\nsrun sleep {seconds}\n")
    slurm.sbatch(script, wait=False)

    def steps() -> list[str]:
        return subprocess.run(["pgrep", "-f", f"(^|/)sleep {seconds}$"], capture_output=True, text=True).stdout.split()

    deadline = time.monotonic() + 60
    while len(steps()) < 2:
        assert time.monotonic() < deadline, f"the job's steps did not start: {steps()}"
        time.sleep(0.5)
    unrelated = subprocess.Popen(["sleep", "600"])
    (slurm.folder / "run" / "slurmd-n2.pid").write_text(f"{unrelated.pid}\n")  # slurmd-n2's PID, reused
    try:
        down = subprocess.run([str(CLUSTER), "down", str(slurm.folder)], capture_output=True, text=True, timeout=120)
        assert down.returncode == 0, down.stderr
        assert steps() == [], "job steps outlived the cluster"
        assert unrelated.poll() is None, "down killed a process that only had a stale pidfile's PID"
        assert leftovers(slurm.folder) == []
    finally:
        unrelated.kill()
        unrelated.wait()
        for pid in steps():
            os.kill(int(pid), 9)
        up = subprocess.run([str(CLUSTER), "up", str(slurm.folder)], capture_output=True, text=True, timeout=180)
        assert up.returncode == 0, up.stdout + up.stderr
