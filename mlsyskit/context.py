"""What every command resolves once and passes down: the config, the catalog, the base it
works on (validated: an unknown base is one line before anything runs) and an engine that
connects on first use (a command that needs none never starts the docker CLI)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mlsyskit import REPO_ROOT
from mlsyskit.data.catalog import Base, Catalog, load_catalog
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
    def resolve(cls, base: str = "", root: Path = REPO_ROOT, *, connect: Callable[[], Engine] = Engine.connect) -> Context:
        """`base` as given (`--base`), else kit.toml's; `connect` is how the engine is
        reached (`Engine.for_running` where only containers are run)."""
        config, catalog = load_config(root), load_catalog(root)
        return cls(config=config, catalog=catalog, base=catalog.base(base or config.base), connect=connect)

    @property
    def base_name(self) -> str:
        return self.base.name

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = self.connect()
        return self._engine
