"""Secrets never land in an image: not in `docker history`, not in any file.

The CA bundle the builds trusted is checked certificate by certificate: every certificate
in it that the image's own ca-certificates package does not ship (on the development and
CI machines, the TLS proxy's CA) must appear nowhere in the image. HF_TOKEN is set to a
canary while building and must appear nowhere either."""

import base64
import io
import os
import re
import tarfile
from pathlib import Path

import pytest

from mlsyskit.data.catalog import load_catalog
from mlsyskit.data.config import load_config
from mlsyskit.engine import ContainerSpec
from mlsyskit.images.build import build_topics
from mlsyskit.images.plan import topic_alias
from tests.conftest import need

CANARY = "hf_mlsyskitCanaryToken0123456789"
PEM = re.compile(rb"-----BEGIN CERTIFICATE-----\n(.+?)\n-----END CERTIFICATE-----", re.S)


def certificates(pem: bytes) -> set[bytes]:
    return {base64.b64decode(b"".join(body.split())) for body in PEM.findall(pem)}


@pytest.fixture(scope="module")
def image(engine):
    catalog, config = load_catalog(), load_config()
    need(bool(config.ca_bundle), "no CA bundle on this host to check")
    os.environ["HF_TOKEN"] = CANARY
    try:
        build_topics(engine, catalog, config, [catalog.topic("distributed")], base_name="pypi", log=print)
    finally:
        del os.environ["HF_TOKEN"]
    return topic_alias("distributed", "pypi"), config


class ChunkReader(io.RawIOBase):
    """A file over the engine's chunks of the image's tar stream (tarfile reads files)."""

    def __init__(self, chunks):
        self.chunks, self.rest = iter(chunks), b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self.rest:
            self.rest = next(self.chunks, None)
            if self.rest is None:
                self.rest = b""
                return 0
        n = min(len(buffer), len(self.rest))
        buffer[:n], self.rest = self.rest[:n], self.rest[n:]
        return n


def test_history_holds_no_secret(engine, image):
    ref, config = image
    history = "\n".join(engine.history(ref))
    assert CANARY not in history
    assert config.ca_bundle not in history or "secret" in history  # a path mention in a mount flag is fine
    assert "BEGIN CERTIFICATE" not in history


def test_image_files_hold_no_extra_ca_and_no_token(engine, image):
    ref, config = image
    shipped = engine.run(ContainerSpec(image=ref, command=("cat", "/etc/ssl/certs/ca-certificates.crt"))).stdout.encode()
    extra = certificates(Path(config.ca_bundle).read_bytes()) - certificates(shipped)
    # In PEM and in DER form: the base64 bodies' first 48 characters, and the raw bytes.
    needles = [CANARY.encode()]
    for der in extra:
        needles += [base64.b64encode(der)[:48], der[:64]]
    found = []
    with tarfile.open(fileobj=ChunkReader(engine.image_files(ref)), mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            found += [member.name for needle in needles if needle in data]
    assert found == []
    print(f"scanned the image for {len(extra)} extra CA certificate(s) and the token canary")
