"""The bundle format and the SBOM builder without an engine: a bundle written member by member
reads back with tar and Python's tarfile, verify() refuses every kind of damage in one line,
and an SBOM built from a recorded inventory validates against CycloneDX 1.6 with the lock's
hashes on the right files."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from mlsyskit import KIT_VERSION, REPO_ROOT
from mlsyskit.engine import ImageInfo
from mlsyskit.errors import KitError, UsageError
from mlsyskit.images import bundle, sbom
from tests.unit.hostile_bundles import TAG, docker_archive

# a docker archive of one empty image, then bytes docker ignores after its end: not a
# multiple of 512, so padding is exercised
ARCHIVE, IMAGE_ID = docker_archive([TAG])
IMAGE_BYTES = ARCHIVE + bytes(range(256)) * 4099


def write_fake_bundle(path: Path, *, kit_version: str = KIT_VERSION, images: bytes = IMAGE_BYTES) -> dict:
    """A bundle written by the same member writers `invoke bundle` uses, with a small image archive."""
    log: list[str] = []
    with path.open("wb") as out:
        progress = bundle.Progress(log.append, "bundle", len(images))
        chunks = (images[i : i + 100_000] for i in range(0, len(images), 100_000))
        files = [bundle._stream_member(out, bundle.IMAGES, chunks, 1_700_000_000, progress)]
        files.append(bundle._write_member(out, f"{bundle.ROOT}/locks/uv.lock", b"lock", 1_700_000_000))
        images_list = [{"id": IMAGE_ID, "tags": [TAG], "labels": {}}]
        manifest = {"format": bundle.FORMAT, "kit_version": kit_version, "images": images_list, "files": files}
        bundle._write_member(out, bundle.MANIFEST, json.dumps(manifest).encode(), 1_700_000_000)
        out.write(b"\0" * 1024)
    return manifest


def test_a_streamed_member_reads_back_whole_with_its_checksum(tmp_path):
    path = tmp_path / "b.bundle"
    manifest = write_fake_bundle(path)
    with tarfile.open(path) as archive:
        stream = archive.extractfile(bundle.IMAGES)
        assert stream is not None and stream.read() == IMAGE_BYTES
        assert [m.name for m in archive.getmembers()] == [bundle.IMAGES, f"{bundle.ROOT}/locks/uv.lock", bundle.MANIFEST]
    assert manifest["files"][0] == {"name": bundle.IMAGES, "size": len(IMAGE_BYTES), "sha256": hashlib.sha256(IMAGE_BYTES).hexdigest()}
    assert bundle.verify(path, lambda _: None)["kit_version"] == KIT_VERSION


def test_a_header_holds_sizes_past_ustars_8_gib_in_one_block():
    header = bundle._header(bundle.IMAGES, 40 << 30, 0)
    info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
    assert len(header) == 512 and info.size == 40 << 30


def corrupt(path: Path, offset: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.parametrize(
    ("damage", "error", "message"),
    [
        ("truncate", KitError, "is truncated or not a kit bundle"),
        ("flip", KitError, "is damaged: mlsyskit-bundle/images.tar does not match its sha256"),
        ("no-manifest", KitError, "is truncated or not a kit bundle"),
        ("version", UsageError, "was written by mlsyskit 0.0.1"),
        ("not-tar", KitError, "is truncated or not a kit bundle"),
    ],
)
def test_damage_is_refused_with_the_fix(tmp_path, damage, error, message):
    path = tmp_path / "b.bundle"
    write_fake_bundle(path, kit_version="0.0.1" if damage == "version" else KIT_VERSION)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: len(IMAGE_BYTES) // 2])
    elif damage == "flip":
        corrupt(path, 512 + 1000)
    elif damage == "no-manifest":
        data = path.read_bytes()
        path.write_bytes(data[: data.index(b"mlsyskit-bundle/manifest.json")])
    elif damage == "not-tar":
        path.write_bytes(b"PK\x03\x04 a zip file, say" * 100)
    with pytest.raises(error) as caught:
        bundle.verify(path, lambda _: None)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert caught.value.fix


def test_progress_reports_every_five_percent_not_every_chunk():
    lines: list[str] = []
    progress = bundle.Progress(lines.append, "bundle", 100 << 20)
    for _ in range(100):
        progress.add(1 << 20)
    assert 18 <= len(lines) <= 21 and lines[-1].startswith("bundle: 104.86 MB of ~104.86 MB (100%) at ")


# --- SBOM ----------------------------------------------------------------------------------

INVENTORY = {
    "os": {"ID": "debian", "VERSION_ID": "12", "PRETTY_NAME": "Debian GNU/Linux 12 (bookworm)"},
    "deb": [{"name": "bash", "version": "5.2.15-2+b7", "arch": "amd64", "source": "", "source_version": ""}],
    "python": [
        {"name": "PyYAML", "version": "6.0.4", "site": "/opt/venv/lib/python3.11/site-packages", "tags": ["cp311-cp311-manylinux_2_17_x86_64"], "license": ""},
        {"name": "uv", "version": "0.13.9", "site": "/opt/uv/lib/python3.11/site-packages", "tags": ["py3-none-manylinux_2_17_x86_64"], "license": ""},
        {"name": "pip", "version": "23.0.1", "site": "/opt/uv/lib/python3.11/site-packages", "tags": ["py3-none-any"], "license": ""},
    ],
    "cuda": [],
}


def test_the_lock_hash_is_the_one_of_the_installed_wheel():
    locked = sbom.locked_files([REPO_ROOT / "uv.lock"])
    files = locked[("pyyaml", "6.0.4")]
    wheel = sbom.match_locked(files, ["cp311-cp311-manylinux_2_17_x86_64"])
    assert wheel is not None and "cp311-cp311-" in wheel.filename and "manylinux_2_17_x86_64" in wheel.filename
    assert sbom.match_locked(files, ["cp399-cp399-plan9"]) == next(f for f in files if not f.tags)  # built from the sdist


def test_a_bom_from_a_recorded_inventory_validates_and_carries_the_locks_hashes():
    image = ImageInfo(id="sha256:" + "a" * 64, tags=("mlsyskit/docs:pypi",), labels={"org.mlsyskit.kind": "topic"}, created="2026-11-30T08:36:01.5Z")
    parent = ImageInfo(id="sha256:" + "b" * 64, tags=("mlsyskit/base-pypi:3a3a1dfb2bb5",), labels={"org.mlsyskit.kind": "base"})
    inventory = sbom.Inventory.from_json(json.dumps(INVENTORY))
    bom = sbom.build_bom(image, [parent], inventory, sbom.locked_files([REPO_ROOT / "uv.lock"]), name="mlsyskit/docs:pypi")
    text = sbom.render(bom)
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    document = json.loads(text)
    by_name = {c["name"]: c for c in document["components"]}
    assert by_name["pyyaml"]["purl"] == "pkg:pypi/pyyaml@6.0.4" and len(by_name["pyyaml"]["hashes"][0]["content"]) == 64
    assert {"name": "mlsyskit:locked-in", "value": "none"} in by_name["pip"]["properties"] and "hashes" not in by_name["pip"]
    assert by_name["bash"]["purl"] == "pkg:deb/debian/bash@5.2.15-2%2Bb7?arch=amd64&distro=debian-12"
    assert by_name["mlsyskit/base-pypi"]["type"] == "container" and document["metadata"]["component"]["bom-ref"] == image.id
    assert document["serialNumber"] == json.loads(sbom.render(sbom.build_bom(image, [parent], inventory, {}, name="x")))["serialNumber"]
    assert document["metadata"]["timestamp"].startswith("2026-11-30T08:36:01")


def test_kit_version_is_pyprojects():
    import tomllib

    assert tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"] == KIT_VERSION


def test_bundle_of_nothing_or_of_an_unknown_name_is_a_usage_error():
    from mlsyskit.commands import bundle_contents
    from mlsyskit.data.catalog import load_catalog

    with pytest.raises(UsageError, match="name the topics or the stack"):
        bundle_contents(load_catalog(), [], "pypi")
    with pytest.raises(UsageError, match="unknown topic 'nope'"):
        bundle_contents(load_catalog(), ["nope"], "pypi")
    contents = bundle_contents(load_catalog(), ["nccl-2node"], "pypi")
    assert contents.stack == "nccl-2node" and [t.name for t in contents.topics] == ["distributed"]


def test_a_full_disk_is_one_line_and_leaves_no_file(tmp_path, monkeypatch):
    """ENOSPC half-way through images.tar: one line naming the fix, no partial file left."""
    from mlsyskit.data.catalog import load_catalog

    class FullDisk:
        def image(self, ref):
            return ImageInfo(id="sha256:" + "c" * 64, tags=(ref,), labels={}, size=10, created="2026-11-30T00:00:00Z")

        def save(self, refs):
            yield b"x" * 1000
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(sbom, "write_sbom", lambda *a, **k: Path(a[4]).write_text("{}"))
    catalog = load_catalog()
    out = tmp_path / "x.bundle"
    with pytest.raises(KitError, match=r"cannot write .*x.bundle: No space left on device") as caught:
        bundle.write_bundle(FullDisk(), catalog, bundle.Contents([catalog.topic("docs")], "", "pypi"), out, lambda _: None)  # type: ignore[arg-type]
    assert "free space" in caught.value.fix
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("stack", ["nccl-2node", "sglang-pd", "verl"])
def test_every_file_a_stack_bundle_carries_is_one_the_reader_accepts(stack):
    """The reader's allow-list and the writer's file list agree: a stack bundle carries the
    whole smoke_tests package (its __init__, the _-prefixed shared modules, gpu_peaks.toml),
    and `invoke load` must not refuse the kit's own bundle (it did: `__init__.py`)."""
    from mlsyskit.compose.stacks import load_stack
    from mlsyskit.data.catalog import load_catalog

    catalog = load_catalog()
    topics = [catalog.topic(name) for name in load_stack(stack).topics()]
    files = bundle._kit_files(bundle.Contents(topics=topics, stack=stack, base="pypi"), catalog)
    names = set(files)
    assert {"smoke_tests/__init__.py", "smoke_tests/_result.py", "smoke_tests/_gates.py", "smoke_tests/gpu_peaks.toml"} <= names
    refused = [name for name in names if not bundle.KNOWN.fullmatch(f"{bundle.ROOT}/{name}")]
    assert refused == []
