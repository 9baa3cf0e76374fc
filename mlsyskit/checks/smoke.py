"""`invoke smoke TOPIC|all`: run each topic's smoke tests (envs/<topic>/topic.toml,
`[run] smoke_tests`) inside the topic's container, collect their JSON results, print one
table and exit non-zero when any failed.

Each test is `python -m smoke_tests.<name> --json ...` from the checkout's smoke_tests/,
mounted read-only at /opt/mlsyskit/smoke_tests with PYTHONPATH pointing there (nothing is
baked into the images, so a changed test needs no rebuild). The container is the one
`invoke shell TOPIC -- CMD` would start (mlsyskit.runtime.shell's arguments: GPUs, --ipc=host, the
ulimits, the HF cache, the invoking user), plus a name and a label so that a test that
outlives its limit, or a Ctrl-C, removes it. A topic whose `[run] stacks` holds a stack the
kit can read a result from (`nccl-2node`) also runs that stack: two containers as two
nodes, through `mlsyskit.compose.stacks`, always taken down afterwards.

Each test judges its measurements against its gates (thresholds declared in its `SMOKE`,
smoke_tests/_gates.py), applied by default and printed with what was measured under the
table; `--no-gates` and `--gate [TEST.]NAME=VALUE` change them for every test that has them,
and a switch gate with `on_when_locked` (cuda_jit's flashinfer) is turned on for topics
whose lock holds that package.

The tests themselves decide pass, fail or skip. A GPU test without a GPU is skipped, with
the reason, never passed, unless GPUs were asked for: on a host with GPUs (and without
--cpu), or with --require-gpu, every test gets `--require-gpu` and "no GPU visible inside
the container" is a failure that names what to check. This module only adds what happens
around them: no result file, a container that ran past its limit, an image that would not
build, a skip where GPUs were asked for."""

from __future__ import annotations

import functools
import importlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlsyskit import LABEL_PREFIX, REPO_ROOT
from mlsyskit.compose import stacks
from mlsyskit.context import Context
from mlsyskit.data.catalog import Topic
from mlsyskit.data.lockfile import normalize, read_packages
from mlsyskit.engine import ContainerSpec, Engine
from mlsyskit.errors import BuildError, EngineError, KitError, StackError, UsageError
from mlsyskit.images.ensure import TopicImage, ensure_image
from mlsyskit.report import table
from mlsyskit.runtime import secrets
from mlsyskit.runtime.gpus import choose_gpus, host_has_gpus, query_gpus
from mlsyskit.runtime.host import memlock_allowed, read_host
from mlsyskit.runtime.shell import ShellOptions, kernel_cache, one_off_spec, secret_values
from smoke_tests.schema import FAILED, PASSED, SKIPPED, SmokeTest, Value, validate_result

Log = Callable[[str], None]

SMOKE_DIR = "smoke_tests"
IN_CONTAINER = "/opt/mlsyskit"
LABEL = f"{LABEL_PREFIX}.smoke"
#: A container gets its test's own time limit (``SmokeTest.timeout``) plus this before the
#: kit removes it: container start-up, torchrun's own margins, writing the result.
MARGIN = 180
#: Tests that take a model (`invoke smoke --model`).
TAKES_MODEL = ("sglang_serve", "sglang_pd")


@dataclass(frozen=True)
class StackVariant:
    """A stack that runs a smoke test across containers, and where its result lands."""

    test: str
    service: str  # the container holding the result
    result_path: str  # inside that container
    args_env: str  # the variable the stack passes on to the test as extra arguments


#: The stacks `invoke smoke` knows how to read (compose/scripts/nccl_node.sh writes there).
STACK_VARIANTS = {"nccl-2node": StackVariant("nccl", "node-0", "/tmp/nccl-result.json", "NCCL_TEST_ARGS")}


@dataclass(frozen=True, kw_only=True)
class SmokeOptions:
    topics: str  # comma-separated names or `all`
    cpu: bool = False
    gpus: str = ""
    json_path: str = ""
    timeout: float = 0  # per test; 0: each test's default
    tests: str = ""  # comma-separated: these instead of the topics' lists
    model: str = ""
    base: str = ""
    stacks: bool = True  # also the stack variants
    # GPUs were asked for: no GPU visible is a failure. `smoke` sets it where the host has
    # GPUs and --cpu is not given; `--require-gpu` sets it anywhere.
    require_gpu: bool = False
    no_gates: bool = False  # every test's gates off (correctness only)
    gates: tuple[str, ...] = ()  # `[TEST.]NAME=VALUE`, each passed to the tests that have that gate


@dataclass(frozen=True, kw_only=True)
class PlannedRun:
    topic: str
    test: str
    where: str  # "container" or a stack name
    command: tuple[str, ...]  # in the container (for a stack: the extra test arguments)
    limit: float  # seconds before the kit stops it
    require_gpu: bool = False

    @property
    def label(self) -> str:
        return self.test if self.where == "container" else f"{self.test} ({self.where})"


@dataclass
class Outcome:
    run: PlannedRun
    result: dict[str, Any]
    image: str = ""
    seconds: float = 0.0

    @property
    def status(self) -> str:
        return str(self.result.get("status", FAILED))


@dataclass
class SmokeReport:
    outcomes: list[Outcome] = field(default_factory=list)
    results_dir: Path | None = None
    interrupted: bool = False

    def counts(self) -> dict[str, int]:
        counts = {PASSED: 0, FAILED: 0, SKIPPED: 0}
        for outcome in self.outcomes:
            counts[outcome.status if outcome.status in counts else FAILED] += 1
        return counts

    @property
    def exit_code(self) -> int:
        """0 when nothing failed (passed or skipped); 1 when a test failed; 130 on Ctrl-C."""
        if self.interrupted:
            return 130
        return 1 if self.counts()[FAILED] else 0


# --- pure: planning -------------------------------------------------------------------------


@functools.cache
def registry(root: Path = REPO_ROOT) -> dict[str, SmokeTest]:
    """Every smoke test in smoke_tests/: the modules that declare ``SMOKE`` (their name, own
    time limit and key figure). Helpers (tiny_model) and the benchmark reference
    (reference_allreduce) declare none. The modules import no torch at load time."""
    found: dict[str, SmokeTest] = {}
    for path in sorted((root / SMOKE_DIR).glob("*.py")):
        if path.stem.startswith("_"):
            continue
        declared = getattr(importlib.import_module(f"{SMOKE_DIR}.{path.stem}"), "SMOKE", None)
        if isinstance(declared, SmokeTest):
            found[declared.name] = declared
    return found


def available_tests() -> list[str]:
    return sorted(registry())


def split(value: str) -> list[str]:
    return [n for n in value.replace(",", " ").split() if n]


@dataclass(frozen=True)
class GateOverride:
    """One `--gate [TEST.]NAME=VALUE`, checked against the gates the tests declare."""

    test: str  # "" for every test that has the gate
    name: str
    value: Value


def parse_gates(items: Sequence[str], tests: Mapping[str, SmokeTest]) -> list[GateOverride]:
    """Each `--gate` checked before anything runs: the gate must exist in some test (or the
    one named), and its value must be one the gate takes. The values go into the tests'
    command lines (and the two-node stack's), so only what a gate accepts gets there."""
    out = []
    for item in items:
        target, sep, value = item.partition("=")
        test, _, name = target.strip().rpartition(".")
        having = {t: s for t, s in tests.items() if any(g.name == name for g in s.gates) and (not test or t == test)}
        every = sorted({f"{t}.{g.name}" for t, s in tests.items() for g in s.gates})
        if not sep or not name:
            raise UsageError(f"--gate {item!r}: give NAME=VALUE or TEST.NAME=VALUE", fix=f"gates: {', '.join(every)}")
        if test and test not in tests:
            raise UsageError(f"--gate {item}: no smoke test '{test}'", fix=f"smoke_tests/ has: {', '.join(sorted(tests))}")
        if not having:
            raise UsageError(f"--gate {item}: no test {'named ' + test + ' ' if test else ''}has a gate '{name}'", fix=f"gates: {', '.join(every)}")
        gate = next(g for g in next(iter(having.values())).gates if g.name == name)
        try:
            parsed = gate.parse(value)
        except ValueError as exc:
            raise UsageError(f"--gate {item}: {exc}", fix=gate.describe()) from None
        out.append(GateOverride(test, name, parsed))
    return out


def gate_args(test: str, topic: Topic | None, opts: SmokeOptions, overrides: Sequence[GateOverride]) -> list[str]:
    """The gate arguments of one test in one topic: --no-gates, the gates the topic's lock
    switches on, then the user's `--gate`s that reach this test, in order."""
    declared = registry()[test].gates if test in registry() else ()
    if not declared:
        return []
    args = ["--no-gates"] if opts.no_gates else []
    given = {o.name for o in overrides if not o.test or o.test == test}
    if topic is not None and not opts.no_gates:
        locked = _locked_packages(topic.lock_path)
        for gate in declared:
            if gate.on_when_locked and gate.name not in given and normalize(gate.on_when_locked) in locked:
                args += ["--gate", f"{gate.name}=on"]
    for override in overrides:
        target = next((g for g in declared if g.name == override.name), None)
        if target is not None and (not override.test or override.test == test):
            args += ["--gate", f"{target.name}={target.format(override.value)}"]
    return args


@functools.cache
def _locked_packages(lock: Path) -> frozenset[str]:
    return frozenset(read_packages(lock)) if lock.is_file() else frozenset()


def passed_on(opts: SmokeOptions) -> list[str]:
    """The options `invoke smoke` hands to every test as they are: --cpu, --require-gpu, --timeout."""
    args = ["--cpu"] if opts.cpu else []
    if opts.require_gpu:
        args.append("--require-gpu")
    if opts.timeout:
        args += ["--timeout", f"{opts.timeout:g}"]
    return args


def test_args(test: str, opts: SmokeOptions, json_in_container: str, gates: Sequence[str] = ()) -> tuple[str, ...]:
    args = ["--json", json_in_container, *gates, *passed_on(opts)]
    if opts.model and test in TAKES_MODEL:
        args += ["--model", opts.model]
    return tuple(args)


def limit_for(test: str, opts: SmokeOptions) -> float:
    return (opts.timeout or registry()[test].timeout) + MARGIN


def plan(topics: Sequence[Topic], opts: SmokeOptions, known: Sequence[str]) -> list[PlannedRun]:
    """Every run, in order: each topic's tests in its container, then its stack variants."""
    chosen = split(opts.tests)
    for name in chosen:
        if name not in known:
            raise UsageError(f"no smoke test '{name}'", fix=f"smoke_tests/ has: {', '.join(known)}")
    overrides = parse_gates(opts.gates, {name: test for name, test in registry().items() if name in known})
    runs = []
    for topic in topics:
        for test in chosen or topic.smoke_tests:
            if test not in known:
                raise UsageError(
                    f"envs/{topic.name}/topic.toml names smoke test '{test}', and smoke_tests/{test}.py does not exist",
                    fix=f"smoke_tests/ has: {', '.join(known)}",
                )
            json_path = f"/workspace/{test}.json"
            gates = gate_args(test, topic, opts, overrides)
            command = ("python", "-m", f"{SMOKE_DIR}.{test}", *test_args(test, opts, json_path, gates))
            runs.append(PlannedRun(
                topic=topic.name, test=test, where="container", command=command, limit=limit_for(test, opts),
                require_gpu=opts.require_gpu,
            ))  # fmt: skip
        if not opts.stacks:
            continue
        for stack in topic.stacks:
            variant = STACK_VARIANTS.get(stack)
            if variant is None or (chosen and variant.test not in chosen):
                continue
            extra = (*(("--timeout", f"{opts.timeout:g}") if opts.timeout else ()), *gate_args(variant.test, topic, opts, overrides))
            runs.append(PlannedRun(
                topic=topic.name, test=variant.test, where=stack, command=extra, limit=limit_for(variant.test, opts),
                require_gpu=opts.require_gpu,
            ))  # fmt: skip
    return runs


def select_topics(names: str, all_topics: Mapping[str, Topic], tests: str) -> list[Topic]:
    """`all`: every topic with a smoke test (or a stack variant); else the topics named."""
    wanted = split(names)
    if not wanted:
        raise UsageError("no topic given", fix="invoke smoke TOPIC (comma-separated) or invoke smoke all")
    if wanted == ["all"]:
        found = [t for _, t in sorted(all_topics.items()) if t.smoke_tests or any(s in STACK_VARIANTS for s in t.stacks)]
        if not found:
            raise UsageError("no topic lists a smoke test", fix="add `smoke_tests = [...]` under [run] in envs/<topic>/topic.toml")
        return found
    out = []
    for name in wanted:
        if name not in all_topics:
            raise UsageError(f"unknown topic '{name}'", fix=f"known topics: {', '.join(sorted(all_topics))}")
        topic = all_topics[name]
        if not topic.smoke_tests and not tests and not any(s in STACK_VARIANTS for s in topic.stacks):
            raise UsageError(f"topic {name} lists no smoke test", fix=f"`--tests NAME` runs one in its image; envs/{name}/topic.toml [run] smoke_tests")
        out.append(topic)
    return out


# --- pure: results and the table ----------------------------------------------------------


def made_up(test: str, status: str, reason: str, seconds: float = 0.0) -> dict[str, Any]:
    """A result in the smoke tests' schema for what happened around a test."""
    return {"test": test, "status": status, "reason": reason, "seconds": round(seconds, 3), "figures": {}, "environment": {}}


def judge(run: PlannedRun, data: dict[str, Any] | None, returncode: int | None, timed_out: bool, seconds: float, last_line: str) -> dict[str, Any]:
    """The result to report: the test's own, unless what happened around it says otherwise."""
    if data is not None:
        problems = validate_result(data)
        if problems:
            return made_up(run.test, FAILED, f"the result file breaks the schema: {problems[0]}", seconds)
        if timed_out:
            return {**data, "status": FAILED, "reason": f"the container ran past {run.limit:g} s and was removed"}
        expected = 1 if data["status"] == FAILED else 0
        if returncode is not None and returncode != expected:
            return {**data, "status": FAILED, "reason": f"{data['reason'] or data['status']}; the container exited with {returncode}"}
        if run.require_gpu and data["status"] == SKIPPED and not (data.get("environment") or {}).get("cuda_available"):
            # A test that does not know --require-gpu (or ignored it) still cannot pass a
            # missing GPU off as a skip where GPUs were asked for.
            return {**data, "status": FAILED, "reason": f"GPUs were asked for, but the test saw none ({data['reason']}); check `invoke doctor`"}
        return data
    if timed_out:
        return made_up(run.test, FAILED, f"no result: the container ran past {run.limit:g} s and was removed", seconds)
    return made_up(run.test, FAILED, f"no result (exit {returncode}): {last_line or 'no output'}", seconds)


def key_figure(test: str, figures: Mapping[str, Any]) -> str:
    """The one number a reader looks for in a test's figures, as the test itself defines it
    ('-' when there is none, or for a test the registry does not know)."""
    found = registry().get(test)
    return found.figure(figures) if found else "-"


def shorten(text: str, width: int = 90) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def table_rows(outcomes: Sequence[Outcome]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for outcome in outcomes:
        result = outcome.result
        status = outcome.status
        shown = status if status == PASSED or not result.get("reason") else f"{status}: {shorten(result['reason'])}"
        took = outcome.seconds or float(result.get("seconds") or 0)  # wall time, container start included
        rows.append((outcome.run.label, outcome.run.topic, shown, key_figure(outcome.run.test, result.get("figures") or {}), f"{took:.1f}s"))
    return rows


def gate_rows(outcomes: Sequence[Outcome]) -> list[tuple[str, ...]]:
    """Each gate a test applied, with what it measured (and every failed check)."""
    rows: list[tuple[str, ...]] = []
    for outcome in outcomes:
        for verdict in outcome.result.get("verdicts") or []:
            if not isinstance(verdict, dict) or not (verdict.get("gate") or verdict.get("status") == FAILED):
                continue
            shown = str(verdict.get("status", ""))
            if verdict.get("detail") and shown != PASSED:
                shown += f": {shorten(str(verdict['detail']), 70)}"
            rows.append((
                outcome.run.label, outcome.run.topic, str(verdict.get("name", "")), shorten(str(verdict.get("measured") or "-"), 50),
                shorten(str(verdict.get("expected") or "-"), 50), shown,
            ))  # fmt: skip
    return rows


def render(report: SmokeReport) -> str:
    counts = report.counts()
    text = table(("test", "topic", "result", "key figure", "time"), table_rows(report.outcomes))
    gates = gate_rows(report.outcomes)
    if gates:
        text += "\n\n" + table(("test", "topic", "gate", "measured", "expected", "verdict"), gates)
    summary = f"{counts[PASSED]} passed, {counts[FAILED]} failed, {counts[SKIPPED]} skipped"
    if counts[SKIPPED]:
        summary += " (a skipped test did not run: it is not a pass)"
    if report.interrupted:
        summary += "; interrupted"
    if report.results_dir:
        summary += f"\nresults: {report.results_dir}"
    return f"{text}\n{summary}"


def report_json(report: SmokeReport, opts: SmokeOptions, started: str) -> dict[str, Any]:
    """--json PATH: every result (each in the smoke tests' schema) with where it ran."""
    return {
        "command": "invoke smoke " + " ".join(a for a in _argv(opts)),
        "started": started,
        "exit_code": report.exit_code,
        "counts": report.counts(),
        "results": [{"topic": o.run.topic, "where": o.run.where, "image": o.image, "result": o.result} for o in report.outcomes],
    }


def _argv(opts: SmokeOptions) -> list[str]:
    """The `invoke smoke` command line these options came from (recorded with the results)."""
    argv = [opts.topics]
    for flag, value in (("--gpus", opts.gpus), ("--tests", opts.tests), ("--model", opts.model), ("--base", opts.base)):
        if value:
            argv += [flag, value]
    argv += ["--no-gates"] if opts.no_gates else []
    for gate in opts.gates:
        argv += ["--gate", gate]
    argv += passed_on(opts)
    if opts.json_path:
        argv += ["--json", opts.json_path]
    return argv


# --- doing it -------------------------------------------------------------------------------


def _last_line(lines: Sequence[str]) -> str:
    for line in reversed(lines):
        if line.strip():
            return line.strip()[:300]
    return ""


def run_in_container(engine: Engine, run: PlannedRun, spec: ContainerSpec, workspace: Path, run_id: str, log: Log) -> dict[str, Any]:
    """One test in its container (the one `invoke shell TOPIC -- CMD` would start, named and
    labelled for this run); the container is removed however the run ends."""
    name = f"mlsyskit-smoke-{run.topic}-{run.test}-{uuid.uuid4().hex[:8]}".replace("_", "-")
    spec = replace(spec, name=name, labels={**spec.labels, LABEL: run_id}, remove=False, interactive=False, tty=False)
    lines: list[str] = []

    def on_line(line: str) -> None:
        lines.append(line)
        del lines[:-200]
        log(f"  | {line}")

    result_file = workspace / f"{run.test}.json"
    result_file.unlink(missing_ok=True)
    start = time.monotonic()
    try:
        with engine.container(spec) as container:
            returncode, timed_out = container.follow(timeout=run.limit, on_line=on_line)
    except EngineError as exc:  # docker could not start it (removed already)
        return made_up(run.test, FAILED, f"the container did not start: {exc.message}", time.monotonic() - start)
    seconds = time.monotonic() - start
    data = None
    if result_file.is_file():
        try:
            data = json.loads(result_file.read_text())
        except ValueError:
            data = None
    return judge(run, data, returncode, timed_out, seconds, _last_line(lines))


@contextmanager
def extra_env(key: str, words: Sequence[str]) -> Iterator[None]:
    """Append words to an environment variable for the duration (compose interpolates the
    stack's ${NCCL_TEST_ARGS} from the environment it runs in)."""
    if not words:
        yield
        return
    before = os.environ.get(key)
    os.environ[key] = " ".join([*([before] if before else []), *words])
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def run_stack(ctx: Context, run: PlannedRun, opts: SmokeOptions, workspace: Path, log: Log) -> dict[str, Any]:
    """A stack variant: `up` (which waits for its jobs), the result file copied out of the
    container that holds it, then always `down`."""
    variant = STACK_VARIANTS[run.where]
    stack = stacks.load_stack(run.where)
    has_gpus = host_has_gpus()
    if not opts.cpu and not opts.gpus and not has_gpus:
        why = f"no NVIDIA GPU on this host: {run.where} needs {stack.gpus_min} (--cpu runs it over gloo)"
        if run.require_gpu:
            return made_up(run.test, FAILED, f"GPUs were asked for, but {why}; check `invoke doctor`")
        return made_up(run.test, SKIPPED, why)
    listed: list[Any] = []
    if has_gpus and not opts.cpu:
        # A host with GPU devices whose nvidia-smi fails (or lists none) has a broken driver:
        # the stack must not fall back to its CPU variant, nor skip, where GPUs were asked for.
        try:
            listed = list(query_gpus())
        except UsageError as exc:
            return made_up(run.test, FAILED, f"GPUs were asked for, but {exc.message}; check `invoke doctor`")
        if not listed:
            return made_up(run.test, FAILED, "GPUs were asked for (this host has GPU devices), but nvidia-smi lists none; check `invoke doctor`")
    try:
        stacks.choose_devices(stack, opts.gpus, opts.cpu, lambda: listed, has_gpus)
    except UsageError as exc:
        return made_up(run.test, SKIPPED, f"{run.where}: {exc.message}")
    engine = ctx.engine
    if any(engine.project_resources(stack.project).values()):
        # One project name per stack and host: `up` now would take over someone's running stack.
        return made_up(run.test, FAILED, f"the {run.where} stack is already up on this host (`invoke down {run.where}` first)")
    start = time.monotonic()
    error: KitError | None = None
    data = None
    result_file = workspace / f"{run.test}-{run.where}.json"
    result_file.unlink(missing_ok=True)
    try:
        with extra_env(variant.args_env, run.command):
            try:
                stacks.up(run.where, gpus=opts.gpus, cpu=opts.cpu, wait=int(run.limit), base=ctx.base_name, log=lambda line: log(f"  | {line}"))
            except (StackError, UsageError) as exc:
                error = exc
        holder = [c for c in engine.project_containers(stack.project) if c.service == variant.service]
        if holder and engine.copy_from(holder[0].id, variant.result_path, result_file) and result_file.is_file():
            try:
                data = json.loads(result_file.read_text())
            except ValueError:
                data = None
    finally:
        try:
            log(f"  | {stacks.down(run.where, log=log)}")
        except KitError as exc:
            log(f"warning: `invoke down {run.where}` failed: {exc}")
    seconds = time.monotonic() - start
    if data is not None:
        result = judge(run, data, None, False, seconds, "")
        if error is not None and result["status"] != FAILED:
            return {**result, "status": FAILED, "reason": f"{run.where}: {error.message}"}
        return result
    if error is not None:
        return made_up(run.test, FAILED, f"{run.where}: {error.message}", seconds)
    return made_up(run.test, FAILED, f"{run.where} finished without a result file in {variant.service}", seconds)


def smoke(opts: SmokeOptions, log: Log) -> SmokeReport:
    """Plan, build what is missing, run every test, and write --json. Errors before any test
    runs (unknown topic, engine down) raise KitError; a test's failure is a row."""
    if opts.cpu and opts.gpus:
        raise UsageError("give either --cpu or --gpus, not both")
    if opts.cpu and opts.require_gpu:
        raise UsageError("give either --cpu or --require-gpu, not both")
    ctx = Context.resolve(opts.base)
    catalog, config, base = ctx.catalog, ctx.config, ctx.base_name
    selected = select_topics(opts.topics, catalog.topics, opts.tests)
    topics = ctx.every_topic_for_arch(selected, log) if split(opts.topics) == ["all"] else ctx.topics_for_arch(selected)
    shell_opts = ShellOptions(
        topic=topics[0].name,
        gpus="none" if opts.cpu else opts.gpus,
        mounts=(f"{REPO_ROOT / SMOKE_DIR}:{IN_CONTAINER}/{SMOKE_DIR}:ro",),
        env=(f"PYTHONPATH={IN_CONTAINER}", "PYTHONUNBUFFERED=1", "PYTHONDONTWRITEBYTECODE=1"),
    )
    gpus = choose_gpus(shell_opts.gpus)
    # GPUs were asked for when the containers get some (every run but --cpu on a GPU host):
    # then "no GPU visible inside the container" fails instead of skipping.
    opts = replace(opts, require_gpu=not opts.cpu and (opts.require_gpu or gpus.docker_value is not None))
    runs = plan(topics, opts, available_tests())
    started = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    run_id = f"{started.replace(':', '').replace('-', '')}-{os.getpid()}"
    results_dir = REPO_ROOT / ".kit" / "smoke" / run_id
    report = SmokeReport(results_dir=results_dir)
    if gpus.warning and any(r.where == "container" for r in runs):
        log(f"warning: {gpus.warning}")
    engine = ctx.engine
    host = read_host()
    host.hf_cache.mkdir(parents=True, exist_ok=True)  # else docker creates it, owned by root
    images: dict[str, TopicImage | BuildError] = {}
    try:
        for run in runs:
            topic = catalog.topic(run.topic)
            workspace = results_dir / run.topic
            workspace.mkdir(parents=True, exist_ok=True)
            log(f"== {run.label} in {run.topic} ({'container' if run.where == 'container' else run.where + ' stack'})")
            if run.topic not in images:
                try:
                    images[run.topic] = ensure_image(ctx, topic, log)
                except BuildError as exc:
                    images[run.topic] = exc
            image = images[run.topic]
            if isinstance(image, BuildError):
                if exc_tail := image.log_tail:
                    log(exc_tail)
                report.outcomes.append(Outcome(run, made_up(run.test, FAILED, f"image build failed: {image.message}"), ""))
                continue
            start = time.monotonic()
            if run.where == "container":
                facts = replace(host, memlock=memlock_allowed(engine, image.ref, host.environ, log))
                run_env = (*shell_opts.env, f"KIT_IMAGE_ID={image.id}")  # the result records which image it ran in
                run_opts = replace(shell_opts, topic=run.topic, command=run.command, env=run_env)
                # tokens as files of a private folder, removed with the container (runtime/secrets.py)
                with secrets.private_folder(secret_values(run_opts, facts, config), host.environ) as folder:
                    spec = one_off_spec(
                        run_opts, facts, config, gpus, workspace=workspace, topic=run.topic, base=base, image=image.ref, secrets_at=folder,
                        kernels=kernel_cache(ctx, topic, image.id, gpus, root=host.as_root, host=host),
                    )  # fmt: skip
                    result = run_in_container(engine, run, spec, workspace, run_id, log)
            else:
                result = run_stack(ctx, run, opts, workspace, log)
            outcome = Outcome(run, result, image.ref, time.monotonic() - start)
            report.outcomes.append(outcome)
            log(f"-> {run.label}: {outcome.status}" + (f" ({result.get('reason')})" if result.get("reason") else ""))
    except KeyboardInterrupt:
        report.interrupted = True
        done = {id(o.run) for o in report.outcomes}
        current = next((r for r in runs if id(r) not in done), None)
        if current is not None:
            report.outcomes.append(Outcome(current, made_up(current.test, FAILED, "interrupted (Ctrl-C); its container was removed")))
    finally:
        leftovers = engine.containers(f"{LABEL}={run_id}")
        if leftovers:
            engine.remove_containers([c.id for c in leftovers])
        path = results_dir / "smoke.json"
        results_dir.mkdir(parents=True, exist_ok=True)
        data = report_json(report, opts, started)
        path.write_text(json.dumps(data, indent=2) + "\n")
        if opts.json_path:
            out = Path(opts.json_path).expanduser()
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(data, indent=2) + "\n")
    return report
