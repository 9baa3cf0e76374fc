"""Pure planning: from the catalog and the config, the ordered layers to build and their
content-hash tags. No engine calls here, so it is unit-tested without Docker.

A layer's tag is a hash of everything that decides its content: its Dockerfile, the files
it reads (pyproject.toml, uv.lock, scripts), its build args and its parent's identity.
Same inputs, same tag; a changed topic lock changes only the topic's tag."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from mlsyskit import IMAGE_PREFIX, LABEL_PREFIX
from mlsyskit.context import topic_alias as topic_alias  # the friendly tag (defined where commands resolve images)
from mlsyskit.data import toml
from mlsyskit.data.catalog import Base, Catalog, Topic
from mlsyskit.data.config import Config
from mlsyskit.data.lockfile import key_versions, lock_sha256


@dataclass(frozen=True, kw_only=True)
class RootImage:
    """The OS root filesystem a base layer starts FROM: its reference and image ID."""

    ref: str
    image_id: str
    origin: str  # "registry" or "bootstrap"


@dataclass(frozen=True, kw_only=True)
class Layer:
    kind: str  # "base", "framework" or "topic"
    name: str
    flavour: str
    dockerfile: Path
    context: Path
    build_args: dict[str, str]
    inputs: tuple[Path, ...]
    parent: Layer | None = None
    root: RootImage | None = None
    lock: Path | None = None
    key_packages: tuple[str, ...] = ()
    extra_labels: dict[str, str] = field(default_factory=dict)
    arch: str = "amd64"  # Docker's name: the layer is built with --platform linux/ARCH
    env: tuple[tuple[str, str], ...] = ()  # ENV lines appended to the Dockerfile (framework/topic [env])

    @cached_property
    def inputs_hash(self) -> str:
        digest = hashlib.sha256()
        # Labels' own inputs too: an edited framework.toml or topic.toml must not leave a reused
        # image carrying stale labels.
        digest.update(
            json.dumps(
                [self.kind, self.name, self.flavour, sorted(self.build_args.items()), sorted(self.extra_labels.items()), list(self.key_packages), self.arch]
                + ([[list(kv) for kv in self.env]] if self.env else [])
            ).encode()
        )
        digest.update(self.parent.inputs_hash.encode() if self.parent else b"")
        digest.update(self.root.image_id.encode() if self.root else b"")
        for path in (self.dockerfile, *sorted(self.inputs)):
            digest.update(str(path.relative_to(self.context) if path.is_relative_to(self.context) else path.name).encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        return digest.hexdigest()

    def dockerfile_text(self) -> str:
        """The Dockerfile this layer is built from: its template, then one ENV line for the
        layer's environment (composed as repo2docker composes its build packs, so that
        one template serves every framework and topic). Values are validated plain text."""
        text = self.dockerfile.read_text()
        if not self.env:
            return text
        lines = " \\\n    ".join(f'{name}="{value}"' for name, value in self.env)
        return f"{text.rstrip()}\n\n# The layer's environment (framework.toml / topic.toml [env]).\nENV {lines}\n"

    @property
    def repository(self) -> str:
        return f"{IMAGE_PREFIX}/{self.kind}-{self.name}"

    # A layer's tag and its parent's: decided once, by `plan` (which asks every layer for
    # them), then plain attributes for the stages that build and report.
    @cached_property
    def tag(self) -> str:
        return f"{self.repository}:{self.inputs_hash[:12]}"

    @cached_property
    def parent_ref(self) -> str:
        return self.parent.tag if self.parent else self.root.ref if self.root else ""

    @property
    def root_image(self) -> RootImage | None:
        return self.root if self.root is not None else self.parent.root_image if self.parent else None

    def labels(self) -> dict[str, str]:
        labels = {
            f"{LABEL_PREFIX}.kind": self.kind,
            f"{LABEL_PREFIX}.name": self.name,
            f"{LABEL_PREFIX}.base": self.flavour,
            f"{LABEL_PREFIX}.arch": self.arch,
            f"{LABEL_PREFIX}.inputs-hash": self.inputs_hash,
            f"{LABEL_PREFIX}.parent": self.parent_ref,
            **self.extra_labels,
        }
        root = self.root_image
        if root is not None:
            # The OS image the chain started from: with it, whether a built image is current
            # can be decided from its labels alone (`freshness`), without asking the engine.
            labels |= {ROOT_REF: root.ref, ROOT_ID: root.image_id, ROOT_ORIGIN: root.origin}
        if self.lock is not None:
            labels[f"{LABEL_PREFIX}.lock-sha256"] = lock_sha256(self.lock)
            labels[f"{LABEL_PREFIX}.key-versions"] = json.dumps(key_versions(self.lock, self.key_packages), sort_keys=True)
        return labels


def uv_requirement(root: Path, version: str) -> str:
    """`uv==VERSION --hash=...` with every wheel hash the kit's own uv.lock has for that
    version (pip picks the wheel for the platform and checks it); unhashed when the kit's
    lock holds another uv version than kit.toml asks for."""
    text = (root / "uv.lock").read_text() if (root / "uv.lock").is_file() else ""
    # Only uv's own entry is parsed, not the whole lock: `invoke shell` asks this on every
    # start (image freshness), and parsing every package of the kit's lock costs ~0.1 s.
    blocks = [b for b in text.split("\n[[package]]\n")[1:] if b.startswith('name = "uv"\n')]
    lock = toml.loads("".join(f"[[package]]\n{b}\n" for b in blocks) if blocks else text)
    for package in lock.get("package", []):
        if package.get("name") == "uv" and package.get("version") == version:
            hashes = sorted(w["hash"] for w in package.get("wheels", []) if w["url"].rsplit("/", 1)[-1].find("linux") > 0)
            return f"uv=={version} " + " ".join(f"--hash={h}" for h in hashes)
    return f"uv=={version}"


def base_layer(catalog: Catalog, config: Config, base: Base, root: RootImage) -> Layer:
    images = catalog.root / "images"
    python = "/usr/bin/python3" if config.python == "system" else config.python
    return Layer(
        kind="base",
        name=base.name,
        flavour=base.name,
        dockerfile=images / "base.Dockerfile",
        context=images,
        build_args={
            "ROOT_IMAGE": root.ref,
            "UV_VERSION": config.uv_version,
            "UV_REQUIREMENT": uv_requirement(catalog.root, config.uv_version),
            "PYTHON": python,
            "APT_PACKAGES": " ".join(catalog.apt.get(f"{base.name}/base", base.apt_packages)),
        },
        inputs=tuple(sorted(p for p in (images / "scripts").rglob("*") if p.is_file() and "__pycache__" not in p.parts)),
        root=root,
        arch=base.arch,
    )


def topic_layers(catalog: Catalog, config: Config, topic: Topic, base: Layer) -> list[Layer]:
    """[base, framework, topic] (or [base, topic] for a topic with no framework)."""
    topic_key = f"{base.flavour}/topic/{topic.name}"
    env_dockerfile = catalog.root / "images" / "env.Dockerfile"
    layers = [base]
    parent = base
    if topic.framework:
        framework = catalog.frameworks[topic.framework]
        parent = Layer(
            kind="framework",
            name=framework.name,
            flavour=base.flavour,
            dockerfile=env_dockerfile,
            context=framework.path,
            build_args={"PARENT_IMAGE": base.tag, "APT_PACKAGES": ""},
            inputs=(framework.path / "pyproject.toml", framework.lock_path),
            parent=base,
            arch=base.arch,
            lock=framework.lock_path,
            key_packages=framework.key_packages,
            extra_labels={f"{LABEL_PREFIX}.cuda": framework.cuda},
            env=framework.image_env,
        )
        layers.append(parent)
    layers.append(
        Layer(
            kind="topic",
            name=topic.name,
            flavour=base.flavour,
            dockerfile=env_dockerfile,
            context=topic.path,
            build_args={"PARENT_IMAGE": parent.tag, "APT_PACKAGES": " ".join(catalog.apt.get(topic_key, topic.apt_packages))},
            inputs=(topic.path / "pyproject.toml", topic.lock_path, *topic.patches),
            parent=parent,
            arch=base.arch,
            lock=topic.lock_path,
            key_packages=topic.key_packages,
            extra_labels={f"{LABEL_PREFIX}.topic": topic.name, f"{LABEL_PREFIX}.framework": topic.framework},
            env=topic.env,
        )
    )
    return layers


def plan(catalog: Catalog, config: Config, topics: list[Topic], base: Base, root: RootImage) -> list[Layer]:
    """Every layer the topics need, parents first, each once."""
    base_l = base_layer(catalog, config, base, root)
    ordered: dict[str, Layer] = {}
    for topic in topics:
        for layer in topic_layers(catalog, config, topic, base_l):
            ordered.setdefault(layer.tag, layer)
            _ = layer.parent_ref
    return list(ordered.values())


ROOT_REF, ROOT_ID, ROOT_ORIGIN = (f"{LABEL_PREFIX}.root-ref", f"{LABEL_PREFIX}.root-id", f"{LABEL_PREFIX}.root-origin")


@dataclass(frozen=True)
class Freshness:
    """Whether a built topic image was made from today's inputs, and if not, what changed."""

    current: bool
    changed: tuple[str, ...] = ()
    what: str = field(init=False)  # what changed, in words (a field: read by the stage after)

    def __post_init__(self) -> None:
        object.__setattr__(self, "what", ", ".join(self.changed) or "its inputs")


def freshness(catalog: Catalog, config: Config, topic: Topic, base: Base, labels: Mapping[str, str]) -> Freshness:
    """Is the topic image with these labels what `invoke build` would make today? Decided
    once, here, for `shell`, `smoke`, `up` and `topics`: the plan for today's files (topic
    and framework locks, Dockerfiles, scripts, build settings) on the image's own root
    filesystem, compared with the inputs hash it was built from. Pure: the labels come
    from the engine, nothing else does."""
    if ROOT_ID not in labels:  # built before the root was labelled: the topic lock decides
        if labels.get(f"{LABEL_PREFIX}.lock-sha256") == lock_sha256(topic.lock_path):
            return Freshness(True)
        return Freshness(False, (f"envs/{topic.name}/uv.lock",))
    root = RootImage(ref=labels.get(ROOT_REF, ""), image_id=labels[ROOT_ID], origin=labels.get(ROOT_ORIGIN, ""))
    planned = topic_layers(catalog, config, topic, base_layer(catalog, config, base, root))
    if planned[-1].inputs_hash == labels.get(f"{LABEL_PREFIX}.inputs-hash"):
        return Freshness(True)
    changed = []
    if labels.get(f"{LABEL_PREFIX}.lock-sha256") != lock_sha256(topic.lock_path):
        changed.append(f"envs/{topic.name}/uv.lock")
    if labels.get(f"{LABEL_PREFIX}.parent") != planned[-2].tag:
        below = planned[-2]
        changed.append(f"the {below.name} framework (its lock, or the base under it)" if below.kind == "framework" else "the base layer")
    if not changed:
        changed.append(f"envs/{topic.name}'s pyproject.toml, topic.toml or images/env.Dockerfile")
    return Freshness(False, tuple(changed))
