"""The topic catalogue as tables: `invoke topics` (each topic's framework, key versions, GPU
needs and whether its image is built) and `invoke versions TOPIC` (its key packages as
locked, beside the versions found inside its image).

The tables are pure functions of the catalog, the locks and what the engine reported
(`ImageState`, `ImageProbe`), so they are unit-tested without Docker; the few functions
that ask the engine are at the bottom and go through `Engine`."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mlsyskit import LABEL_PREFIX
from mlsyskit.arch import ARCHES
from mlsyskit.data.catalog import Base, Catalog, Topic
from mlsyskit.data.config import Config
from mlsyskit.data.lockfile import ENVIRONMENT_SCRIPT, expected_packages, lock_sha256, normalize
from mlsyskit.engine import ContainerSpec, Engine
from mlsyskit.errors import KitError
from mlsyskit.images.plan import freshness, topic_alias
from mlsyskit.report import table

# How many of a topic's key packages `invoke topics` shows (the first ones in topic.toml,
# which lists them most telling first); `invoke versions` shows them all.
HEADLINE_PACKAGES = 3

# Rows `invoke versions` adds to the packages: what the runtime itself reports.
PYTHON, CUDA, NCCL = "python", "CUDA (torch.version.cuda)", "NCCL (torch.cuda.nccl)"


@dataclass(frozen=True, kw_only=True)
class ImageState:
    """What the engine holds for one topic: `current` when the exact content-hash tag the
    plan asks for exists; `alias_labels` are the labels of `mlsyskit/<topic>:<base>`, if
    that alias exists (it may point to an older build)."""

    current: bool
    alias_labels: Mapping[str, str] | None = None

    @property
    def status(self) -> str:
        if self.current:
            return "built"
        if self.alias_labels is not None:
            return "stale"  # built from other inputs (lock, Dockerfile, parent) than today's
        return "no"


@dataclass(frozen=True, kw_only=True)
class ImageProbe:
    """What a throw-away container of the image reported: the PEP 508 environment its
    Python evaluates markers in, installed distributions' versions (None: not installed),
    and the runtime's own view (python, CUDA and NCCL as torch reports them)."""

    environment: Mapping[str, str]
    distributions: Mapping[str, str | None]
    runtime: Mapping[str, str] = field(default_factory=dict)


# --- pure: what the locks say -------------------------------------------------------------


def key_packages(catalog: Catalog, topic: Topic) -> list[str]:
    """The topic's key packages, then its framework's, each once, in the order declared."""
    names = list(topic.key_packages)
    if topic.framework:
        names += list(catalog.frameworks[topic.framework].key_packages)
    first: dict[str, str] = {}
    for name in names:
        first.setdefault(normalize(name), name)
    return list(first.values())


def base_environment(base: Base) -> dict[str, str]:
    """The marker environment of a base's Python when no image exists to ask: a lock that
    forks by Python version (numpy for 3.11 and for 3.12+) or by machine (aarch64's own
    wheels) is read for the base's Python and architecture."""
    return {
        "implementation_name": "cpython",
        "implementation_version": f"{base.python}.0",
        "os_name": "posix",
        "platform_machine": ARCHES[base.arch],
        "platform_release": "",
        "platform_system": "Linux",
        "platform_version": "",
        "python_full_version": f"{base.python}.0",
        "platform_python_implementation": "CPython",
        "python_version": base.python,
        "sys_platform": "linux",
    }


def locked_versions(catalog: Catalog, topic: Topic, environment: Mapping[str, str]) -> dict[str, str]:
    """{normalized name: version} the topic's image must contain in `environment`: its
    framework's lock and its own (which agree on shared packages; `invoke lock --check`)."""
    locks: list[Path] = []
    if topic.framework:
        locks.append(catalog.frameworks[topic.framework].lock_path)
    locks.append(topic.lock_path)
    versions: dict[str, str] = {}
    for lock in locks:
        versions.update(expected_packages(lock, dict(environment)))
    return versions


def gpu_needs(topic: Topic) -> str:
    if topic.gpus_min == 0 and topic.gpus_recommended == 0:
        return "none"
    return f"{topic.gpus_min} min, {topic.gpus_recommended} rec."


def headline(topic: Topic, locked: Mapping[str, str], framework_torch: str | None) -> str:
    """`torch 2.14.1, sglang 0.5.23, ...`: torch (where there is a framework), then the topic's
    first key packages."""
    parts = [f"torch {framework_torch}"] if framework_torch else []
    shown = [n for n in topic.key_packages if normalize(n) != "torch"][:HEADLINE_PACKAGES]
    parts += [f"{n} {locked.get(normalize(n), '?')}" for n in shown]
    return ", ".join(parts)


def topics_table(
    catalog: Catalog,
    locked: Mapping[str, Mapping[str, str]],
    states: Mapping[str, ImageState] | None,
    base_name: str,
) -> str:
    """One row per topic. `locked[topic]` is `locked_versions` for the base's Python;
    `states[topic]` what the engine holds (None: no engine answered, shown as '?')."""
    rows = []
    for topic in catalog.select([]):
        versions = locked[topic.name]
        torch = versions.get("torch") if topic.framework else None
        status = states[topic.name].status if states is not None else "?"
        image = topic_alias(topic.name, base_name) if status in ("built", "stale") else "-"
        rows.append((topic.name, topic.framework or "(none)", headline(topic, versions, torch), gpu_needs(topic), status, image))
    text = table(("topic", "framework", "key versions", "GPUs", "image", "tag"), rows)
    if states is None:
        text += "\nimage: ? = no Docker engine answered (`invoke doctor`)"
    elif any(s.status == "stale" for s in states.values()):
        text += "\nimage: stale = the tag holds a build from other inputs than today's; `invoke build TOPIC` refreshes it"
    return text


def versions_rows(catalog: Catalog, topic: Topic, base: Base, locked: Mapping[str, str], probe: ImageProbe | None) -> list[tuple[str, str, str, str]]:
    """(package, locked, in image, match) for every key package, then python, CUDA and
    NCCL. Without a probe the image column is '-' and match ''; else 'ok' or 'DIFFERS'."""
    framework = catalog.frameworks[topic.framework] if topic.framework else None

    def row(name: str, want: str, found: str | None) -> tuple[str, str, str, str]:
        if probe is None:
            return (name, want, "-", "")
        shown = found if found is not None else "(missing)"
        return (name, want, shown, "ok" if found == want else "DIFFERS")

    rows = []
    for name in key_packages(catalog, topic):
        want = locked.get(normalize(name), "(not locked)")
        found = probe.distributions.get(normalize(name)) if probe else None
        rows.append(row(name, want, found))
    runtime = probe.runtime if probe else {}
    python_found = runtime.get(PYTHON)
    # The lock fixes python's minor version, not its patch: compare the minor only.
    python_row = row(PYTHON, base.python, python_found)
    if probe is not None and python_found and python_found.startswith(f"{base.python}."):
        python_row = (PYTHON, base.python, python_found, "ok")
    rows.append(python_row)
    if framework is not None:
        rows.append(row(CUDA, framework.cuda, runtime.get(CUDA)))
        nccl = next((locked[n] for n in ("nvidia-nccl-cu13", "nvidia-nccl-cu12") if n in locked), "(not locked)")
        rows.append(row(NCCL, nccl, runtime.get(NCCL)))
    return rows


def versions_table(catalog: Catalog, topic: Topic, base: Base, image: str, locked: Mapping[str, str], probe: ImageProbe | None) -> str:
    rows = versions_rows(catalog, topic, base, locked, probe)
    if probe is None:
        note = f"{image}: not built (`invoke build {topic.name}`); locked versions for Python {base.python}"
    else:
        differ = sum(1 for r in rows if r[3] == "DIFFERS")
        note = f"{image}: " + (f"{differ} differ from the lock" if differ else "every key version matches the lock")
    return table(("package", "locked", "in image", "match"), rows) + "\n" + note


# --- the engine's side --------------------------------------------------------------------

# Appended to ENVIRONMENT_SCRIPT (which prints the marker environment as one JSON line):
# prints the distributions' versions and the runtime's view as a second line.
_VERSIONS_SCRIPT = """
import importlib.metadata as md, json, platform
names = json.loads({names!r})
dists = {{}}
for name in names:
    try:
        dists[name] = md.version(name)
    except md.PackageNotFoundError:
        dists[name] = None
runtime = {{"python": platform.python_version()}}
try:
    import torch
    runtime["CUDA (torch.version.cuda)"] = torch.version.cuda
    runtime["NCCL (torch.cuda.nccl)"] = ".".join(map(str, torch.cuda.nccl.version()))
except Exception:  # no torch (docs), or a CPU-only build: those rows stay empty
    pass
print(json.dumps({{"distributions": dists, "runtime": runtime}}))
"""


def probe_image(engine: Engine, image: str, names: Sequence[str]) -> ImageProbe:
    """Run the image once (no GPU needed) and read its environment and versions."""
    script = ENVIRONMENT_SCRIPT + _VERSIONS_SCRIPT.format(names=json.dumps([normalize(n) for n in names]))
    proc = engine.run(ContainerSpec(image=image, command=("python", "-c", script)), timeout=300)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or len(lines) < 2:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise KitError(f"could not read versions in {image}: {last}", fix="rebuild the image with `invoke build`")
    report = json.loads(lines[-1])
    runtime = {k: v for k, v in report["runtime"].items() if v}
    return ImageProbe(environment=json.loads(lines[-2]), distributions=report["distributions"], runtime=runtime)


def image_states(engine: Engine, catalog: Catalog, config: Config, base: Base) -> dict[str, ImageState]:
    """For every topic: is its image built, from today's inputs (`plan.freshness`, the one
    decision `shell`, `smoke` and `up` make too)? Never builds or pulls."""
    states = {}
    for topic in catalog.select([]):
        found = engine.image(topic_alias(topic.name, base.name))
        labels = dict(found.labels) if found else None
        current = found is not None and freshness(catalog, config, topic, base, found.labels).current
        states[topic.name] = ImageState(current=current, alias_labels=labels)
    return states


def label_problems(topic: Topic, labels: Mapping[str, str]) -> list[str]:
    """What is wrong with a topic image's labels against today's lock (empty: nothing)."""
    want = {
        f"{LABEL_PREFIX}.kind": "topic",
        f"{LABEL_PREFIX}.topic": topic.name,
        f"{LABEL_PREFIX}.framework": topic.framework,
        f"{LABEL_PREFIX}.lock-sha256": lock_sha256(topic.lock_path),
    }
    problems = [f"{key}={labels.get(key)!r}, expected {value!r}" for key, value in want.items() if labels.get(key) != value]
    if f"{LABEL_PREFIX}.key-versions" not in labels:
        problems.append(f"{LABEL_PREFIX}.key-versions is missing")
    return problems
