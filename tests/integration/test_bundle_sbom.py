"""Offline bundles and SBOMs on the real engine: a topic and a stack bundled, removed from the
engine, loaded back (same IDs, tags, labels) and checked with the network cut; damaged and
foreign bundles refused with nothing left tagged; each SBOM checked against the schema, the
locks, what is really installed, the image labels and `invoke versions`."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlsyskit.data.catalog import load_catalog
from mlsyskit.data.lockfile import ENVIRONMENT_SCRIPT, expected_packages, normalize
from mlsyskit.engine import ContainerSpec, Engine
from mlsyskit.images import bundle, sbom
from mlsyskit.images.plan import topic_alias
from tests.conftest import IN_CI, need
from tests.integration.conftest import run_kit

BASE = "pypi"


def topic_tags(engine: Engine, topic: str) -> list[str]:
    """The tags of the topic image itself (its parents are shared with other topics)."""
    info = engine.image(topic_alias(topic, BASE))
    assert info is not None
    return sorted(info.tags)


def remove_tags(engine: Engine, tags: list[str]) -> None:
    engine.remove_images(tags)
    assert not any(engine.image_exists(t) for t in tags)


def manifest_of(path: Path) -> dict:
    with tarfile.open(path) as archive:
        stream = archive.extractfile(bundle.MANIFEST)
        assert stream is not None
        return json.load(stream)


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


@pytest.fixture(scope="module")
def signing_key(tmp_path_factory) -> dict[str, Path]:
    """An ed25519 pair made as the README says (openssl)."""
    need(shutil.which("openssl") is not None, "no openssl to make a signing key")
    folder = tmp_path_factory.mktemp("key")
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(folder / "key.pem")], check=True, capture_output=True)
    subprocess.run(["openssl", "pkey", "-in", str(folder / "key.pem"), "-pubout", "-out", str(folder / "key.pub.pem")], check=True, capture_output=True)
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(folder / "other.pem")], check=True, capture_output=True)
    subprocess.run(["openssl", "pkey", "-in", str(folder / "other.pem"), "-pubout", "-out", str(folder / "other.pub.pem")], check=True, capture_output=True)
    return {"private": folder / "key.pem", "public": folder / "key.pub.pem", "other": folder / "other.pub.pem"}


@pytest.fixture(scope="module")
def docs_bundle(engine: Engine, build_topic, signing_key, tmp_path_factory) -> Iterator[tuple[Path, dict[str, str]]]:
    """The docs topic bundled once, signed; returns the file and {tag: image id} before bundling."""
    build_topic("docs")
    path = tmp_path_factory.mktemp("bundle") / "docs.bundle"
    proc = run_kit("bundle", "docs", "-o", str(path), "--sign", str(signing_key["private"]), timeout=1200)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    assert "bundle: " in proc.stdout and "written: " in proc.stdout  # progress, then the result
    ids = {tag: image["id"] for image in manifest_of(path)["images"] for tag in image["tags"]}
    yield path, ids
    path.unlink(missing_ok=True)  # pytest keeps its temporary folders: CI's disk counts


def test_a_topic_bundle_loads_back_with_the_same_ids_and_runs_with_no_network(engine: Engine, docs_bundle, signing_key, tmp_path):
    """A signed bundle, loaded with the signature required, by the kit's Python: in CI that is
    Debian 12's own /usr/bin/python3 (3.11.2, no tarfile `filter=`; .ci/run builds the
    kit's environment on it)."""
    if IN_CI:
        assert Path(sys._base_executable).resolve() == Path("/usr/bin/python3").resolve(), sys._base_executable
    path, ids = docs_bundle
    manifest = manifest_of(path)
    assert manifest["topics"] == ["docs"] and manifest["kit_version"] and manifest["format"] == bundle.FORMAT
    names = {f["name"] for f in manifest["files"]}
    assert {bundle.IMAGES, f"{bundle.ROOT}/sbom/docs-{BASE}.cdx.json", f"{bundle.ROOT}/locks/envs/docs/uv.lock"} <= names
    # the topic image and its parents (base, root filesystem): `invoke build` finds them current
    assert {image["labels"]["org.mlsyskit.kind"] for image in manifest["images"]} >= {"topic", "base"}

    tags = topic_tags(engine, "docs")
    remove_tags(engine, tags)
    refused = run_kit("load", str(path), "--require-signature", str(signing_key["other"]), timeout=600)
    assert refused.returncode == 2 and "is not signed by a trusted key" in refused.stderr, refused.stderr
    assert not any(engine.image_exists(t) for t in tags)
    proc = run_kit("load", str(path), "--to", str(tmp_path / "unpacked"), "--require-signature", str(signing_key["public"]), timeout=1200)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    assert "checked 4 files" in proc.stdout and "loading: " in proc.stdout and "signed by sha256:" in proc.stdout
    for image in manifest["images"]:
        info = engine.image(image["id"])
        assert info is not None and set(image["tags"]) <= set(info.tags)
        assert {k: v for k, v in info.labels.items() if k.startswith("org.mlsyskit")} == image["labels"]
    assert {t: ids[t] for t in tags} == {t: engine.image(t).id for t in tags}  # type: ignore[union-attr]
    assert (tmp_path / "unpacked" / "locks" / "envs" / "docs" / "uv.lock").read_bytes() == (load_catalog().topic("docs").lock_path).read_bytes()

    # the topic's own check, which runs with --network none, from the loaded image
    proc = run_kit("check", "docs", timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "imports ok in mlsyskit/docs:pypi" in proc.stdout
    cut = engine.run(ContainerSpec(image=topic_alias("docs", BASE), network="none", command=("sh", "-c", "cat /sys/class/net/*/operstate; mkdocs --version")))
    assert cut.returncode == 0 and "mkdocs, version" in cut.stdout, cut.stdout + cut.stderr


def rewrite(source: Path, target: Path, change) -> None:
    """A copy of the bundle whose members pass through change(name, data) -> data | None."""
    with tarfile.open(source) as src, tarfile.open(target, "w", format=tarfile.GNU_FORMAT) as dst:
        for member in src:
            stream = src.extractfile(member)
            assert stream is not None
            if member.name == bundle.IMAGES:
                dst.addfile(member, stream)
                continue
            data = change(member.name, stream.read())
            if data is not None:
                member.size = len(data)
                dst.addfile(member, io.BytesIO(data))


def test_damaged_truncated_foreign_and_missing_bundles_are_one_line_errors(engine: Engine, docs_bundle, tmp_path):
    path, _ = docs_bundle
    tags = topic_tags(engine, "docs")
    remove_tags(engine, tags)
    try:
        truncated = tmp_path / "truncated.bundle"
        with path.open("rb") as src, truncated.open("wb") as dst:
            dst.write(src.read(path.stat().st_size // 2))
        damaged = tmp_path / "damaged.bundle"
        shutil.copy(path, damaged)
        with damaged.open("r+b") as f:  # one byte inside images.tar
            f.seek(path.stat().st_size // 3)
            byte = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([byte[0] ^ 0xFF]))
        foreign = tmp_path / "foreign.bundle"

        def other_version(name: str, data: bytes) -> bytes:
            if name != bundle.MANIFEST:
                return data
            manifest = json.loads(data)
            manifest["kit_version"] = "0.0.1"
            return json.dumps(manifest).encode()

        rewrite(path, foreign, other_version)
        extra = tmp_path / "extra.bundle"
        rewrite(path, extra, lambda name, data: data)
        with tarfile.open(extra, "a") as archive:
            info = tarfile.TarInfo(f"{bundle.ROOT}/extra.txt")
            info.size = 2
            archive.addfile(info, io.BytesIO(b"hi"))
        no_sbom = tmp_path / "no-sbom.bundle"
        rewrite(path, no_sbom, lambda name, data: None if name.endswith(".cdx.json") else data)

        cases = {
            truncated: "is truncated or not a kit bundle",
            damaged: "is damaged: mlsyskit-bundle/images.tar does not match its sha256",
            foreign: "was written by mlsyskit 0.0.1; this kit is",
            extra: "holds an unexpected member 'mlsyskit-bundle/extra.txt'",
            no_sbom: "is truncated or damaged: mlsyskit-bundle/sbom/docs-pypi.cdx.json is missing",
            tmp_path / "nowhere.bundle": "no bundle at",
        }
        for file, message in cases.items():
            proc = run_kit("load", str(file), timeout=600)
            assert proc.returncode == 2, (file, proc.stdout, proc.stderr)
            error = last_line(proc.stderr)
            assert error.startswith("error: ") and message in error and "(fix: " in error, (file, proc.stderr)
            assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
            assert not any(engine.image_exists(t) for t in tags), f"{file.name} left an image tagged"
    finally:
        for copy in tmp_path.glob("*.bundle"):
            copy.unlink()
        proc = run_kit("load", str(path), timeout=1200)
        assert proc.returncode == 0, proc.stderr


def test_a_load_that_fails_puts_every_moved_tag_back(engine: Engine, docs_bundle, tmp_path):
    """A bundle whose manifest disagrees with its images (labels) passes the checks, is loaded,
    and then fails: the topic's alias, pointed at another image beforehand, is back on that
    image, and the tags the load added are gone."""
    path, _ = docs_bundle
    tags = topic_tags(engine, "docs")
    alias = topic_alias("docs", BASE)
    other = engine.image("mlsyskit/rootfs-pypi:bookworm")
    assert other is not None
    remove_tags(engine, tags)
    engine.tag(other.id, alias)
    lying = tmp_path / "lying.bundle"

    def other_labels(name: str, data: bytes) -> bytes:
        if name != bundle.MANIFEST:
            return data
        manifest = json.loads(data)
        for image in manifest["images"]:
            image["labels"]["org.mlsyskit.kind"] = "tampered"
        return json.dumps(manifest).encode()

    try:
        rewrite(path, lying, other_labels)
        proc = run_kit("load", str(lying), "--to", str(tmp_path / "out"), timeout=1200)
        assert proc.returncode != 0 and "is not as bundled" in proc.stderr, proc.stdout[-1000:] + proc.stderr
        assert engine.image(alias).id == other.id, "the alias was not put back on its image"  # type: ignore[union-attr]
        assert not any(engine.image_exists(t) for t in tags if t != alias), "a tag the failed load added is still there"
        assert not (tmp_path / "out").exists()
    finally:
        lying.unlink(missing_ok=True)
        engine.remove_images([alias])
        proc = run_kit("load", str(path), timeout=1200)
        assert proc.returncode == 0, proc.stderr


def test_a_stack_bundle_carries_its_compose_file_and_images(engine: Engine, nccl_2node_bundle: Path, tmp_path):
    path = nccl_2node_bundle
    manifest = manifest_of(path)
    assert manifest["stack"] == "nccl-2node" and manifest["topics"] == ["distributed"]
    names = {f["name"].removeprefix(bundle.ROOT + "/") for f in manifest["files"]}
    assert {"compose/nccl-2node.yml", "compose/scripts/nccl_node.sh", "smoke_tests/nccl.py", "sbom/distributed-pypi.cdx.json"} <= names

    tags = topic_tags(engine, "distributed")
    remove_tags(engine, tags)
    proc = run_kit("load", str(path), "--to", str(tmp_path / "stack"), timeout=1800)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    assert all(engine.image_exists(t) for t in tags)
    proc = run_kit("check", "distributed", timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # the unpacked compose file is whole: compose resolves it, mounts included
    compose = engine.compose()
    checked = compose.config("mlsyskit-bundle-check", tmp_path / "stack" / "compose" / "nccl-2node.yml")
    assert checked.returncode == 0, checked.stderr
    assert str(tmp_path / "stack" / "smoke_tests") in checked.stdout


# --- SBOMs -------------------------------------------------------------------------------


def sbom_of(topic: str, tmp_path: Path) -> dict:
    out = tmp_path / f"{topic}.cdx.json"
    proc = run_kit("sbom", topic, "--output", str(out), timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "CycloneDX 1.6, schema-valid" in proc.stdout
    return json.loads(out.read_text())


def python_components(document: dict, site: str = "/opt/venv/lib/python3.11/site-packages") -> dict[str, dict]:
    return {
        c["name"]: c
        for c in document["components"]
        if c.get("purl", "").startswith("pkg:pypi/") and {"name": "mlsyskit:site-packages", "value": site} in c["properties"]
    }


@pytest.mark.parametrize("topic", ["docs", "distributed"])
def test_sbom_agrees_with_the_locks_the_image_and_its_labels(engine: Engine, build_topic, topic_container, topic, tmp_path):
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    build_topic(topic)
    document = sbom_of(topic, tmp_path)
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(json.dumps(document)) is None
    catalog = load_catalog()
    image = topic_alias(topic, BASE)
    info = engine.image(image)
    assert info is not None and document["metadata"]["component"]["bom-ref"] == info.id
    host = topic_container(topic)

    # every Python package really installed in the venv, at its version, and nothing else
    installed = {normalize(p["name"]): p["version"] for p in json.loads(host.check_output("uv pip list --python /opt/venv/bin/python --format json"))}
    found = python_components(document)
    assert {n: c["version"] for n, c in found.items()} == installed

    # every locked package, with the sha256 the lock has for the installed file
    environment = json.loads(host.check_output("python -c %s", ENVIRONMENT_SCRIPT))
    locks = sbom.image_locks(catalog, catalog.topic(topic))[1:]
    locked_files = sbom.locked_files(locks)
    for lock in locks:
        for name, version in expected_packages(lock, environment).items():
            component = found[name]
            assert component["version"] == version, name
            hashes = {f.sha256 for f in locked_files[(name, version)]}
            assert component["hashes"][0]["content"] in hashes, name

    # every Debian package dpkg knows, at its version
    dpkg = dict(line.split("\t") for line in host.check_output("dpkg-query -W -f '${Package}\\t${Version}\\n'").splitlines())
    debs = {c["name"]: c["version"] for c in document["components"] if c.get("purl", "").startswith("pkg:deb/")}
    assert debs == dpkg

    # the labels' key versions and `invoke versions` say the same as the SBOM
    labels = json.loads(info.labels["org.mlsyskit.key-versions"])
    for name, versions in labels.items():
        assert found[normalize(name)]["version"] in versions.split("|"), name
    table = run_kit("versions", topic, timeout=600).stdout
    for line in table.splitlines()[2:]:
        cells = line.split()
        if len(cells) == 4 and normalize(cells[0]) in found:
            assert found[normalize(cells[0])]["version"] == cells[2], line

    # the parents, in order, by image ID
    containers = {c["bom-ref"] for c in document["components"] if c["type"] == "container"}
    depends = {d["ref"]: d.get("dependsOn", []) for d in document["dependencies"]}
    chain, ref = [], info.id
    while next_ref := [r for r in depends.get(ref, []) if r in containers]:
        chain.append(ref := next_ref[0])
    assert chain == [p.id for p in sbom.parents(engine, info)] and set(chain) == containers

    # CUDA libraries: present where the framework brings them, each hash that of the file inside
    cuda = [c for c in document["components"] if any(p["name"] == "mlsyskit:cuda-library" for p in c.get("properties", []))]
    if topic == "docs":
        assert cuda == []
    else:
        names = {c["name"] for c in cuda}
        assert {"libcudart.so.13", "libnccl.so.2"} <= names, sorted(names)
        nccl = next(c for c in cuda if c["name"] == "libnccl.so.2")
        where = next(p["value"] for p in nccl["properties"] if p["name"] == "mlsyskit:cuda-library")
        assert host.check_output(f"sha256sum {where}").split()[0] == nccl["hashes"][0]["content"]

    # the same image gives the same document, byte for byte
    again = tmp_path / "again"
    again.mkdir()
    sbom_of(topic, again)
    assert (again / f"{topic}.cdx.json").read_bytes() == (tmp_path / f"{topic}.cdx.json").read_bytes()
