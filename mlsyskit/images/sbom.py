"""A software bill of materials for every image, in CycloneDX JSON (1.6), written by the
format's own library (cyclonedx-python-lib) and validated against its schema before it is
written.

What goes in, and from where:
- every Python distribution, read from the image's own metadata (`importlib.metadata` over
  each site-packages: /opt/venv and uv's /opt/uv), with the sha256 of the exact file the
  lock names for it (the wheel whose tags match the installed WHEEL file, or the sdist a
  wheel was built from);
- every Debian package, from `dpkg-query` in the image;
- the CUDA libraries (the shared objects NVIDIA's wheels install), each with its sha256;
- the image's parents (topic -> framework -> base -> root filesystem), from the kit's labels.

The document is a function of the image: its serial number is derived from the image ID
and its timestamp is the image's creation time, so writing it twice gives the same bytes.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from mlsyskit import KIT_VERSION, LABEL_PREFIX, REPO_ROOT
from mlsyskit.data.catalog import Catalog, Topic
from mlsyskit.data.lockfile import normalize
from mlsyskit.data.toml import read_toml
from mlsyskit.engine import ContainerSpec, Engine, ImageInfo
from mlsyskit.errors import KitError, UsageError
from mlsyskit.images.ensure import built_image

SCHEMA = "CycloneDX 1.6"
PARENT_LABEL = f"{LABEL_PREFIX}.parent"
ROOT_LABEL = f"{LABEL_PREFIX}.root-ref"

# Run in the image with its own python3 and no network: stdlib only.
PROBE_SCRIPT = r"""
import glob, hashlib, json, os, subprocess
from importlib import metadata

def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()

out = {"python": [], "deb": [], "cuda": [], "os": {}}
for line in open("/etc/os-release"):
    key, _, value = line.strip().partition("=")
    if key:
        out["os"][key] = value.strip('"')
sites = sorted({p for pattern in ("/opt/*/lib/python3*/site-packages", "/usr/lib/python3/dist-packages",
                                  "/usr/local/lib/python3*/dist-packages") for p in glob.glob(pattern)})
for site in sites:
    for dist in metadata.distributions(path=[site]):
        wheel = dist.read_text("WHEEL") or ""
        entry = {
            "name": dist.metadata["Name"], "version": dist.version, "site": site,
            "tags": [line.split(":", 1)[1].strip() for line in wheel.splitlines() if line.startswith("Tag:")],
            "license": dist.metadata.get("License-Expression") or "",
        }
        out["python"].append(entry)
        if not entry["name"].lower().replace("_", "-").startswith("nvidia-"):
            continue
        for file in dist.files or ():
            path = str(dist.locate_file(file))
            if "/lib/" in path and ".so" in file.name and os.path.isfile(path) and not os.path.islink(path):
                out["cuda"].append({"file": file.name, "path": path, "dist": entry["name"], "version": dist.version,
                                    "size": os.path.getsize(path), "sha256": sha256(path)})
fmt = "${Package}\t${Version}\t${Architecture}\t${source:Package}\t${source:Version}\n"
for line in subprocess.run(["dpkg-query", "-W", "-f", fmt], capture_output=True, text=True, check=True).stdout.splitlines():
    name, version, arch, source, source_version = line.split("\t")
    out["deb"].append({"name": name, "version": version, "arch": arch, "source": source, "source_version": source_version})
print(json.dumps(out))
"""


@dataclass(frozen=True)
class LockedFile:
    """One file a uv lock names for a package: a wheel (with its tags) or the sdist."""

    filename: str
    sha256: str
    lock: str  # the lock's path, relative to the kit
    tags: frozenset[str] = frozenset()  # empty for an sdist


@dataclass
class Inventory:
    """What the probe found inside an image."""

    python: list[dict[str, Any]]
    deb: list[dict[str, Any]]
    cuda: list[dict[str, Any]]
    os: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, text: str) -> Inventory:
        data = json.loads(text)
        return cls(python=data["python"], deb=data["deb"], cuda=data["cuda"], os=data.get("os", {}))


def probe(engine: Engine, image: str, timeout: float = 600) -> Inventory:
    """Read the image's packages from inside it (no network: nothing is fetched)."""
    proc = engine.run(ContainerSpec(image=image, command=("python3", "-c", PROBE_SCRIPT), network="none"), timeout=timeout)
    if proc.returncode != 0:
        raise KitError(f"cannot list the packages in {image}: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    return Inventory.from_json(proc.stdout.strip().splitlines()[-1])


def locked_files(locks: Iterable[Path]) -> dict[tuple[str, str], list[LockedFile]]:
    """{(normalized name, version): files} from uv locks; a later lock's entry wins (the
    topic's lock over its framework's)."""
    from packaging.utils import parse_wheel_filename

    found: dict[tuple[str, str], list[LockedFile]] = {}
    for lock in locks:
        where = str(lock.relative_to(REPO_ROOT)) if lock.is_relative_to(REPO_ROOT) else str(lock)
        for package in read_toml(lock).get("package", []):
            if "version" not in package:
                continue
            files = []
            for wheel in package.get("wheels", []):
                filename = wheel["url"].rsplit("/", 1)[-1]
                tags = frozenset(str(t) for t in parse_wheel_filename(filename)[3])
                files.append(LockedFile(filename, wheel["hash"].removeprefix("sha256:"), where, tags))
            sdist = package.get("sdist")
            if sdist and "hash" in sdist:
                filename = (sdist.get("url") or "").rsplit("/", 1)[-1] or f"{package['name']}-{package['version']}.tar.gz"
                files.append(LockedFile(filename, sdist["hash"].removeprefix("sha256:"), where))
            if files:
                found[(normalize(package["name"]), package["version"])] = files
    return found


def match_locked(files: list[LockedFile], installed_tags: Iterable[str]) -> LockedFile | None:
    """The wheel the installed distribution came from (tags in common), else the sdist it was
    built from (a wheel built here has tags no locked wheel has)."""
    tags = set(installed_tags)
    for file in files:
        if file.tags & tags:
            return file
    return next((f for f in files if not f.tags), None)


def parents(engine: Engine, image: ImageInfo) -> list[ImageInfo]:
    """topic -> framework -> base -> root filesystem, following the kit's labels."""
    chain: list[ImageInfo] = []
    ref = image.labels.get(PARENT_LABEL, "")
    root_ref = image.labels.get(ROOT_LABEL, "")
    while ref:
        info = engine.image(ref)
        if info is None:
            raise UsageError(f"{image.tags[0] if image.tags else image.id}: its parent {ref} is not in the engine", fix="rebuild it: invoke build TOPIC")
        chain.append(info)
        ref = info.labels.get(PARENT_LABEL, "")
    if root_ref and all(root_ref not in p.tags for p in chain):
        root = engine.image(root_ref)
        if root is not None:
            chain.append(root)
    return chain


def image_time(value: str) -> datetime | None:
    """Docker's creation time (nanoseconds, `Z`) as an aware datetime."""
    import re

    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(?:Z|[+-]00:00)", value.strip())
    if not match:
        return None
    return datetime.fromisoformat(f"{match[1]}.{(match[2] or '0')[:6].ljust(6, '0')}+00:00")


def build_bom(image: ImageInfo, chain: list[ImageInfo], inventory: Inventory, locked: Mapping[tuple[str, str], list[LockedFile]], name: str = "") -> Any:
    """The CycloneDX document (a cyclonedx Bom) for one image, named `name` (a tag of it)."""
    from cyclonedx.model import HashAlgorithm, HashType, Property
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.component import Component, ComponentType
    from packageurl import PackageURL

    def sha256(value: str) -> list[HashType]:
        return [HashType(alg=HashAlgorithm.SHA_256, content=value.removeprefix("sha256:"))]

    def container(info: ImageInfo, ref: str = "") -> Component:
        name, _, tag = (ref or (sorted(info.tags)[0] if info.tags else info.id)).rpartition(":")
        props = [Property(name=k, value=v) for k, v in sorted(info.labels.items()) if k.startswith(LABEL_PREFIX)]
        return Component(type=ComponentType.CONTAINER, name=name or info.id, version=tag, bom_ref=info.id, hashes=sha256(info.id), properties=props)

    root = container(image, name)
    bom = Bom(serial_number=uuid.uuid5(uuid.NAMESPACE_URL, f"mlsyskit-sbom:{image.id}"))
    bom.metadata.component = root
    bom.metadata.tools.components.add(Component(type=ComponentType.APPLICATION, name="mlsyskit", version=KIT_VERSION))
    bom.metadata.timestamp = image_time(image.created) or bom.metadata.timestamp
    top: list[Component] = []

    previous = root
    for info in chain:  # each parent is a component the image depends on, in order
        parent = container(info)
        bom.components.add(parent)
        bom.register_dependency(previous, [parent])
        previous = parent
    if chain:
        top.append(container(chain[0]))

    distro = inventory.os.get("ID", "debian")
    os_component = Component(type=ComponentType.OPERATING_SYSTEM, name=distro, version=inventory.os.get("VERSION_ID", ""),
                             bom_ref=f"os:{distro}", description=inventory.os.get("PRETTY_NAME", ""))  # fmt: skip
    bom.components.add(os_component)
    top.append(os_component)

    for deb in sorted(inventory.deb, key=lambda d: (d["name"], d["arch"])):
        purl = PackageURL("deb", distro, deb["name"], deb["version"], {"arch": deb["arch"], "distro": f"{distro}-{inventory.os.get('VERSION_ID', '')}"})
        props = [Property(name="mlsyskit:source", value=f"dpkg: {deb['source'] or deb['name']} {deb['source_version'] or deb['version']}")]
        bom.components.add(Component(name=deb["name"], version=deb["version"], purl=purl, bom_ref=str(purl), properties=props))
        top.append(Component(name=deb["name"], bom_ref=str(purl)))

    wheels: dict[str, Component] = {}
    for dist in sorted(inventory.python, key=lambda d: (normalize(d["name"]), d["site"])):
        name = normalize(dist["name"])
        purl = PackageURL("pypi", None, name, dist["version"])
        props = [Property(name="mlsyskit:site-packages", value=dist["site"])]
        file = match_locked(locked.get((name, dist["version"]), []), dist["tags"])
        if file is not None:
            props += [Property(name="mlsyskit:locked-in", value=file.lock), Property(name="mlsyskit:locked-file", value=file.filename)]
        else:  # e.g. pip and setuptools of the tool venv (/opt/uv), which Python's ensurepip brings
            props.append(Property(name="mlsyskit:locked-in", value="none"))
        component = Component(name=name, version=dist["version"], purl=purl, bom_ref=f"{purl}#{dist['site']}",
                              hashes=sha256(file.sha256) if file else None, properties=props)  # fmt: skip
        bom.components.add(component)
        wheels[dist["name"]] = component
        top.append(component)

    for lib in sorted(inventory.cuda, key=lambda c: c["path"]):
        props = [Property(name="mlsyskit:cuda-library", value=lib["path"]), Property(name="mlsyskit:provided-by", value=f"pypi {lib['dist']}")]
        component = Component(type=ComponentType.LIBRARY, name=lib["file"], version=lib["version"], bom_ref=f"file:{lib['path']}",
                              hashes=sha256(lib["sha256"]), properties=props)  # fmt: skip
        bom.components.add(component)
        if lib["dist"] in wheels:
            bom.register_dependency(wheels[lib["dist"]], [component])

    bom.register_dependency(root, [c for c in bom.components if c.bom_ref.value in {t.bom_ref.value for t in top}])
    return bom


def render(bom: Any) -> str:
    """The document as JSON, validated against the CycloneDX 1.6 schema first."""
    from cyclonedx.output.json import JsonV1Dot6
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    text: str = JsonV1Dot6(bom).output_as_string(indent=1)
    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    if error is not None:
        raise KitError(f"the SBOM does not validate against {SCHEMA}: {error}")
    return text


def image_locks(catalog: Catalog, topic: Topic) -> list[Path]:
    """The locks an image of the topic was installed from: the kit's own (the base's uv is
    installed from it, hash-checked), its framework's, then its own."""
    locks = [catalog.frameworks[topic.framework].lock_path] if topic.framework else []
    return [catalog.root / "uv.lock", *locks, topic.lock_path]


def write_sbom(engine: Engine, catalog: Catalog, topic: Topic, image_ref: str, out: Path, log: Callable[[str], None] = lambda _: None) -> dict[str, int]:
    """Probe the image, write its SBOM to `out`; returns the number of components by kind."""
    info = built_image(engine, topic, image_ref)
    log(f"reading the packages in {image_ref} (a container with no network)")
    inventory = probe(engine, image_ref)
    chain = parents(engine, info)
    bom = build_bom(info, chain, inventory, locked_files(image_locks(catalog, topic)), name=image_ref)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(bom) + "\n")
    return {"python": len(inventory.python), "debian": len(inventory.deb), "cuda libraries": len(inventory.cuda), "parent images": len(chain)}
