"""What every command resolves once and passes down: the config, the catalog, the base it
works on (validated: an unknown base is one line before anything runs) and an engine that
connects on first use (a command that needs none never starts the docker CLI).

A command that runs or builds a topic's image (`shell`, `up`, `build`) resolves everything
its later stages read here, up front, as plain fields: the topics (looked up, checked for the
architecture), the Debian lock's pins (`Catalog.apt`), the engine, the platform its
containers ask for (and the mounts emulating it needs), and the engine's answer for each
topic's image (`images`: one inspect each, or for a build one listing of what exists,
`held`). The stages after it read those fields and never call back into the context or the
data it came from (ARCHITECTURE.md, "The pipeline")."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from mlsyskit import IMAGE_PREFIX, REPO_ROOT
from mlsyskit.arch import ARCHES, host_arch
from mlsyskit.data.catalog import Base, Catalog, Topic, arch_of, load_catalog
from mlsyskit.data.config import Config, load_config
from mlsyskit.engine import Engine, ImageInfo, emulation_volumes, foreign_platform


def topic_alias(topic: str, flavour: str) -> str:
    """The friendly tag users type: mlsyskit/<topic>:<base flavour>."""
    return f"{IMAGE_PREFIX}/{topic}:{flavour}"


@dataclass(frozen=True)
class Found:
    """A topic's image as the engine had it when the command was resolved: its friendly tag
    and the engine's answer, asked then and read when called (the same record on every
    call; None: not built), so that the stages before the first call run while the engine
    answers."""

    ref: str
    answer: Callable[[], ImageInfo | None] = field(repr=False, compare=False)

    @classmethod
    def known(cls, ref: str, info: ImageInfo | None) -> Found:
        """An answer already at hand (from a listing)."""
        return cls(ref, lambda: info)


@dataclass
class Context:
    """What a command resolved once and hands down (see the module's docstring)."""

    config: Config
    catalog: Catalog
    base: Base
    connect: Callable[[], Engine] = Engine.connect
    topics: tuple[Topic, ...] = ()  # the topics the command named (`resolve(topics=...)`), checked
    images: dict[str, Found] = field(default_factory=dict)  # topic name -> its image (`resolve(look_up=True)`)
    platform: str = ""  # `linux/arm64` for containers of a foreign architecture (`look_up`), else ""
    emulation: tuple[str, ...] = ()  # the bind mounts such a container needs (engine/emulation.py)
    # The kit's images (and the base's registry image) the engine holds, by tag, from one
    # listing (`resolve(listing=True)`: what `invoke build` reuses); None: not listed.
    held: dict[str, ImageInfo] | None = None
    arch: str = field(init=False)  # the base's architecture
    base_name: str = field(init=False)  # the base's name: pypi, pypi-arm64

    def __post_init__(self) -> None:
        self.arch, self.base_name = self.base.arch, self.base.name

    @classmethod
    def resolve(
        cls, base: str = "", root: Path = REPO_ROOT, *, connect: Callable[[], Engine] = Engine.connect, arch: str = "",
        topics: Sequence[str] = (), every: Callable[[str], None] | None = None, look_up: bool = False, listing: bool = False,
    ) -> Context:  # fmt: skip
        """`base` as given (`--base`), else kit.toml's, for `arch` (`--arch`; default: the
        base name's own, `pypi-arm64`, else this host's); `connect` is how the engine is
        reached (`Engine.for_running` where only containers are run). `topics`: looked up
        (an unknown one: one line) and checked against the architecture (`topics_for_arch`).
        `look_up`: the Debian lock read, the engine connected and asked once for each topic's
        image (each answer read when the stage that needs it calls `Found.answer`), the
        containers' platform decided: all a command's later stages read. `every`: no topic
        named means all of them, those without this architecture left out and each named to
        `every`. `listing`: the Debian lock read and the engine's images listed once
        (`held`), each topic's image taken from that list."""
        config, catalog = load_config(root), load_catalog(root)
        name = base or config.base
        if name.startswith("-"):  # `--arch` without `--base`: kit.toml's base for that architecture
            name = config.base + name
        chosen = catalog.base(name, arch or arch_of(name) or host_arch())
        named = tuple(map(catalog.topic, topics))  # an unknown one: one line, the known ones listed
        for topic in named:
            topic.check_arch(chosen.arch)  # no image for this architecture: one line
        if look_up or listing:
            _ = catalog.apt  # the Debian lock's pins: the plan reads them from there
        ctx = cls(config=config, catalog=catalog, base=chosen, connect=connect, topics=named)
        if named:
            require_arch(ctx.arch)  # this host cannot run the architecture's code: one line
        elif every is not None:
            ctx.topics = tuple(ctx.every_topic_for_arch(catalog.select([]), every))
        refs = {topic.name: topic_alias(topic.name, ctx.base_name) for topic in ctx.topics}
        if listing:  # what exists, for a build: one request
            held = ctx.held = ctx.engine.listing(f"{IMAGE_PREFIX}/*", ctx.base.registry_image)
            ctx.images = {name: Found.known(ref, held.get(ref)) for name, ref in refs.items()}
        if look_up:  # what a container runs: the platform, and the engine's answer for each image
            engine = ctx.engine
            ctx.platform = foreign_platform(ctx.arch)
            ctx.emulation = emulation_volumes(ctx.platform)
            ctx.images = {name: Found(ref, engine.image_soon(ref)) for name, ref in refs.items()}
        return ctx

    def every_topic_for_arch(self, topics: list[Topic], log: Callable[[str], None]) -> list[Topic]:
        """`all`: the topics that have an image for this architecture; each left out is named
        with its reason (a topic named explicitly goes through topics_for_arch: an error)."""
        kept = [t for t in topics if self.arch in t.arches]
        for topic in topics:
            if topic not in kept:
                log(f"note: {topic.name} left out: it has no {self.arch} image ({topic.arch_note or 'its topic.toml lists ' + ', '.join(topic.arches)})")
        return self.topics_for_arch(kept)

    def topics_for_arch(self, topics: list[Topic]) -> list[Topic]:
        """The topics, each checked to have an image for this architecture (one line if not),
        and this host able to run that architecture's code."""
        for topic in topics:
            topic.check_arch(self.arch)
        require_arch(self.arch)
        return topics

    @cached_property
    def engine(self) -> Engine:
        """Connected on first use, then a plain attribute."""
        return self.connect()


def binfmt_state(arch: str, root: Path = Path("/proc/sys/fs/binfmt_misc")) -> str:
    """'native', 'ready' (a qemu handler with the F flag: it works inside containers and
    BuildKit), or what is missing."""
    if arch == host_arch():
        return "native"
    handler = root / f"qemu-{ARCHES[arch]}"
    if not (root / "status").exists():
        return "binfmt_misc is not mounted"
    if not handler.exists():
        return f"no qemu-{ARCHES[arch]} handler registered"
    text = handler.read_text()
    if not text.startswith("enabled"):
        return f"qemu-{ARCHES[arch]} is registered but disabled"
    flags = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("flags:")), "")
    return "ready" if "F" in flags else f"qemu-{ARCHES[arch]} has no F flag (containers cannot use it)"


def require_arch(arch: str) -> None:
    state = binfmt_state(arch)
    if state not in ("native", "ready"):
        from mlsyskit.errors import UsageError

        raise UsageError(f"this host cannot run {arch} code: {state}", fix="`invoke doctor --fix` sets up qemu emulation (qemu-user-static, binfmt)")
