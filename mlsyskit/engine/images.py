"""Images: lookups, tags, save and load, import, pull, through the Docker API (api.py).
Every ref is checked against Docker's grammar first (refs.py): one lookup is one request."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import IO

from mlsyskit.engine import api
from mlsyskit.engine.base import EngineBase
from mlsyskit.engine.records import ImageInfo
from mlsyskit.engine.refs import image_ref, split_tag
from mlsyskit.errors import EngineError

CHUNK = 1 << 20


class ImagesPart(EngineBase):
    def image_exists(self, ref: str) -> bool:
        return self.image(ref) is not None

    def image(self, ref: str) -> ImageInfo | None:
        """The image, or None when there is none of that name (a daemon that is down
        raises, with the fix, instead of reading as "not built"). A ref outside Docker's
        grammar is refused before anything is asked."""
        return self.image_soon(ref)()

    def image_soon(self, ref: str) -> Callable[[], ImageInfo | None]:
        """`image(ref)`, asked now and answered when the returned function is called: the
        shell's engine starts the docker CLI at once, so that the kit's own start-up runs
        while it answers. A bad ref is refused here, before anything is asked."""
        return self._lookup_soon("image", image_ref(ref), lambda r: self.api.inspect_image(r), ImageInfo.from_inspect)

    def images(self, label: str) -> list[ImageInfo]:
        """Every image carrying the label (`key` or `key=value`), once each."""
        with api.errors("docker images"):
            ids = list(dict.fromkeys(self.api.images(filters={"label": label}, quiet=True)))
        found = [self.image(i) for i in ids]  # one may vanish meanwhile
        return [info for info in found if info is not None]

    def listing(self, *references: str) -> dict[str, ImageInfo]:
        """Every image named by one of `references` (Docker's reference filter: `mlsyskit/*`,
        `debian:bookworm`), under each of its tags, from one request: what a build needs to
        know of what exists (IDs, labels, sizes) without one inspect per layer. Through the
        API, also for the shell's engine (a build connects one that has it anyway)."""
        with api.errors("docker images"):
            rows = self.api.images(filters={"reference": list(references)})
        found = [ImageInfo.from_listing(row) for row in rows]
        return {tag: info for info in found for tag in info.tags}

    def history(self, ref: str) -> list[str]:
        """Each layer's recorded command and comment: what `docker history` keeps of a build."""
        with api.errors("docker history"):
            rows = self.api.history(image_ref(ref))
        lines = [f"{row.get('CreatedBy') or ''} {row.get('Comment') or ''}" for row in rows]
        return [line for line in lines if line.strip()]

    def image_files(self, ref: str) -> Iterator[bytes]:
        """The image's whole filesystem as a tar stream, in chunks (a container is created
        for the export and removed afterwards)."""
        with api.errors("docker create"):
            container = self.api.create_container(image_ref(ref), command=["true"])["Id"]
        try:
            with api.no_timeout(self.api), api.errors("docker export"):
                yield from self.api.export(container, chunk_size=CHUNK)
        finally:
            self._remove_container(container)

    def _remove_container(self, container: str) -> None:
        try:
            with api.errors("docker rm", lookup=True):
                self.api.remove_container(container, v=True, force=True)
        except EngineError:
            pass  # as `docker rm --force`: a removal already under way is not an error here
        except Exception as exc:
            if not api.not_found(exc):
                raise

    def tag(self, source: str, target: str) -> None:
        repository, tag = split_tag(target)
        with api.errors("docker tag"):
            self.api.tag(image_ref(source), repository, tag)

    def remove_images(self, refs: Iterable[str]) -> None:
        """Each ref untagged (an ID: the image removed), whichever are there."""
        for ref in refs:
            name = image_ref(ref)
            try:
                with api.errors("docker rmi", lookup=True):
                    self.api.remove_image(name, force=True)
            except EngineError:
                pass  # as `docker rmi --force`: an image in use by a container stays
            except Exception as exc:
                if not api.not_found(exc):
                    raise

    def save(self, refs: Sequence[str]) -> Iterator[bytes]:
        """`docker save` of several images together (each layer once), as chunks of the archive."""
        names = [image_ref(ref) for ref in refs]
        with api.no_timeout(self.api), api.errors("docker save"):
            # GET /images/get?names=...: the SDK's own get_image takes one image only
            response = self.api._get(self.api._url("/images/get"), params={"names": names}, stream=True)
            self.api._raise_for_status(response)
            yield from response.iter_content(CHUNK)

    def load(self, chunks: Iterable[bytes]) -> list[str]:
        """`docker load` of an archive given in chunks; the image refs it says it loaded."""
        with api.no_timeout(self.api), api.errors("docker load"):
            lines = api.stream_lines(self.api.load_image(iter(chunks)), "docker load")
        return [line.split(":", 1)[1].strip() for line in lines if line.startswith(("Loaded image:", "Loaded image ID:"))]

    def pull(self, ref: str, timeout: float) -> bool:
        """Whether the image could be pulled within `timeout` seconds."""
        repository, tag = split_tag(ref)
        deadline = time.monotonic() + timeout
        try:
            with api.errors("docker pull", lookup=True):
                saved, self.api.timeout = self.api.timeout, timeout
                try:
                    for chunk in self.api.pull(repository, tag, stream=True, decode=True):
                        if "error" in chunk or time.monotonic() > deadline:
                            return False
                finally:
                    self.api.timeout = saved
        except Exception:
            return False
        return self.image(ref) is not None

    def import_tar(self, tar_stream: IO[bytes], ref: str, changes: Sequence[str] = ()) -> None:
        repository, tag = split_tag(ref)
        with api.no_timeout(self.api), api.errors("docker import"):
            text = self.api.import_image_from_stream(tar_stream, repository=repository, tag=tag, changes=list(changes) or None)
        api.stream_lines((json.loads(line) for line in str(text).splitlines() if line.strip().startswith("{")), "docker import")
