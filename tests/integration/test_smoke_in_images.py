"""The smoke tests' own unit tests that need torch, verl or transformers run where those are:
inside the topic images, on every push (the kit's environment has none of them, so there
they skip). Also checked inside the images: that the bench_serving flags the SGLang test
uses exist in the installed SGLang, and that torch's and flashinfer's JIT build a CUDA
kernel with the toolkit of each framework's wheels, while the old toolkit layout fails."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from mlsyskit import REPO_ROOT
from mlsyskit.data.lockfile import key_versions
from mlsyskit.engine import ContainerSpec, Engine
from mlsyskit.images.plan import topic_alias
from smoke_tests import sglang_pd
from smoke_tests.sglang_serve import BENCH_FLAGS
from tests.conftest import need

#: pytest and what it imports, copied from the kit's own environment: pure Python, so the
#: images' Python (3.11, the same) runs them. Put last on sys.path: the image's packages win.
PYTEST_PACKAGES = ("pytest", "_pytest", "pluggy", "iniconfig", "packaging", "pygments", "py.py")

#: Unit test files that need the image's packages, and where they run.
UNIT_TESTS_IN = {
    "distributed": [
        "test_smoke_nccl.py",
        "test_smoke_gpu_health.py",
        "test_smoke_cuda_graph.py",
        "test_smoke_cuda_jit.py",
        "test_smoke_result.py",
    ],
    "verl": ["test_smoke_verl_sft.py", "test_smoke_verl_grpo.py", "test_smoke_tiny_model.py", "test_smoke_sglang.py"],
}


def has_topic(name: str) -> bool:
    return (REPO_ROOT / "envs" / name / "topic.toml").is_file()


@pytest.fixture(scope="module")
def pytest_dir(tmp_path_factory) -> Path:
    import pytest as kit_pytest

    site = Path(kit_pytest.__file__).resolve().parent.parent
    out = tmp_path_factory.mktemp("kit-pytest")
    for entry in site.iterdir():
        name = entry.name.split("-")[0] if entry.name.endswith(".dist-info") else entry.name
        if name.lower() in PYTEST_PACKAGES or name in PYTEST_PACKAGES:
            (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, out / entry.name)
    assert (out / "pytest").is_dir() and (out / "_pytest").is_dir()
    return out


@pytest.mark.parametrize("topic", sorted(UNIT_TESTS_IN))
def test_torch_unit_tests_run_inside_the_image_and_none_skips(engine: Engine, build_topic, pytest_dir, topic):
    need(has_topic(topic), f"envs/{topic}/topic.toml is missing")
    build_topic(topic)
    files = [f"tests/unit/{name}" for name in UNIT_TESTS_IN[topic]]
    # The checkout read-only; pytest's cache off; the JUnit report is how the host counts.
    script = (
        "cp -r /repo /tmp/repo && cd /tmp/repo && python -c \"import sys; sys.path.append('/opt/kit-pytest'); "
        'import pytest; sys.exit(pytest.main(sys.argv[1:]))" -p no:cacheprovider -q -rs '
        f"--junitxml=/out/junit.xml {' '.join(files)}"
    )
    out = pytest_dir.parent / f"junit-{topic}"
    out.mkdir(exist_ok=True)
    spec = ContainerSpec(
        image=topic_alias(topic, "pypi"),
        command=("bash", "-c", script),
        volumes=(f"{REPO_ROOT}:/repo:ro", f"{pytest_dir}:/opt/kit-pytest:ro", f"{out}:/out"),
        # the image's own pytest plugins (pytest-asyncio in verl's) stay out
        env=("PYTHONDONTWRITEBYTECODE=1", "PYTEST_DISABLE_PLUGIN_AUTOLOAD=1"),
        host_ipc=True,  # torch's collectives and workers share memory, as in `invoke shell`
    )
    proc = engine.run(spec, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    suite = ET.parse(out / "junit.xml").getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    skipped = [c.get("name") for c in suite.iter("testcase") if c.find("skipped") is not None]
    assert counts["failures"] == counts["errors"] == 0, proc.stdout[-4000:]
    assert skipped == [], f"skipped inside {topic}'s image, where everything they need is: {skipped}"
    assert counts["tests"] >= 20


@pytest.mark.parametrize("topic", ["sglang", "verl"])
def test_bench_serving_flags_exist_in_the_installed_sglang(engine: Engine, build_topic, topic):
    """Each flag of the SGLang test's load command against `--help` of the bench_serving
    that topic installs (0.5.23 in sglang, 0.5.12 in verl), not against the kit's constant."""
    need(has_topic(topic), f"envs/{topic}/topic.toml is missing")
    build_topic(topic)
    proc = engine.run(ContainerSpec(image=topic_alias(topic, "pypi"), command=("python", "-m", "sglang.bench_serving", "--help")), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    defined = set(re.findall(r"(--[a-z0-9][a-z0-9-]*)", proc.stdout))
    missing = [flag for flag in BENCH_FLAGS if flag not in defined]
    assert missing == [], f"bench_serving in {topic} has no {missing}"
    assert "random-ids" in proc.stdout  # the dataset that needs no download


def with_smoke_tests(image: str, script: str) -> ContainerSpec:
    return ContainerSpec(
        image=image, command=("bash", "-c", script), volumes=(f"{REPO_ROOT / 'smoke_tests'}:/opt/mlsyskit/smoke_tests:ro",),
        env=("PYTHONPATH=/opt/mlsyskit",), host_ipc=True,
    )  # fmt: skip


@pytest.mark.parametrize("topic", ["distributed", "openrlhf", "sglang", "verl"])
def test_cuda_jit_builds_with_the_wheels_toolkit_of_each_framework(engine: Engine, build_topic, topic):
    """torch 2.11 (distributed, verl), 2.13 (openrlhf), 2.14 (sglang): the JIT finds nvcc 13.0
    in NVIDIA's wheels through /usr/local/cuda, compiles and links; flashinfer's JIT too where
    the topic locks flashinfer (0.6.11 in verl, 0.6.18 in openrlhf through vLLM, 0.7.2 in sglang)."""
    need(has_topic(topic), f"envs/{topic}/topic.toml is missing")
    flashinfer = key_versions(REPO_ROOT / "envs" / topic / "uv.lock", ["flashinfer-python"]).get("flashinfer-python")
    build_topic(topic)
    script = "python -m smoke_tests.cuda_jit --cpu --json /tmp/r.json >/tmp/log 2>&1; echo rc=$?; cat /tmp/r.json"
    proc = engine.run(with_smoke_tests(topic_alias(topic, "pypi"), script), timeout=900)
    head, _, body = proc.stdout.partition("\n")
    result = json.loads(body)
    assert head == "rc=0" and result["status"] == "skipped", result["reason"]
    assert result["reason"].startswith("--cpu given: running the kernels needs a GPU (the CUDA extension")
    toolkit = result["figures"]["toolkit"]
    assert toolkit["cuda_home"] == "/usr/local/cuda" and toolkit["from_wheels"] and toolkit["nvcc_release"] == "13.0"
    assert result["figures"]["torch_extension"]["build_seconds"] > 0
    if flashinfer:
        assert result["figures"]["flashinfer"]["version"] == flashinfer
        assert "flashinfer's kernel" in result["reason"] and "compiled and linked for sm_90" in result["reason"]
    else:
        assert result["figures"]["flashinfer"] == "not installed"
    sglang = key_versions(REPO_ROOT / "envs" / topic / "uv.lock", ["sglang"]).get("sglang")
    if sglang:  # SGLang's own JIT kernels, built by the image's nvcc and host compiler
        assert result["figures"]["sglang_jit"]["version"] == sglang and result["figures"]["sglang_jit"]["kernels"]
    else:
        assert "sglang_jit" not in result["figures"]


def test_cuda_jit_fails_with_the_old_toolkit_layout(engine: Engine, build_topic):
    """/usr/local/cuda as a bare link to the wheels' folder (no lib64, no libcudart.so), as the
    images had it: the test fails and names the linker's complaint."""
    build_topic("distributed")
    script = (
        'rm -rf /usr/local/cuda && ln -s "$(python -c \'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13"))\')" '
        "/usr/local/cuda && python -m smoke_tests.cuda_jit --cpu --json /tmp/r.json >/tmp/log 2>&1; echo rc=$?; cat /tmp/r.json"
    )
    proc = engine.run(with_smoke_tests(topic_alias("distributed", "pypi"), script), timeout=600)
    head, _, body = proc.stdout.partition("\n")
    result = json.loads(body)
    assert head == "rc=1" and result["status"] == "failed"
    assert "cannot find -lcudart" in result["reason"]


# --- prefill/decode disaggregation in the sglang image --------------------------------------


@pytest.mark.topic("sglang")
def test_pd_flags_exist_in_the_installed_sglang(engine: Engine, build_topic):
    """Every flag the PD smoke test and compose/scripts/sglang_server.sh give the pair, and the
    transfer backends the stack offers, against `launch_server --help` of the image's SGLang."""
    from smoke_tests.sglang_pd import PD_FLAGS

    need(has_topic("sglang"), "envs/sglang/topic.toml is missing")
    build_topic("sglang")
    proc = engine.run(ContainerSpec(image=topic_alias("sglang", "pypi"), command=("python", "-m", "sglang.launch_server", "--help")), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    defined = set(re.findall(r"(--[a-z0-9][a-z0-9-]*)", proc.stdout))
    script = (REPO_ROOT / "compose" / "scripts" / "sglang_server.sh").read_text()
    used = set(PD_FLAGS) | set(re.findall(r"(--disaggregation-[a-z-]+|--base-gpu-id|--nccl-port)", script))
    assert sorted(used - defined) == []
    from mlsyskit.compose.stacks import load_stack

    backends = load_stack("sglang-pd").options["transfer-backend"].choices
    choices = re.search(r"--disaggregation-transfer-backend \{([^}]*)\}", proc.stdout)
    assert choices is not None and set(backends) <= set(choices[1].split(",")), proc.stdout[-3000:]


@pytest.mark.topic("sglang")
def test_the_real_pd_router_gives_both_servers_one_bootstrap_room(engine: Engine, build_topic, tmp_path):
    """On a CPU: SGLang's own router (sglang_router 0.3.2) in PD mode in front of two stand-in
    servers, driven by the PD smoke test's harness. What is real: the router, its PD routing,
    the harness, the wiring of ports; what is played: the servers (they record what they get)."""
    need(has_topic("sglang"), "envs/sglang/topic.toml is missing")
    build_topic("sglang")
    fake = "/opt/mlsyskit/fakes/fake_sglang.py"
    server = f"{{python}} {fake} serve --port {{port}} --model {{model}} --ready-after 0.5 --transport tcp/eth0 --requests-file /out/requests.jsonl"
    bench = f"{{python}} {fake} bench --base-url {{base_url}} --output-file {{output}} --num-prompts {{num_prompts}} --output-len {{output_len}}"
    script = (
        "python -m smoke_tests.sglang_pd --model fake-model --json /out/result.json --bootstrap-port 8998 "
        f"--server-cmd '{server}' --bench-cmd '{bench}' --num-prompts 4 --output-len 4 --max-new-tokens 3 "
        "--startup-timeout 60 --timeout 300 > /out/log 2>&1; echo rc=$?"
    )
    spec = ContainerSpec(
        image=topic_alias("sglang", "pypi"),
        command=("bash", "-c", script),
        volumes=(
            f"{REPO_ROOT / 'smoke_tests'}:/opt/mlsyskit/smoke_tests:ro",
            f"{REPO_ROOT / 'tests' / 'unit' / 'data'}:/opt/mlsyskit/fakes:ro",
            f"{tmp_path}:/out",
        ),
        env=("PYTHONPATH=/opt/mlsyskit",),
    )
    proc = engine.run(spec, timeout=600)
    log = (tmp_path / "log").read_text() if (tmp_path / "log").exists() else ""
    assert proc.stdout.strip() == "rc=0", log[-4000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["status"] == "passed", result["reason"] + log[-3000:]
    assert "sglang_router.launch_router" in result["figures"]["router_command"]  # the real router, not a stand-in
    assert result["figures"]["greedy"]["identical"] and result["figures"]["kv_link"] == "tcp"
    bodies = [json.loads(line) for line in (tmp_path / "requests.jsonl").read_text().splitlines()]
    through_router = [b for b in bodies if b["mode"] in ("prefill", "decode")]
    rooms: dict[object, set[str]] = {}
    for entry in through_router:
        body = entry["body"]
        # the router tells both servers where the prefill side's bootstrap server is
        assert body.get("bootstrap_host") == "127.0.0.1" and body.get("bootstrap_port") == 8998, body
        rooms.setdefault(body["bootstrap_room"], set()).add(entry["mode"])
    # one room per request, and each room reached both halves of the pair
    assert len(rooms) >= 4 and all(modes == {"prefill", "decode"} for modes in rooms.values()), rooms


@pytest.mark.topic("sglang")
def test_nixl_loads_its_cuda13_build_in_the_sglang_image(engine: Engine, build_topic):
    """The transfer backend the stack uses is importable as SGLang imports it (nixl._api),
    from the CUDA 13 build (the CUDA 12 one is not installed)."""
    need(has_topic("sglang"), "envs/sglang/topic.toml is missing")
    build_topic("sglang")
    script = (
        "import json, importlib.util, nixl, nixl._api as api\n"
        "print(json.dumps([nixl._pkg.__name__, hasattr(api, 'nixl_agent'), importlib.util.find_spec('nixl_cu12') is None]))\n"
    )
    proc = engine.run(ContainerSpec(image=topic_alias("sglang", "pypi"), command=("python", "-c", script)), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == ["nixl_cu13", True, True]


@pytest.mark.topic("sglang")
def test_nixl_moves_memory_and_the_pd_test_reads_ucx_s_own_protocol_table(engine: Engine, build_topic):
    """Two processes' NIXL agents, as the prefill and decode servers hold them, write memory
    over UCX in the sglang image, with UCX_PROTO_INFO=y as the PD test sets it: the bytes and the
    notification arrive, and the PD test's parser finds the remote-write table UCX really
    printed (not one written for the test) and the link it chose (host memory in a container).
    On 2 x H200 the same probe's table named cuda_ipc between the GPUs."""
    need(has_topic("sglang"), "envs/sglang/topic.toml is missing")
    build_topic("sglang")
    spec = ContainerSpec(
        image=topic_alias("sglang", "pypi"),
        command=("python", "/opt/probe/nixl_probe.py", "run", "--memory", "dram", "--linger", "3"),
        volumes=(f"{REPO_ROOT / 'tests' / 'integration' / 'data'}:/opt/probe:ro",),
        env=("UCX_PROTO_INFO=y",),
    )
    proc = engine.run(spec, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "probe memory=dram target_threads=0 UCX_TLS=: PASS" in log, log[-3000:]
    found = sglang_pd.transports(log)
    assert found and sglang_pd.kv_link(found) in ("tcp", "host memory"), (found, log[-3000:])
    assert any(row.startswith("remote memory write by ucp_put* from host memory") for row in sglang_pd.kv_protocols(log)), log[-3000:]
    # notifications travel as active messages: the parser saw them and did not count them
    assert any("active message" in title for title, _ in sglang_pd.ucx_protocols(log))


@pytest.mark.parametrize(("topic", "hangs"), [("sglang", False), ("verl", True)])
def test_the_pd_test_knows_which_installed_sglang_hangs_a_nixl_pair(engine: Engine, build_topic, topic, hangs):
    """The verl topic's SGLang 0.5.12 hangs every NIXL prefill/decode request of a dense model
    (seen on 2 x H200, sgl-project/sglang#25698); the sglang topic's release has the fix. The PD
    test reads the installed code and refuses the first before starting anything."""
    need(has_topic(topic), f"envs/{topic}/topic.toml is missing")
    build_topic(topic)
    script = "import json; from smoke_tests import sglang_pd as s; print(json.dumps(s.known_defect('nixl', s.installed_source('nixl'))))"
    proc = engine.run(with_smoke_tests(topic_alias(topic, "pypi"), f"python -c {shlex.quote(script)}"), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    defect = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (defect is not None and "sgl-project/sglang#25698" in defect) == hangs, defect
