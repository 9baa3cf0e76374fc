"""The compose stacks as data, GPU choice, rendering and the readiness rules: no engine."""

from __future__ import annotations

import re
import tomllib
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from mlsyskit import REPO_ROOT
from mlsyskit.compose.stacks import (
    HF_TARGET,
    SETTLE_S,
    Devices,
    RenderOptions,
    assess,
    check_ports_free,
    check_rdma,
    choose_devices,
    device_requests,
    load_stack,
    option_values,
    parse_stack,
    render,
    stack_names,
)
from mlsyskit.engine.records import COMPOSE_SERVICE, NEVER, ContainerInfo, epoch
from mlsyskit.errors import UsageError
from mlsyskit.images.plan import topic_alias
from mlsyskit.runtime.gpus import parse_query
from mlsyskit.runtime.shell import STACK_BYTES  # the limit every GPU container gets, stacks included

DATA = Path(__file__).parent / "data"
STACKS = ["nccl-2node", "sglang-pd", "sglang-router", "sglang-serve", "verl"]


def loaded_gpus():
    return parse_query((DATA / "nvidia_smi_h100x4_loaded.csv").read_text())


def no_gpus():
    return []


def test_every_stack_is_shipped():
    assert stack_names() == STACKS


@pytest.mark.parametrize("name", STACKS)
def test_gpu_services_carry_the_fields_the_issue_lists(name):
    stack = load_stack(name)
    assert stack.gpu_services(), f"{name} requests no GPU"
    for service in stack.gpu_services():
        body = stack.compose["services"][service]
        (request,) = device_requests(body)
        assert request["driver"] == "nvidia" and request["capabilities"] == ["gpu"]
        assert "count" in request or "device_ids" in request
        assert body.get("ipc") == "host" or body.get("shm_size"), f"{service}: no ipc host or shm_size"
        assert body["ulimits"] == {"memlock": -1, "stack": STACK_BYTES}
        env = body["environment"]
        assert env["NCCL_SOCKET_IFNAME"] == "${NCCL_SOCKET_IFNAME:-eth0}"
        assert env["GLOO_SOCKET_IFNAME"] == "${GLOO_SOCKET_IFNAME:-eth0}"


@pytest.mark.parametrize("name", STACKS)
def test_standalone_files_name_the_kits_own_images_and_scripts(name):
    stack = load_stack(name)
    scripts = REPO_ROOT / "compose" / "scripts"
    for service, spec in stack.services.items():
        body = stack.compose["services"][service]
        assert body["image"] == topic_alias(spec.topic or stack.topic, "pypi")
        for word in body["command"]:
            if word.startswith("/opt/mlsyskit/stacks/"):
                assert (scripts / word.removeprefix("/opt/mlsyskit/stacks/")).is_file(), word
        for target in (c.get("condition") for c in (body.get("depends_on") or {}).values()):
            assert target in ("service_started", "service_healthy", "service_completed_successfully")


def test_topics_that_list_stacks_name_existing_ones():
    for topic_file in sorted((REPO_ROOT / "envs").glob("*/topic.toml")):
        listed = tomllib.loads(topic_file.read_text()).get("run", {}).get("stacks", [])
        for name in listed:
            assert name in STACKS, f"{topic_file}: unknown stack {name}"


def test_health_gates_probe_rank_zero_and_the_router():
    serve = load_stack("sglang-serve").compose["services"]
    assert "/health" in " ".join(serve["server"]["healthcheck"]["test"])
    assert serve["client"]["depends_on"] == {"server": {"condition": "service_healthy"}}
    assert serve["server"]["depends_on"] == {"model": {"condition": "service_completed_successfully"}}
    router = load_stack("sglang-router").compose["services"]
    assert set(router["router"]["depends_on"]) == {"worker-0", "worker-1"}


# --- choosing GPUs ----------------------------------------------------------------------


def test_default_takes_the_stacks_count_of_least_used_gpus():
    devices = choose_devices(load_stack("nccl-2node"), "", False, loaded_gpus, True)
    assert devices == Devices(gpus=("0", "1"))


def test_explicit_devices_and_counts():
    nccl = load_stack("nccl-2node")
    assert choose_devices(nccl, "2,3", False, loaded_gpus, True).gpus == ("2", "3")
    assert choose_devices(nccl, "4", False, loaded_gpus, True).gpus == ("0", "1", "2", "3")
    assert choose_devices(load_stack("sglang-router"), "all", False, loaded_gpus, True).gpus == ("0", "1", "2", "3")


@pytest.mark.parametrize(
    ("name", "gpus", "cpu", "message"),
    [
        ("nccl-2node", "3", False, "shares its GPUs evenly over 2 services"),
        ("nccl-2node", "1,", False, "needs at least 2 GPU(s), got 1"),
        ("nccl-2node", "5", False, "more GPUs than there are"),
        ("nccl-2node", "0,7", False, "GPU 7 does not exist"),
        ("nccl-2node", "2", True, "either --cpu or --gpus"),
        ("sglang-serve", "", True, "sglang-serve has no CPU variant"),
        ("sglang-pd", "1,", False, "sglang-pd needs at least 2 GPU(s), got 1"),
        ("sglang-pd", "3", False, "sglang-pd needs a multiple of 2 GPUs, got 3"),
    ],
)
def test_impossible_requests_are_one_clear_error(name, gpus, cpu, message):
    with pytest.raises(UsageError) as err:
        choose_devices(load_stack(name), gpus, cpu, loaded_gpus, True)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_cpu_refusal_names_the_stacks_that_have_cpu():
    with pytest.raises(UsageError) as err:
        choose_devices(load_stack("sglang-router"), "", True, loaded_gpus, True)
    assert err.value.fix == "stacks with --cpu: nccl-2node, verl"


def test_no_gpu_host_runs_cpu_stacks_on_cpu_with_a_warning_and_refuses_gpu_stacks():
    devices = choose_devices(load_stack("verl"), "", False, no_gpus, False)
    assert devices.cpu and "running verl on CPU" in devices.warning
    assert choose_devices(load_stack("verl"), "none", False, no_gpus, False) == Devices(cpu=True)
    with pytest.raises(UsageError, match="needs at least 1 NVIDIA GPU"):
        choose_devices(load_stack("sglang-serve"), "", False, no_gpus, False)


# --- rendering --------------------------------------------------------------------------


def opts(**kwargs):
    base = {"devices": Devices(gpus=("0", "1")), "hf_cache": Path("/home/u/.cache/huggingface")}
    return RenderOptions(**{**base, **kwargs})


def gpu_ids(body):
    return [d["device_ids"] for d in device_requests(body)]


def test_split_services_share_the_gpus_evenly_in_order():
    out = render(load_stack("nccl-2node"), opts(devices=Devices(gpus=("4", "5", "6", "7"))))
    node0, node1 = out["services"]["node-0"], out["services"]["node-1"]
    assert gpu_ids(node0) == [["4", "5"]] and gpu_ids(node1) == [["6", "7"]]
    assert node0["environment"]["KIT_GPUS"] == "2" and node1["environment"]["KIT_NODE_RANK"] == "1"
    assert node1["environment"]["KIT_HEAD"] == "node-0" and node1["environment"]["KIT_NNODES"] == "2"
    assert node0["environment"]["KIT_DEVICE"] == "cuda"


def test_cpu_drops_the_gpu_reservation_and_says_cpu():
    out = render(load_stack("nccl-2node"), opts(devices=Devices(cpu=True)))
    for body in out["services"].values():
        assert "deploy" not in body
        assert body["environment"]["KIT_DEVICE"] == "cpu"
        assert body["ipc"] == "host" and body["ulimits"]["stack"] == STACK_BYTES
    assert out["x-mlsyskit"]["rendered"]["devices"] == "cpu"


def test_an_emulated_arm64_stack_names_its_platform_and_mounts_an_arm64_cpuinfo():
    """`up --arch arm64` on an x86 host: each service as `invoke shell --arch arm64` runs it."""
    cpuinfo = "/home/u/.cache/mlsyskit/cpuinfo-arm64-2:/proc/cpuinfo:ro"
    out = render(load_stack("nccl-2node"), opts(devices=Devices(cpu=True), base="pypi-arm64", platform="linux/arm64", emulation=(cpuinfo,)))
    for body in out["services"].values():
        assert body["platform"] == "linux/arm64" and body["image"].endswith(":pypi-arm64")
        assert body["volumes"][-1] == cpuinfo
    assert out["x-mlsyskit"]["rendered"]["platform"] == "linux/arm64"
    native = render(load_stack("nccl-2node"), opts(devices=Devices(cpu=True)))
    assert not [b for b in native["services"].values() if "platform" in b or any("cpuinfo" in v for v in b.get("volumes", []))]


def test_memlock_is_kept_where_allowed_and_dropped_where_the_engine_refuses():
    allowed = render(load_stack("verl"), opts(memlock=True))["services"]["ray-head"]
    refused = render(load_stack("verl"), opts(memlock=False))["services"]["ray-head"]
    assert allowed["ulimits"] == {"memlock": -1, "stack": STACK_BYTES}
    assert refused["ulimits"] == {"stack": STACK_BYTES}


def test_router_gets_one_worker_per_gpu_and_their_urls():
    out = render(load_stack("sglang-router"), opts(devices=Devices(gpus=("1", "2", "3"))))
    services = out["services"]
    assert [n for n in services if n.startswith("worker")] == ["worker-0", "worker-1", "worker-2"]
    assert [gpu_ids(services[f"worker-{i}"]) for i in range(3)] == [[["1"]], [["2"]], [["3"]]]
    assert services["worker-2"]["environment"]["KIT_REPLICA"] == "2"
    router = services["router"]
    assert router["environment"]["KIT_WORKER_HOSTS"] == "worker-0 worker-1 worker-2"
    assert set(router["depends_on"]) == {"worker-0", "worker-1", "worker-2"}
    assert router["depends_on"]["worker-2"] == {"condition": "service_healthy"}
    assert "deploy" not in router and "deploy" not in services["client"]


def test_server_takes_every_gpu_given_for_tensor_parallel():
    out = render(load_stack("sglang-serve"), opts(devices=Devices(gpus=("2", "3")), model="org/model"))
    server = out["services"]["server"]
    assert gpu_ids(server) == [["2", "3"]] and server["environment"]["KIT_GPUS"] == "2"
    assert server["environment"]["KIT_MODEL"] == "org/model"
    assert "KIT_GPUS" not in out["services"]["client"]["environment"]


def test_pd_servers_both_see_every_gpu_and_take_the_chosen_backend():
    stack = load_stack("sglang-pd")
    out = render(stack, opts(devices=Devices(gpus=("2", "3")), options=option_values(stack, ["transfer-backend=nixl"])))
    services = out["services"]
    for role in ("prefill", "decode"):
        server = services[role]
        # CUDA IPC between the two needs both GPUs visible in both, and the host's IPC and PIDs
        assert gpu_ids(server) == [["2", "3"]] and server["environment"]["KIT_GPUS"] == "2"
        assert server["ipc"] == "host" and server["pid"] == "host"
        assert server["environment"]["KIT_PD_ROLE"] == role and server["environment"]["KIT_PD_BACKEND"] == "nixl"
        assert "devices" not in server and "cap_add" not in server
    assert services["prefill"]["environment"]["KIT_NCCL_PORT"] != services["decode"]["environment"]["KIT_NCCL_PORT"]
    router = services["router"]
    assert router["environment"]["KIT_PREFILL_URL"] == "http://prefill:30000" and router["environment"]["KIT_DECODE_URL"] == "http://decode:30000"
    assert set(router["depends_on"]) == {"prefill", "decode"} and "deploy" not in router
    assert out["x-mlsyskit"]["rendered"]["options"] == {"KIT_PD_BACKEND": "nixl"}
    rdma = render(stack, opts(devices=Devices(gpus=("0", "1")), rdma=True))["services"]
    assert rdma["decode"]["devices"] == ["/dev/infiniband:/dev/infiniband"] and rdma["decode"]["cap_add"] == ["IPC_LOCK"]
    assert "devices" not in rdma["router"] and "cap_add" not in rdma["client"]


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (["transfer-backend=mooncake"], "--option transfer-backend=mooncake: transfer-backend is one of nixl"),
        (["colour=red"], "--option colour=red: sglang-pd has no option 'colour'"),
        (["transfer-backend"], "--option transfer-backend: expected NAME=VALUE"),
    ],
)
def test_bad_stack_options_are_one_clear_error(given, message):
    with pytest.raises(UsageError) as err:
        option_values(load_stack("sglang-pd"), given)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    with pytest.raises(UsageError, match="its options: none"):
        option_values(load_stack("sglang-serve"), ["transfer-backend=nixl"])


def test_rdma_needs_the_hosts_infiniband_devices(tmp_path):
    with pytest.raises(UsageError, match="--rdma: this host has no .* \\(no RDMA device or driver\\)"):
        check_rdma(True, tmp_path / "infiniband")
    (tmp_path / "infiniband").mkdir()
    check_rdma(True, tmp_path / "infiniband")
    check_rdma(False, tmp_path / "missing")


def test_a_published_port_in_use_is_refused_before_anything_starts():
    from mlsyskit.errors import EngineError

    stack = load_stack("sglang-pd")
    rendered = render(stack, opts(devices=Devices(gpus=("0", "1"))))
    seen = []
    check_ports_free(stack, rendered, taken=lambda address, port, proto: seen.append((address, port, proto)) or False)
    assert seen == [("127.0.0.1", 30000, "tcp")]
    with pytest.raises(EngineError) as err:
        check_ports_free(stack, rendered, taken=lambda *_: True)
    assert str(err.value).startswith("sglang-pd: port 127.0.0.1:30000/tcp of service router is already in use on this host")


def test_images_paths_labels_and_escaping():
    out = render(load_stack("verl"), opts(base="nvidia", hf_cache=Path("/data/hf$cache"), environment={"HF_ENDPOINT": "https://m"}))
    head = out["services"]["ray-head"]
    assert head["image"] == "mlsyskit/verl:nvidia"
    assert f"/data/hf$$cache:{HF_TARGET}" in head["volumes"]
    assert f"{REPO_ROOT}/compose/scripts:/opt/mlsyskit/stacks:ro" in head["volumes"]
    assert head["labels"]["org.mlsyskit.stack"] == "verl" and head["labels"]["org.mlsyskit.stack.role"] == "head"
    assert head["environment"]["HF_ENDPOINT"] == "https://m"
    assert out["services"]["trainer"]["environment"]["KIT_NNODES"] == "2"
    text = yaml.safe_dump(out)
    assert "&id" not in text and "*id" not in text  # no YAML aliases for compose to trip on
    assert not [k for k in out if k.startswith("x-") and k != "x-mlsyskit"]


# --- readiness --------------------------------------------------------------------------


def state(service, status, code=0, health="", finished=100.0):
    return ContainerInfo(
        id="abc", name=f"p-{service}-1", labels={COMPOSE_SERVICE: service}, status=status, exit_code=code, health=health,
        started_at=50.0, finished_at=finished if status in ("exited", "dead") else NEVER,
    )  # fmt: skip


def test_assess_rules():
    expected = {"job-ok": "job", "svc": "service", "svc-health": "service", "later": "job", "old": "job"}
    states = [
        state("job-ok", "exited", 0),
        state("svc", "running"),
        state("svc-health", "running", health="starting"),
        state("old", "exited", 0, finished=10.0),  # finished in an earlier `up`
    ]
    verdict = assess(expected, states, since=60.0, now=120.0)
    assert verdict.ready == ("job-ok", "svc")
    assert verdict.waiting == ("svc-health", "later", "old")
    assert not verdict.failed and not verdict.done


def test_a_service_without_healthcheck_is_ready_only_after_it_stayed_up():
    """`running` for a moment between the restarts of a crash loop is not `up`."""
    running_since_50 = [state("svc", "running")]
    assert assess({"svc": "service"}, running_since_50, since=40.0, now=50.0 + SETTLE_S - 0.5).waiting == ("svc",)
    assert assess({"svc": "service"}, running_since_50, since=40.0, now=50.0 + SETTLE_S).ready == ("svc",)
    healthy = [state("svc", "running", health="healthy")]
    assert assess({"svc": "service"}, healthy, since=40.0, now=50.1).ready == ("svc",)  # its healthcheck said so


@pytest.mark.parametrize(
    ("run", "st", "why"),
    [
        ("job", state("x", "exited", 3), "exited with code 3"),
        ("service", state("x", "exited", 0), "stopped (exit code 0)"),
        ("service", state("x", "running", health="unhealthy"), "unhealthy"),
        ("service", state("x", "dead", 137), "stopped (exit code 137)"),
        # a crash loop under a restart policy fails at once, not when --wait runs out
        ("service", state("x", "restarting", 1), "is restarting after exiting with code 1 (a restart loop)"),
        ("job", state("x", "restarting", 2), "restarting after exiting with code 2"),
    ],
)
def test_assess_failures(run, st, why):
    verdict = assess({"x": run}, [st], since=60.0, now=120.0)
    assert verdict.failed and why in verdict.failed[0][1]


def test_docker_times():
    assert epoch("0001-01-01T00:00:00Z") == NEVER
    whole = datetime(2026, 11, 27, 7, 40, 1, tzinfo=UTC).timestamp()
    assert epoch("2026-11-27T07:40:01.123456789Z") == pytest.approx(whole + 0.123456)
    assert epoch("2026-11-27T07:40:01Z") == whole
    assert epoch("2026-11-27T08:40:01.5+01:00") == whole + 0.5


# --- malformed stacks -------------------------------------------------------------------

GOOD = """
x-mlsyskit: {description: d, pattern: nodes, topic: distributed, cpu: true, gpus: {default: 2, min: 2}}
services:
  node-0:
    image: mlsyskit/distributed:pypi
    x-mlsyskit: {role: node, run: job, gpus: split}
    deploy: {resources: {reservations: {devices: [{driver: nvidia, count: 1, capabilities: [gpu]}]}}}
"""


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.replace("x-mlsyskit: {description", "x-other: {description"), "field 'x-mlsyskit' must be a table"),
        (lambda t: t.replace("role: node", "role: boss"), "field 'services.node-0.x-mlsyskit.role' must be one of"),
        (lambda t: t.replace("run: job", "run: forever"), "x-mlsyskit.run' must be one of service, job"),
        (lambda t: t.replace("    deploy:", "    #deploy:"), "uses GPUs but has no deploy.resources.reservations.devices"),
        (lambda t: t.replace("min: 2", "min: 3"), "field 'x-mlsyskit.runtime.gpus.min' must be at most"),
        (lambda t: t.replace("cpu: true", "cpu: true, colour: red"), "unknown field 'x-mlsyskit.colour'"),
        (lambda t: t.replace("gpus: split", "gpus: each"), "x-mlsyskit.group' must be set exactly when gpus is `each`"),
        (lambda t: t + "  : [", "not valid YAML"),
        (lambda t: t + "    depends_on: {node-9: {condition: service_started}}", "depends_on names unknown service 'node-9'"),
        (lambda t: t + "    depends_on: {node-0: {condition: service_healthy}}", "'node-0' has no healthcheck"),
    ],
)
def test_malformed_stack_files_name_the_file_and_field(change, message):
    with pytest.raises(UsageError) as err:
        parse_stack("bad", REPO_ROOT / "compose" / "bad.yml", change(GOOD))
    assert str(err.value).startswith("compose/bad.yml: ") and message in str(err.value)


def test_unknown_stack_lists_the_known_ones():
    with pytest.raises(UsageError) as err:
        load_stack("nope")
    assert err.value.fix == "known stacks: " + ", ".join(STACKS)


def test_scripts_read_only_documented_variables():
    """Every KIT_* a script reads is in compose/README.md's table."""
    readme = (REPO_ROOT / "compose" / "README.md").read_text()
    documented = set(re.findall(r"`(KIT_[A-Z_]+)`", readme))
    used = set()
    for script in (REPO_ROOT / "compose" / "scripts").iterdir():
        used |= set(re.findall(r"\b(KIT_[A-Z_]+)\b", script.read_text()))
    assert used <= documented, sorted(used - documented)
