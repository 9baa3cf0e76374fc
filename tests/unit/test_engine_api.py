"""The engine's clients against a recording socket in place of the daemon (DOCKER_HOST=unix://):
every byte a lookup puts on the socket is kept, so a ref that smuggles a second request
(CR/LF), walks the API's paths (`../`) or cuts the path (`?`, `#`, spaces) shows as more than
one request line or as a path that is not the image's. Each lookup is exactly one request
with the ref escaped, or refused with one line before anything is sent."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from mlsyskit.engine import Client, Engine
from mlsyskit.errors import UsageError
from tests.unit.recording import RecordingDaemon


@pytest.fixture
def daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RecordingDaemon]:
    recorder = RecordingDaemon(tmp_path / "docker.sock")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{recorder.path}")
    monkeypatch.delenv("DOCKER_CONTEXT", raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))  # no CLI context of the user's
    yield recorder
    recorder.close()


HOSTILE = {
    "CR/LF": "mlsyskit/docs:pypi\r\nPOST /containers/create HTTP/1.1\r\nHost: docker\r\n\r\n",
    "LF": "mlsyskit/docs:pypi\nx",
    "../": "../../containers/json",
    "../ in a tag": "mlsyskit/docs:../../x",
    "?": "mlsyskit/docs:pypi?all=1",
    "#": "mlsyskit/docs#pypi",
    "space": "mlsyskit/docs pypi",
    "very long": "mlsyskit/" + "a" * 5000,
    "long tag": "mlsyskit/docs:" + "a" * 200,
    "foreign letters": "mlsyskit/dоcs:pypi",  # a Cyrillic o
    "NUL": "mlsyskit/docs\x00:pypi",
    "percent": "mlsyskit/docs%2F..%2Fx",
    "empty": "",
}
VALID = ["mlsyskit/docs:pypi", "sha256:" + "a" * 64, "localhost:5000/team/image:v1.2", "mlsyskit/docs:pypi@sha256:" + "b" * 64]


def lookups(daemon: RecordingDaemon) -> list[tuple[str, str]]:
    return [r for r in daemon.requests() if not r[1].endswith(("/_ping", "/version"))]


@pytest.mark.parametrize("what", sorted(HOSTILE))
def test_a_hostile_ref_is_refused_before_any_request(daemon, what):
    engine = Engine(Client("docker", "", buildx=False))
    engine.server_version()  # the SDK connects (GET /version) before the count starts
    daemon.clear()
    ref = HOSTILE[what]
    for ask in (engine.image, engine.image_exists, lambda r: engine.tag("mlsyskit/docs:pypi", r), lambda r: engine.remove_images([r])):
        with pytest.raises(UsageError) as caught:
            ask(ref)
        assert "\n" not in str(caught.value) and "\r" not in str(caught.value)
    with pytest.raises(UsageError):
        engine.container_info(ref)
    assert daemon.requests() == [] and daemon.received == [], daemon.received


@pytest.mark.parametrize("ref", VALID)
def test_a_lookup_is_exactly_one_request_with_the_ref_escaped(daemon, ref):
    engine = Engine(Client("docker", "", buildx=False))
    engine.server_version()
    daemon.clear()
    assert engine.image(ref) is None  # the recording daemon has no images
    assert daemon.requests() == [("GET", f"/v1.41/images/{quote(ref, safe='/:')}/json")]


def test_the_sdk_engine_sends_nothing_but_lookups_for_lookups(daemon):
    engine = Engine(Client("docker", "", buildx=False))
    assert engine.image("mlsyskit/docs:pypi") is None and engine.container_info("mlsyskit-x") is None
    methods = {m for m, _ in daemon.requests()}
    assert methods == {"GET"}, daemon.requests()
    assert [p for _, p in lookups(daemon)] == ["/v1.41/images/mlsyskit/docs:pypi/json", "/v1.41/containers/mlsyskit-x/json"]


def test_the_shells_cli_lookups_refuse_the_same_refs_and_ask_once(daemon):
    """`invoke shell`'s engine asks the docker CLI (no SDK import on its start-up): the same
    refs are refused before the CLI starts, and a valid one is one lookup."""
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker CLI on this machine")
    engine = Engine(Client(docker, "", buildx=False), cli_lookups=True)
    for ref in HOSTILE.values():
        with pytest.raises(UsageError):
            engine.image(ref)
    assert daemon.requests() == []
    assert engine.image("mlsyskit/docs:pypi") is None
    assert [r for r in lookups(daemon) if r[0] != "HEAD"] == [("GET", "/v1.41/images/mlsyskit/docs:pypi/json")]


def test_the_shells_lookup_is_under_way_before_its_answer_is_read(daemon):
    """`./kit shell` asks for its image while it resolves the command and reads the answer
    only where the image stage needs it: the CLI's request reaches the daemon without the
    answer being read, and reading it twice asks once."""
    import time

    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker CLI on this machine")
    engine = Engine(Client(docker, "", buildx=False), cli_lookups=True)
    answer = engine.image_soon("mlsyskit/docs:pypi")
    deadline = time.monotonic() + 10
    while not lookups(daemon) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [r for r in lookups(daemon) if r[0] != "HEAD"] == [("GET", "/v1.41/images/mlsyskit/docs:pypi/json")]
    assert answer() is None and answer() is None  # the recording daemon has no images
    daemon.settle()
    assert [r for r in lookups(daemon) if r[0] != "HEAD"] == [("GET", "/v1.41/images/mlsyskit/docs:pypi/json")]


def test_the_shells_engine_does_not_import_the_sdk():
    """`./kit shell`'s start-up (the kit's own line: python -I -S, the kit only): importing
    the engine and looking an image up through `Engine.for_running` must not load the SDK
    (~0.3 s), and the stages after the image lookup (runtime/shell.py, the host's facts, the
    plan with hashlib's OpenSSL, tomllib, the kernel caches) load after it has started, not
    before (BENCHMARKS.md, "the shell's start-up")."""
    proc = fast_path_python(
        "import mlsyskit.runtime.shell_cli, mlsyskit.engine; print(sorted(m for m in sys.modules if m.split('.')[0] in ('docker', 'requests', 'urllib3')))"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
    later = (
        "hashlib", "tomllib", "tempfile", "datetime", "mlsyskit.images.plan", "mlsyskit.images.ensure", "mlsyskit.runtime.caches",
        "mlsyskit.runtime.shell", "mlsyskit.runtime.host", "mlsyskit.runtime.secrets",
    )  # fmt: skip
    proc = fast_path_python(f"import mlsyskit.runtime.shell_cli; print(sorted(m for m in {later!r} if m in sys.modules))")
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def fast_path_python(script: str) -> subprocess.CompletedProcess[str]:
    """`script` run the way `./kit shell` runs the kit: the environment's python, isolated
    (-I), without site-packages (-S), the checkout first on the path."""
    from mlsyskit import REPO_ROOT

    assert '.venv/bin/python" -I -S -c' in (REPO_ROOT / "kit").read_text(), "./kit starts the shell otherwise now: follow it here"
    code = f"import sys; sys.path.insert(0, sys.argv.pop(1)); {script}"
    return subprocess.run([sys.executable, "-I", "-S", "-c", code, str(REPO_ROOT)], cwd=REPO_ROOT, capture_output=True, text=True)


def test_a_build_started_from_the_shells_fast_path_still_finds_the_sdk():
    """`./kit shell` runs with `python -S` (no site-packages); when its image is missing it
    builds, and the build's engine needs the SDK: it is found then, and only then."""
    proc = fast_path_python("from mlsyskit.engine import api; api._load_sdk(); import docker; print(docker.__version__)")
    assert proc.returncode == 0 and proc.stdout.startswith("7."), proc.stderr
