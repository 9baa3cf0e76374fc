"""What every command resolves once and passes down: the config, the catalog, the base it
works on (validated: an unknown base is one line before anything runs) and an engine that
connects on first use (a command that needs none never starts the docker CLI)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mlsyskit import REPO_ROOT
from mlsyskit.arch import ARCHES, host_arch
from mlsyskit.data.catalog import Base, Catalog, Topic, arch_of, load_catalog
from mlsyskit.data.config import Config, load_config
from mlsyskit.engine import Engine


@dataclass
class Context:
    config: Config
    catalog: Catalog
    base: Base
    connect: Callable[[], Engine] = Engine.connect
    _engine: Engine | None = field(default=None, repr=False)

    @classmethod
    def resolve(cls, base: str = "", root: Path = REPO_ROOT, *, connect: Callable[[], Engine] = Engine.connect, arch: str = "") -> Context:
        """`base` as given (`--base`), else kit.toml's, for `arch` (`--arch`; default: the
        base name's own, `pypi-arm64`, else this host's); `connect` is how the engine is
        reached (`Engine.for_running` where only containers are run)."""
        config, catalog = load_config(root), load_catalog(root)
        name = base or config.base
        if name.startswith("-"):  # `--arch` without `--base`: kit.toml's base for that architecture
            name = config.base + name
        return cls(config=config, catalog=catalog, base=catalog.base(name, arch or arch_of(name) or host_arch()), connect=connect)

    @property
    def arch(self) -> str:
        return self.base.arch

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

    @property
    def base_name(self) -> str:
        return self.base.name

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = self.connect()
        return self._engine


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
