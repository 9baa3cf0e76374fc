"""The kit's data: base flavours (images/bases.toml), frameworks (images/frameworks/<name>/)
and topics (envs/<name>/). Everything here is read from files and validated with errors that
name the file and the field; nothing about a particular topic is written in code."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from mlsyskit import REPO_ROOT
from mlsyskit.arch import ARCHES
from mlsyskit.data import debian_lock
from mlsyskit.data.debian_lock import DebianLock
from mlsyskit.data.fields import ENV_NAME, Fields, rel_path
from mlsyskit.data.toml import TomlError, read_toml
from mlsyskit.errors import UsageError


class UnknownTopic(UsageError):
    """A topic name with no envs/<name>/topic.toml (`name`: the one asked for)."""

    def __init__(self, name: str, message: str, *, fix: str = "") -> None:
        super().__init__(message, fix=fix)
        self.name = name


@dataclass(frozen=True, kw_only=True)
class Base:
    """A base flavour from images/bases.toml, for one architecture: where the OS root filesystem comes from."""

    name: str
    description: str
    registry_image: str
    python: str
    cuda: str
    bootstrap_suite: str = ""
    bootstrap_mirror: str = ""
    apt_packages: tuple[str, ...] = ()  # installed by the base layer (pinned by images/debian-lock.toml)
    arch: str = "amd64"  # the CPU architecture of every image built on it
    flavour: str = ""  # bases.toml's name; `name` adds "-arm64" for arm64 images ("" = name)

    can_bootstrap: bool = field(init=False, repr=False, compare=False)  # it names a suite to debootstrap
    platform: str = field(init=False, repr=False, compare=False)  # linux/<arch>

    def __post_init__(self) -> None:
        object.__setattr__(self, "can_bootstrap", bool(self.bootstrap_suite))
        object.__setattr__(self, "platform", f"linux/{self.arch}")


def arch_of(base_name: str) -> str:
    """The architecture a base name says (`pypi-arm64` -> arm64), "" when it says none."""
    suffix = base_name.rpartition("-")[2]
    return suffix if suffix in ARCHES else ""


def with_arch(base: Base, arch: str) -> Base:
    """The base for images of `arch`: named `pypi` for amd64 and `pypi-arm64` for arm64, so
    that every tag, label, root filesystem and Debian lock entry says its architecture."""
    from dataclasses import replace

    if arch not in ARCHES:
        raise UsageError(f"unknown architecture '{arch}'", fix=f"use one of: {', '.join(ARCHES)}")
    flavour = base.flavour or base.name
    return replace(base, name=flavour if arch == "amd64" else f"{flavour}-{arch}", arch=arch, flavour=flavour)


@dataclass(frozen=True)
class KernelCache:
    """One JIT or compile cache a framework's or topic's software writes (`[caches]`): the
    folder's name and the environment variables that point the software at it. The folder
    lives in the kit's kernel cache (runtime/caches.py), never in an image."""

    name: str
    variables: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class Framework:
    """The heavy, shared layer between the base and a topic: torch and the CUDA user-space it
    runs on (images/frameworks/<name>/: framework.toml, pyproject.toml, uv.lock)."""

    name: str
    path: Path
    description: str
    cuda: str
    key_packages: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()  # framework.toml's [env]
    caches: tuple[KernelCache, ...] = ()  # framework.toml's [caches]: what torch and its compilers write
    # Derived once, when the framework is read, so that the stages after the context read
    # fields rather than call back into the catalog.
    lock_path: Path = field(init=False, repr=False, compare=False)  # its uv.lock
    image_env: tuple[tuple[str, str], ...] = field(init=False, repr=False, compare=False)  # see gpu_env

    def __post_init__(self) -> None:
        object.__setattr__(self, "lock_path", self.path / "uv.lock")
        object.__setattr__(self, "image_env", self.gpu_env())

    def gpu_env(self) -> tuple[tuple[str, str], ...]:
        """What the framework's image (and every topic on it) says to GPU runtimes, as NVIDIA's
        CUDA images do: without NVIDIA_VISIBLE_DEVICES enroot/pyxis give no GPU and, without
        NVIDIA_DRIVER_CAPABILITIES, only `utility` (NVIDIA/enroot#205, #258); the container
        toolkit refuses a driver older than NVIDIA_REQUIRE_CUDA says. Then framework.toml's [env]."""
        gpu = {
            "NVIDIA_VISIBLE_DEVICES": "all",
            "NVIDIA_DRIVER_CAPABILITIES": "compute,utility",
            "NVIDIA_REQUIRE_CUDA": f"cuda>={self.cuda}",
        }
        return tuple(sorted((gpu | dict(self.env)).items()))


@dataclass(frozen=True, kw_only=True)
class Topic:
    """A topic from envs/<name>/topic.toml: what its image holds, needs and runs."""

    name: str
    path: Path
    description: str
    framework: str  # a Framework name, or "" for a topic on the bare base (no torch)
    notes: tuple[str, ...] = ()
    apt_packages: tuple[str, ...] = ()
    key_packages: tuple[str, ...] = ()
    imports: tuple[str, ...] = ()
    gpus_min: int = 0
    gpus_recommended: int = 0
    ports: tuple[int, ...] = ()
    smoke_tests: tuple[str, ...] = ()
    stacks: tuple[str, ...] = ()  # [run] stacks: the compose stacks (compose/<name>.yml) of the topic
    arches: tuple[str, ...] = ("amd64", "arm64")
    arch_note: str = ""  # why an architecture is missing
    env: tuple[tuple[str, str], ...] = ()  # topic.toml's [env]: baked into the topic image
    caches: tuple[KernelCache, ...] = ()  # topic.toml's [caches], beside its framework's (runtime/caches.py)
    # Derived once, when the topic is read (plain fields for the stages after the context).
    lock_path: Path = field(init=False, repr=False, compare=False)  # its uv.lock
    # envs/<topic>/patches/*.patch: fixes to installed packages, applied in the topic layer
    # after the lock is installed (images/env.Dockerfile), in name order.
    patches: tuple[Path, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        folder = self.path / "patches"
        object.__setattr__(self, "lock_path", self.path / "uv.lock")
        object.__setattr__(self, "patches", tuple(sorted(folder.glob("*.patch"))) if folder.is_dir() else ())

    def check_arch(self, arch: str) -> None:
        if arch not in self.arches:
            raise UsageError(f"topic '{self.name}' has no {arch} image: {self.arch_note or 'its topic.toml lists ' + ', '.join(self.arches)}",
                             fix=f"use --arch {self.arches[0]}")  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class Catalog:
    """Everything the kit's data files say: bases, frameworks and topics, read from one tree."""

    root: Path
    bases: dict[str, Base]
    frameworks: dict[str, Framework]
    topics: dict[str, Topic] = field(default_factory=dict)

    @cached_property
    def debian_lock(self) -> DebianLock:
        """images/debian-lock.toml of this catalog's tree, read once, then a plain attribute."""
        return debian_lock.load(self.root)

    @cached_property
    def apt(self) -> dict[str, tuple[str, ...]]:
        """What each layer's apt install asks for, by its Debian lock key ("pypi/base",
        "pypi/topic/NAME", for every base and architecture): the lock's pins, or the plain
        asks. Worked out once (the context does it up front), then a plain attribute the plan
        reads layer by layer."""
        asks: dict[str, tuple[str, ...]] = {}
        for base in self.bases.values():
            for arch in ARCHES:
                name = with_arch(base, arch).name
                asks[f"{name}/base"] = base.apt_packages
                asks.update({f"{name}/topic/{topic.name}": topic.apt_packages for topic in self.topics.values()})
        return self.debian_lock.pin_all(asks)

    def base(self, name: str, arch: str = "") -> Base:
        """A base by name (`pypi`, or `pypi-arm64`: the flavour for one architecture); `arch`
        overrides the architecture the name implies."""
        flavour, _, suffix = name.rpartition("-")
        if flavour in self.bases and suffix in ARCHES:
            return with_arch(self.bases[flavour], arch or suffix)
        if flavour in self.bases and name not in self.bases:
            raise UsageError(f"unknown architecture '{suffix}'", fix=f"use one of: {', '.join(ARCHES)}")
        if name not in self.bases:
            raise UsageError(f"unknown base '{name}'", fix=f"use one of: {', '.join(sorted(self.bases))}")
        return with_arch(self.bases[name], arch or "amd64")

    def topic(self, name: str) -> Topic:
        if name not in self.topics:
            known = ", ".join(sorted(self.topics)) or "(none)"
            raise UnknownTopic(name, f"unknown topic '{name}'", fix=f"known topics: {known}")
        return self.topics[name]

    def select(self, names: list[str] | tuple[str, ...]) -> list[Topic]:
        """Topics by name, in the order given; all topics when none are named."""
        if not names:
            return [self.topics[n] for n in sorted(self.topics)]
        return [self.topic(n) for n in names]


# --- reading and validating ------------------------------------------------------------


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return read_toml(path)
    except FileNotFoundError:
        raise UsageError(f"{rel_path(path)}: file is missing") from None
    except TomlError as exc:
        raise UsageError(f"{rel_path(path)}: not valid TOML ({exc})") from None


def load_bases(root: Path) -> dict[str, Base]:
    path = root / "images" / "bases.toml"
    bases = {}
    for name, table in _read_toml(path).items():
        f = Fields(path, table, f"{name}.")
        f.reject_unknown({"description", "registry_image", "python", "cuda", "bootstrap_suite", "bootstrap_mirror", "apt_packages"})
        bases[name] = Base(
            name=name,
            description=f.str("description"),
            registry_image=f.str("registry_image"),
            python=f.str("python"),
            cuda=f.str("cuda", ""),
            bootstrap_suite=f.str("bootstrap_suite", ""),
            bootstrap_mirror=f.str("bootstrap_mirror", ""),
            apt_packages=f.str_list("apt_packages"),
        )
    return bases


def load_framework(data_file: Path) -> Framework:
    """images/frameworks/<name>/framework.toml (or an older tree's images/stacks/<name>/stack.toml)."""
    path = data_file.parent
    f = Fields(data_file, _read_toml(data_file))
    f.reject_unknown({"description", "cuda", "key_packages", "env", "caches"})
    _require_lock_inputs(path)
    cuda = f.str("cuda")
    if not re.fullmatch(r"\d+\.\d+", cuda):
        raise f.fail("cuda", 'a CUDA version such as "13.0"')
    return Framework(
        name=path.name,
        path=path,
        description=f.str("description"),
        cuda=cuda,
        key_packages=f.str_list("key_packages"),
        env=f.env_table("env"),
        caches=_caches(f),
    )


CACHE_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")


def _caches(f: Fields) -> tuple[KernelCache, ...]:
    """`[caches]`: `name = "VARIABLE"` or `name = ["VARIABLE", ...]`, the folder's name in
    lower case (it becomes a path), each variable named as environment variables are."""
    table = f.table.get("caches", {})
    if not isinstance(table, dict):
        raise f.fail("caches", 'a table of name = "VARIABLE"')
    caches = []
    for name, value in table.items():
        names = [value] if isinstance(value, str) else value
        if not CACHE_NAME.fullmatch(name):
            raise f.fail(f"caches.{name}", "named in lower case letters, digits and - (it names a folder)")
        if not isinstance(names, list) or not names or not all(isinstance(v, str) and ENV_NAME.fullmatch(v) for v in names):
            raise f.fail(f"caches.{name}", "an environment variable's name, or a list of them")
        caches.append(KernelCache(name, tuple(names)))
    return tuple(caches)


def _arches(f: Fields) -> tuple[str, ...]:
    arches = f.str_list("arches") or ("amd64", "arm64")
    for arch in arches:
        if arch not in ARCHES:
            raise f.fail("arches", f"a list of {', '.join(ARCHES)}")
    return arches


def load_topic(path: Path, frameworks: dict[str, Framework]) -> Topic:
    data_file = path / "topic.toml"
    f = Fields(data_file, _read_toml(data_file))
    key = _framework_key(f)  # "framework", or the old "stack"
    f.reject_unknown({"description", key, "notes", "apt_packages", "key_packages", "imports", "gpus", "run", "arches", "arch_note", "env", "caches"})
    framework = f.str(key, "")
    if framework and framework not in frameworks:
        raise UsageError(
            f"{rel_path(data_file)}: field '{key}' names unknown framework '{framework}'",
            fix=f'use one of: {", ".join(sorted(frameworks))}, or "" for none',
        )
    gpus, run = f.sub("gpus"), f.sub("run")
    gpus.reject_unknown({"min", "recommended"})
    run.reject_unknown({"ports", "smoke_tests", "stacks"})
    _require_lock_inputs(path)
    return Topic(
        name=path.name,
        path=path,
        description=f.str("description"),
        framework=framework,
        notes=f.str_list("notes"),
        apt_packages=f.str_list("apt_packages"),
        key_packages=f.str_list("key_packages"),
        imports=f.str_list("imports"),
        arches=_arches(f),
        arch_note=f.str("arch_note", ""),
        env=f.env_table("env"),
        caches=_caches(f),
        gpus_min=gpus.int("min", 0),
        gpus_recommended=gpus.int("recommended", 0),
        ports=run.int_list("ports"),
        smoke_tests=run.str_list("smoke_tests"),
        stacks=run.str_list("stacks"),
    )


def _require_lock_inputs(path: Path) -> None:
    for name in ("pyproject.toml", "uv.lock"):
        if not (path / name).is_file():
            raise UsageError(f"{rel_path(path / name)}: file is missing", fix="write pyproject.toml, then run `invoke lock`")


# --- the old spellings: read for one more release, each with a one-line warning -----------

OLD_FRAMEWORK_KEY = "stack"  # topic.toml's `stack = "..."`, now `framework = "..."`
_warned: set[str] = set()  # each old spelling is named once per run, however often it is read


def warn_old_spelling(line: str) -> None:
    if line not in _warned:
        _warned.add(line)
        print(f"warning: {line}", file=sys.stderr, flush=True)


def _framework_key(f: Fields) -> str:
    """Which key of topic.toml names the framework: `framework`, or the old `stack`."""
    if OLD_FRAMEWORK_KEY not in f.table:
        return "framework"
    if "framework" in f.table:
        raise UsageError(
            f"{rel_path(f.path)}: fields 'framework' and '{OLD_FRAMEWORK_KEY}' both given ('{OLD_FRAMEWORK_KEY}' is the old name of 'framework')",
            fix=f"keep only framework = ... and remove {OLD_FRAMEWORK_KEY} = ...",
        )
    warn_old_spelling(f"{rel_path(f.path)}: field '{OLD_FRAMEWORK_KEY}' is now spelled 'framework' (the old name is read until the next release)")
    return OLD_FRAMEWORK_KEY


def framework_files(root: Path) -> dict[str, Path]:
    """{name: its data file}: images/frameworks/<name>/framework.toml, then an older tree's
    images/stacks/<name>/stack.toml for a name images/frameworks/ lacks (with a warning)."""
    found = {}
    for folder, file_name in (("frameworks", "framework.toml"), ("stacks", "stack.toml")):
        top = root / "images" / folder
        for path in sorted(top.iterdir()) if top.is_dir() else ():
            if path.name in found or not (path / file_name).exists():
                continue
            if folder == "stacks":
                warn_old_spelling(
                    f"{rel_path(path / file_name)} is the old place of a framework: move it to images/frameworks/{path.name}/framework.toml "
                    "(the old place is read until the next release)"
                )
            found[path.name] = path / file_name
    return found


def load_catalog(root: Path = REPO_ROOT) -> Catalog:
    frameworks = {name: load_framework(data_file) for name, data_file in sorted(framework_files(root).items())}
    topics = {p.name: load_topic(p, frameworks) for p in sorted((root / "envs").iterdir()) if (p / "topic.toml").exists()}
    return Catalog(root=root, bases=load_bases(root), frameworks=frameworks, topics=topics)
