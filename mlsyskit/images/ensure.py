"""A topic's image as a command needs it, looked up once: `built_image` where it must exist
already (`invoke check`, `sbom`, `bundle`, `verify`), `ensure_image` where it is built when
missing (`shell`, `smoke`, `up`, `devcontainer`), with one warning line when it was built
from other inputs than today's (`plan.freshness`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from mlsyskit.context import Context, Found
from mlsyskit.data.catalog import Topic
from mlsyskit.engine import Engine, ImageInfo
from mlsyskit.errors import UsageError
from mlsyskit.images.plan import freshness, topic_alias


def built_image(engine: Engine, topic: Topic, image: str) -> ImageInfo:
    """The topic's image `image` as the engine has it; not built: one line naming the fix."""
    info = engine.image(image)
    if info is None:
        raise UsageError(f"image {image} is not built", fix=f"invoke build {topic.name}")
    return info


@dataclass(frozen=True)
class TopicImage:
    """A topic's image as a command runs it: its tag (`mlsyskit/<topic>:<base>`) and what the
    engine said of it, asked once (its ID keys the kernel caches; its labels, freshness)."""

    ref: str
    info: ImageInfo
    id: str = field(init=False)  # the image's ID (a field: read by the stages after this one)

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", self.info.id)


def ensure_image(ctx: Context, topic: Topic, log: Callable[[str], None]) -> TopicImage:
    """The topic's image, built first (with progress) when it is missing. An image built from
    other inputs than today's (a topic or framework lock, a Dockerfile, the base) gets one
    warning line naming what changed, not a rebuild the user did not ask for. The caller
    has checked the topic's architecture (`Context.topics_for_arch`). The engine's answer
    is the one the context got up front (`resolve(look_up=True)`), else it is asked here."""
    found = ctx.images.get(topic.name)
    if found is None:
        alias = topic_alias(topic.name, ctx.base_name)
        found = Found.known(alias, ctx.engine.image(alias))
    image, info = found.ref, found.answer()
    if info is None:
        from mlsyskit.images.build import build_topics  # the build machinery loads only when a build is due

        log(f"{image} is not built yet: building it (this happens once)")
        build_topics(ctx.engine.for_building(), ctx.catalog, ctx.config, [topic], base_name=ctx.base_name, log=log)
        return TopicImage(image, built_image(ctx.engine, topic, image))
    fresh = freshness(ctx.catalog, ctx.config, topic, ctx.base, info.labels)
    if not fresh.current:
        log(f"warning: {image} was built before {fresh.what} changed: `invoke build {topic.name}` updates it")
    return TopicImage(image, info)
