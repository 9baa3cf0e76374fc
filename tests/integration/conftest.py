"""Fixtures over the real engine: the engine, built topic images, running containers."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
import testinfra

from mlsyskit import LABEL_PREFIX, REPO_ROOT
from mlsyskit.data.catalog import load_catalog
from mlsyskit.data.config import load_config
from mlsyskit.engine import ContainerSpec, Engine
from mlsyskit.errors import BuildError, EngineError
from mlsyskit.images.build import LayerResult, build_topics
from mlsyskit.images.plan import topic_alias
from tests.conftest import IN_CI, need

_built: dict[str, list[LayerResult]] = {}


@pytest.fixture(scope="session")
def engine() -> Engine:
    try:
        return Engine.connect()
    except EngineError as exc:
        need(False, f"no Docker engine: {exc}")
        raise


# The suite runs framework group by framework group (see `pytest_collection_modifyitems`
# below): in CI only one group's images are on disk at a time. Measured (BENCHMARKS.md, "CI:
# .ci/run cold"): the largest group, that of the `distributed` topic's framework (four topics,
# arm64, the Slurm tests' image files, verify's rebuild, the nccl-2node stack bundle), peaks
# 34-35 GB above an empty engine.
SUITE_DISK_GB = 38

# Topics whose images are needed together; the first group also holds the topics on no framework
# and every test that names no topic (most of the suite uses `distributed`).
CATALOG = load_catalog()
FIRST_TOPIC = "distributed"


def framework_group_order() -> list[str]:
    first = CATALOG.topic(FIRST_TOPIC).framework or ""
    return [first, *sorted({t.framework for t in CATALOG.topics.values() if t.framework and t.framework != first})]


def topic_of(item: pytest.Item) -> str | None:
    """The topic an integration test builds: `@pytest.mark.topic(name)`, else a parameter
    whose value is a topic's name, else none (the first group's)."""
    marker = item.get_closest_marker("topic")
    if marker:
        return marker.args[0]
    for value in getattr(getattr(item, "callspec", None), "params", {}).values():
        if isinstance(value, str) and value in CATALOG.topics:
            return value
    return None


def group_of(item: pytest.Item) -> int:
    if "tests/integration/" not in str(item.fspath):
        return 0
    topic = topic_of(item)
    framework = (CATALOG.topic(topic).framework if topic else None) or ""
    order = framework_group_order()
    return order.index(framework) if framework in order else 0


@pytest.hookimpl(trylast=True)  # after pytest's own ordering by parametrized fixtures, kept within a group
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Framework group by framework group, each module's tests of a group together and in file
    order: a group's images are built once, and in CI the next group starts on a disk without
    them (three torch frameworks and seven topics are ~32 GB at once, more than CI's disk leaves)."""
    items.sort(key=group_of)


def may_free_disk() -> bool:
    # Only .ci/run, on a machine of its own, says the kit's images may go: CI=true on a shared
    # machine (several people's images on one engine) must not remove them.
    return IN_CI and os.environ.get("KIT_SUITE_MAY_FREE_DISK") == "1"


def free_the_kit_images(engine: Engine, *, keep_kinds: tuple[str, ...] = ()) -> int:
    """Remove the kit's images (but those of `keep_kinds`) and BuildKit's records that hold
    their layers; every test rebuilds what it needs (build_topic forgets what it built)."""
    images = [i for i in engine.images(f"{LABEL_PREFIX}.kind") if i.labels.get(f"{LABEL_PREFIX}.kind") not in keep_kinds]
    engine.remove_images(image.id for image in images)
    engine.prune_build_cache()
    _built.clear()
    return len(images)


_group_on_disk: list[int] = []


@pytest.hookimpl(tryfirst=True)  # before any fixture of the test: a module fixture may build its image
def pytest_runtest_setup(item: pytest.Item) -> None:
    """In CI, when the suite moves to the next framework group, the last group's images go (the
    root filesystems and base layers stay: every group builds on them). The last test's
    module fixtures have ended by now; a container still running keeps its image."""
    group = group_of(item)
    if _group_on_disk and _group_on_disk[-1] != group and may_free_disk():
        try:
            engine = Engine.connect()
        except EngineError:
            return
        removed = free_the_kit_images(engine, keep_kinds=("rootfs", "base"))
        reporter = item.config.pluginmanager.get_plugin("terminalreporter")
        capture = item.config.pluginmanager.get_plugin("capturemanager")
        if reporter is not None and capture is not None:
            with capture.global_and_fixture_disabled():  # on the terminal, not in the test's captured output
                reporter.write_line(f"framework group {framework_group_order()[group] or 'none'}: removed the last group's {removed} image(s) of the kit")
    _group_on_disk.append(group)


@pytest.fixture(scope="session", autouse=True)
def enough_disk_for_the_suite(no_stack_left_from_before: None) -> None:  # leftover containers go first
    """A CI machine that holds an earlier run's images (the kit's own, from a run on the same
    disk) fails late and obscurely: uv or dockerd run out of space in a build half an hour in.
    In CI, when the engine's disk has less than the suite needs, the kit's images and the build
    cache go first (they are caches: every test rebuilds what it needs); a disk still too
    small stops the run at once with one line. Elsewhere they may be the user's: only a warning."""
    try:
        engine = Engine.connect()
    except EngineError:
        return
    root = engine.daemon().root_dir or "/var/lib/docker"

    def free_gb() -> float:
        return shutil.disk_usage(root).free / 1e9

    if free_gb() >= SUITE_DISK_GB:
        return
    if not may_free_disk():
        # A note, not a warning: the suite turns warnings into errors, and a few tests fit anyway
        print(
            f"note: {free_gb():.0f} GB free under {root}; a cold run of the whole suite needs about {SUITE_DISK_GB} GB (`invoke clean` frees the kit's images)",
            file=sys.__stderr__,
        )
        return
    before = free_gb()
    removed = free_the_kit_images(engine)
    print(f"only {before:.0f} GB free under {root}: removed {removed} image(s) of the kit and the build cache, now {free_gb():.0f} GB free")
    if free_gb() < SUITE_DISK_GB:
        pytest.exit(f"{free_gb():.0f} GB free under {root}, the suite needs about {SUITE_DISK_GB} GB: free disk space and run again", returncode=3)


@pytest.fixture(scope="session", autouse=True)
def no_stack_left_from_before() -> None:
    """The stack and smoke tests assert that they leave nothing behind, and `invoke up` refuses
    a stack that is already up: a run killed half-way (a lost machine, a ^C) must not fail the
    next one. In CI its leftovers are removed; on a user's machine they may be the user's own
    stacks, so the run stops and says what to take down."""
    from mlsyskit.checks.smoke import LABEL as SMOKE_LABEL
    from mlsyskit.compose.stacks import PROJECT_PREFIX, stack_names

    try:
        engine = Engine.connect()
    except EngineError:
        return  # the tests that need an engine say so themselves
    found = {PROJECT_PREFIX + name: engine.project_resources(PROJECT_PREFIX + name) for name in stack_names()}
    found = {project: left for project, left in found.items() if any(left.values())}
    smoke = [c.id for c in engine.containers(SMOKE_LABEL)]
    if not found and not smoke:
        return
    what = ", ".join([*found, *(["smoke containers " + " ".join(smoke)] if smoke else [])])
    if not IN_CI:
        fix = "; ".join([*(f"invoke down {p.removeprefix(PROJECT_PREFIX)}" for p in found), *(["docker rm -f " + " ".join(smoke)] if smoke else [])])
        pytest.exit(f"left from an earlier run: {what}; remove them (`{fix}`) and run the tests again", returncode=3)
    print(f"removing what an earlier run left: {what}")
    for project in found:
        engine.remove_project_resources(project)
    engine.remove_containers(smoke)


@pytest.fixture(scope="session")
def build_topic(engine: Engine):
    """build_topic(name) -> the layer results; each topic is built once per session."""

    def build(name: str, base: str = "pypi") -> list[LayerResult]:
        key = f"{name}:{base}"
        if key not in _built:
            catalog, config = load_catalog(), load_config()
            try:
                _built[key] = build_topics(engine, catalog, config, [catalog.topic(name)], base_name=base, log=print)
            except BuildError as exc:  # the failing step's own lines, not only "it failed"
                pytest.fail(f"{exc}\n{exc.log_tail}", pytrace=False)
        return _built[key]

    return build


@pytest.fixture(scope="session")
def nccl_2node_bundle(build_topic, tmp_path_factory) -> Iterator[Path]:
    """`invoke bundle nccl-2node`, written once per session (the distributed image and its
    parents, ~6 GB): the bundle tests load it, the Slurm tests take the image from it (the
    last user, which deletes it: pytest keeps its temporary folders, and CI's disk counts)."""
    build_topic("distributed")
    path = tmp_path_factory.mktemp("stack-bundle") / "nccl-2node.bundle"
    proc = run_kit("bundle", "nccl-2node", "-o", str(path), timeout=1800)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    yield path
    path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def topic_container(engine: Engine, build_topic):
    """topic_container(name) -> a testinfra host on a running container of the topic, owned
    by the engine's context manager until the module's run of tests ends (a running container
    keeps its image on disk)."""
    with ExitStack() as owned:

        def start(name: str, base: str = "pypi") -> testinfra.host.Host:
            build_topic(name, base)
            from mlsyskit.runtime.shell import platform_of

            spec = ContainerSpec(
                image=topic_alias(name, base), command=("sleep", "infinity"), name=f"mlsyskit-test-{name}-{uuid.uuid4().hex[:8]}", platform=platform_of(base)
            )
            container = owned.enter_context(engine.container(spec))
            return testinfra.get_host(f"docker://{container.name}")

        yield start


def run_kit(*args: str, env: dict[str, str] | None = None, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    """Run the real CLI (`invoke ...`) as a user would, from the repo root."""
    import os
    import sys

    from mlsyskit import REPO_ROOT

    invoke = [sys.executable, "-m", "invoke"]
    return subprocess.run([*invoke, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def iter_lines(text: str) -> Iterator[str]:
    yield from (line for line in text.splitlines() if line.strip())


# --- a non-root user in the docker group, running the CLI as users do (the shell and devcontainer tests)

TEST_USER = "mlsyskit-test"


@dataclass(frozen=True)
class KitUser:
    name: str
    uid: int
    gid: int
    home: Path
    groups: tuple[int, ...]
    python: str
    pythonpath: str
    switch: bool  # whether the CLI must be started as this user (the suite runs as root)


def _runs_as(user: KitUser, python: str) -> bool:
    try:
        proc = _try_python(user, python)
    except OSError:  # the user may not even reach the file
        return False
    return proc.returncode == 0


def _try_python(user: KitUser, python: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [python, "-c", "import invoke, mlsyskit.runtime.shell"],
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": user.pythonpath, "HOME": str(user.home)},
        cwd="/",
        capture_output=True,
        **_identity(user),
    )


def _identity(user: KitUser) -> dict:
    return {"user": user.uid, "group": user.gid, "extra_groups": list(user.groups)} if user.switch else {}


@pytest.fixture(scope="session")
def kit_user() -> KitUser:
    """A non-root user in the docker group, and a Python it can run the kit with."""
    pythonpath = os.pathsep.join([str(REPO_ROOT), sysconfig.get_paths()["purelib"]])
    if os.geteuid() != 0:
        me = pwd.getpwuid(os.geteuid())
        return KitUser(me.pw_name, me.pw_uid, me.pw_gid, Path(me.pw_dir), tuple(os.getgroups()), sys.executable, pythonpath, False)
    try:
        docker_gid = grp.getgrnam("docker").gr_gid
    except KeyError:
        need(False, "no `docker` group on this machine: cannot run the CLI as a non-root docker user")
        raise
    try:
        pwd.getpwnam(TEST_USER)
    except KeyError:
        need(shutil.which("useradd") is not None, "useradd is missing: cannot create the non-root test user")
        subprocess.run(["useradd", "--create-home", "--groups", "docker", TEST_USER], check=True)
    entry = pwd.getpwnam(TEST_USER)
    home = Path(entry.pw_dir)
    home.mkdir(exist_ok=True)
    os.chown(home, entry.pw_uid, entry.pw_gid)
    user = KitUser(TEST_USER, entry.pw_uid, entry.pw_gid, home, (docker_gid,), "", pythonpath, True)
    # The suite's own interpreter may sit where the user cannot reach it (/root/.pyenv):
    # then the distribution's Python of the same minor version runs the kit's sources.
    candidates = [sys.executable, f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}", "/usr/bin/python3"]
    python = next((p for p in candidates if os.path.exists(p) and _runs_as(user, p)), "")
    need(bool(python), f"no Python that user {TEST_USER} can run the kit with (tried {', '.join(candidates)})")
    return KitUser(**{**user.__dict__, "python": python})


def shared_dir(user: KitUser, prefix: str) -> Path:
    """A directory under /tmp that belongs to the test user (pytest's tmp_path is root's, 0700)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    if user.switch:
        os.chown(path, user.uid, user.gid)
    return path


def scratch_kit_tree(user: KitUser, topic: str, topic_toml: str) -> Path:
    """A kit tree (MLSYSKIT_ROOT) for `user`: the real images/, kit.toml, uv.lock (the base's
    uv is hash-pinned from it) and kit.local.toml (the same mirrors: the same base layer), and
    one topic with this topic.toml and an empty lock: building it reuses the layers below and
    adds a topic layer in seconds."""
    root = shared_dir(user, "mlsyskit-tree-")
    shutil.copytree(REPO_ROOT / "images", root / "images")
    for name in ("kit.toml", "uv.lock", "kit.local.toml"):
        if (REPO_ROOT / name).exists():
            shutil.copy(REPO_ROOT / name, root / name)
    env = root / "envs" / topic
    env.mkdir(parents=True)
    (env / "topic.toml").write_text(topic_toml)
    (env / "pyproject.toml").write_text(
        f'[project]\nname = "{topic}"\nversion = "0"\nrequires-python = ">=3.11"\ndependencies = []\n\n[tool.uv]\npackage = false\n'
    )
    (env / "uv.lock").write_text(
        f'version = 1\nrevision = 3\nrequires-python = ">=3.11"\n\n[[package]]\nname = "{topic}"\nversion = "0"\nsource = {{ virtual = "." }}\n'
    )
    for path in [root, *root.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o055)
    return root


def user_env(user: KitUser, extra: dict[str, str] | None = None) -> dict[str, str]:
    """A user's plain environment (not the suite's), plus `extra`."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(user.home),
        "USER": user.name,
        "LOGNAME": user.name,
        "LANG": "C.UTF-8",
        "PYTHONPATH": user.pythonpath,
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    for key in ("DOCKER_HOST", "CI"):
        if key in os.environ:
            env[key] = os.environ[key]
    return {**env, **(extra or {})}


def kit(user: KitUser, *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600, **io) -> subprocess.CompletedProcess[str]:
    """`invoke ARGS` as `user`, from `cwd`; stdin is /dev/null unless `input` or `stdin` says."""
    if "input" not in io:
        io.setdefault("stdin", subprocess.DEVNULL)
    if "stdout" not in io:
        io["capture_output"] = True
    return subprocess.run(
        [user.python, "-m", "invoke", "-r", str(REPO_ROOT), *args],
        cwd=cwd,
        env=user_env(user, env),
        text=True,
        timeout=timeout,
        **io,
        **_identity(user),
    )
