"""Executing a plan: build what is missing or changed, reuse the rest, report."""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from mlsyskit import IMAGE_PREFIX
from mlsyskit.context import Context
from mlsyskit.data import debian_lock
from mlsyskit.data.catalog import Catalog, Topic
from mlsyskit.data.config import Config
from mlsyskit.engine import Engine, ImageInfo, foreign_platform
from mlsyskit.errors import BuildError
from mlsyskit.images.plan import Layer, RootImage, plan, topic_alias
from mlsyskit.images.rootfs import bootstrap_ref, ensure_root_image, find_root_image

STEP_LINE = re.compile(r"^#\d+ (\[|DONE|CACHED|ERROR)")


@dataclass(frozen=True)
class LayerResult:
    layer: Layer
    status: str  # "built" or "reused"
    seconds: float
    size_bytes: int  # this layer alone (image size minus parent's)
    total_bytes: int


def write_secrets(config: Config, directory: Path) -> dict[str, Path]:
    """Secret files for BuildKit `--secret`: mounted for one RUN, never in a layer."""
    secrets = {}
    if config.ca_bundle:
        secrets["ca"] = Path(config.ca_bundle)
    if config.pypi_index:
        index = directory / "pypi_index"
        index.write_text(config.pypi_index)
        index.chmod(0o600)
        secrets["pypi_index"] = index
    return secrets


def build_layers(
    engine: Engine,
    config: Config,
    layers: list[Layer],
    *,
    no_cache: bool = False,
    log: Callable[[str], None] = print,
    verbose: bool = False,
    lock: debian_lock.DebianLock,
    held: MutableMapping[str, ImageInfo],
) -> list[LayerResult]:
    """Each layer built when missing (or when `no_cache`, or its parent was rebuilt), else
    reused; `lock`: the Debian lock its apt pins came from (named when the mirror lacks one);
    `held`: the engine's images by tag, as listed once; a layer built here is asked of the
    engine once more, for its size, and added to it."""
    results = []
    rebuilt: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="mlsyskit-secrets-") as tmp:
        secrets = write_secrets(config, Path(tmp))
        for index, layer in enumerate(layers, 1):
            start = time.monotonic()
            parent_rebuilt = layer.parent is not None and layer.parent.tag in rebuilt
            if layer.tag in held and not no_cache and not parent_rebuilt:
                status = "reused"
                log(f"[{index}/{len(layers)}] {layer.kind} {layer.name}: reusing {layer.tag}")
            else:
                status = "built"
                log(f"[{index}/{len(layers)}] {layer.kind} {layer.name}: building {layer.tag}")

                def show(line: str) -> None:
                    if verbose or STEP_LINE.match(line):
                        log(f"    {line}")

                dockerfile = layer.dockerfile
                if layer.env:  # composed: the template plus the layer's ENV line
                    dockerfile = Path(tmp) / f"{layer.kind}-{layer.name}.Dockerfile"
                    dockerfile.write_text(layer.dockerfile_text())
                try:
                    engine.build(
                        dockerfile=dockerfile,
                        context=layer.context,
                        tag=layer.tag,
                        build_args=layer.build_args,
                        build_env=dict(config.proxy),
                        labels=layer.labels(),
                        secrets=secrets,
                        no_cache=no_cache,
                        on_line=show,
                        platform=foreign_platform(layer.arch),
                    )
                except BuildError as exc:
                    # a locked Debian version the mirror no longer serves: say so in one line
                    mirror = config.apt_mirror or "the root filesystem's apt sources"
                    missing = debian_lock.missing_version_error(exc.log_tail, lock, mirror)
                    if missing is not None:
                        raise missing from None
                    raise
                rebuilt.add(layer.tag)
                if made := engine.image(layer.tag):
                    held[layer.tag] = made
            total = held[layer.tag].size if layer.tag in held else 0
            parent = held.get(layer.parent_ref) if layer.parent_ref else None
            parent_size = parent.size if parent else 0
            results.append(LayerResult(layer, status, time.monotonic() - start, max(total - parent_size, 0), total))
    return results


def build_topics(
    engine: Engine,
    catalog: Catalog,
    config: Config,
    topics: list[Topic],
    *,
    base_name: str,
    no_cache: bool = False,
    log: Callable[[str], None] = print,
    verbose: bool = False,
    tag_aliases: bool = True,
) -> list[LayerResult]:
    """Build the topics' layers that are missing (or all, `no_cache`) and tag each topic's
    alias, for a caller that has no resolved context (`build` is the pipeline's stage). The
    caller has checked the topics against the base's architecture, and this host for running
    it (`Context.topics_for_arch`), once, before anything else."""
    ctx = Context(config=config, catalog=catalog, base=catalog.base(base_name), connect=lambda: engine)
    return build(ctx, topics, no_cache=no_cache, log=log, verbose=verbose, tag_aliases=tag_aliases)


def build(
    ctx: Context, topics: Sequence[Topic], *, no_cache: bool = False, log: Callable[[str], None] = print, verbose: bool = False, tag_aliases: bool = True,
) -> list[LayerResult]:  # fmt: skip
    """`invoke build`'s image stage, on what the context resolved (its fields only: the
    engine, the base, the Debian lock, the listing of what the engine holds, the topics'
    tags): the root filesystem -> the plan -> each layer built when missing -> the topics'
    tags moved. The engine is asked again only for what it builds here."""
    engine, config, catalog, base = ctx.engine, ctx.config, ctx.catalog, ctx.base
    held = dict(ctx.held) if ctx.held is not None else engine.listing(f"{IMAGE_PREFIX}/*", base.registry_image)
    aliases = {t.name: ctx.images[t.name].ref if t.name in ctx.images else topic_alias(t.name, base.name) for t in topics}
    root: RootImage = ensure_root_image(engine, base, config, log, lock=catalog.debian_lock, held=held)
    layers = plan(catalog, config, list(topics), base, root)
    results: list[LayerResult] = []
    # Topic by topic, so each topic's friendly tag moves as soon as its image exists: a
    # later topic's failure never leaves an earlier one pointing at an old image.
    for topic in topics:
        chain: list[Layer] = []
        layer: Layer | None = next(x for x in layers if x.kind == "topic" and x.name == topic.name)
        while layer is not None:
            chain.insert(0, layer)
            layer = layer.parent
        done = {r.layer.tag for r in results}
        results += build_layers(
            engine, config, [x for x in chain if x.tag not in done], no_cache=no_cache, log=log, verbose=verbose, lock=catalog.debian_lock, held=held,
        )  # fmt: skip
        if tag_aliases:
            engine.tag(chain[-1].tag, aliases[topic.name])
    return results


@dataclass(frozen=True)
class PlannedLayer:
    """One layer of `invoke build --dry-run`: what would be built or reused, from what."""

    layer: Layer
    exists: bool  # its content-hash tag is in the engine: `invoke build` would reuse it

    @property
    def action(self) -> str:
        return "reuse" if self.exists else "build"


def dry_run(engine: Engine, catalog: Catalog, config: Config, topics: list[Topic], *, base_name: str) -> tuple[RootImage | None, list[PlannedLayer]]:
    """The plan `build_topics` would follow, without building, pulling or bootstrapping.
    Without a root filesystem yet, no tag can be known (each hashes its parent's): the
    root is reported missing and the layers are listed with the tags they would have on
    the root's current digest, marked to build."""
    base = catalog.base(base_name)
    root = find_root_image(engine, base, config)
    planned_root = root or RootImage(ref=bootstrap_ref(base) if base.can_bootstrap else base.registry_image, image_id="(not yet made)", origin="-")
    layers = plan(catalog, config, topics, base, planned_root)
    return root, [PlannedLayer(layer, root is not None and engine.image_exists(layer.tag)) for layer in layers]
