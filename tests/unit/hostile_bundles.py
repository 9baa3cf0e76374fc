"""Bundles made to attack `invoke load`: the members, manifest, inner docker archive and
signature of each are written here byte by byte (tarfile only builds headers), so that
every trick a sender could play reaches the kit's reader exactly as it would arrive."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlsyskit import KIT_VERSION
from mlsyskit.images import bundle, signing

TAG = "mlsyskit/hostile:one"


def docker_archive(repo_tags: list[str], labels: dict[str, str] | None = None) -> tuple[bytes, str]:
    """A `docker save` archive of one empty image: (its bytes, the image ID)."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Labels": labels or {}}, "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    digest = hashlib.sha256(config).hexdigest()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in (
            (f"{digest}.json", config),
            ("manifest.json", json.dumps([{"Config": f"{digest}.json", "RepoTags": repo_tags, "Layers": []}]).encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue(), f"sha256:{digest}"


def entry(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "", size: int | None = None) -> tuple[bytes, bytes]:
    """(header, data with padding) of one member; `size` may lie about the data's length."""
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.mtime = kind, link, 0o644, 1_700_000_000
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3
    header = info.tobuf(format=tarfile.GNU_FORMAT)
    if size is not None:  # a declared size the data does not have (a sparse bomb)
        forged = tarfile.TarInfo(name)
        forged.size, forged.mtime, forged.mode = size, 1_700_000_000, 0o644
        header = forged.tobuf(format=tarfile.GNU_FORMAT)
    return header, data + b"\0" * (-len(data) % 512)


@dataclass
class Recipe:
    """What a bundle holds; each hostile case changes one part of a valid one."""

    repo_tags: list[str] = field(default_factory=lambda: [TAG])  # what docker load would set
    tags: list[str] = field(default_factory=lambda: [TAG])  # what the manifest says
    image_id: str = ""  # "" = the archive's own
    files: dict[str, bytes] = field(default_factory=lambda: {f"{bundle.ROOT}/locks/uv.lock": b"version = 1\n"})
    extra: list[tuple[bytes, bytes]] = field(default_factory=list)  # raw members before the manifest
    listed: list[str] = field(default_factory=list)  # names of extra members the manifest lists too
    manifest_edit: Callable[[dict[str, Any]], None] | None = None
    sign_with: Any = None
    after_signing: Callable[[bytes], bytes] | None = None  # changes the manifest once signed
    manifest_size: int | None = None


def write(path: Path, recipe: Recipe | None = None) -> dict[str, Any]:
    recipe = recipe or Recipe()
    images, image_id = docker_archive(recipe.repo_tags)
    members = [(bundle.IMAGES, images), *recipe.files.items()]
    files = [{"name": n, "size": len(d), "sha256": hashlib.sha256(d).hexdigest()} for n, d in members]
    for name in recipe.listed:
        files.append({"name": name, "size": 4, "sha256": hashlib.sha256(b"pwnd").hexdigest()})
    manifest: dict[str, Any] = {
        "format": bundle.FORMAT,
        "kit_version": KIT_VERSION,
        "base": "pypi",
        "topics": ["hostile"],
        "stack": "",
        "images": [{"id": recipe.image_id or image_id, "tags": recipe.tags, "labels": {"org.mlsyskit.kind": "topic"}}],
        "files": files,
    }
    if recipe.manifest_edit:
        recipe.manifest_edit(manifest)
    manifest_bytes = json.dumps(manifest, indent=1).encode()
    signature = signing.sign(manifest_bytes, recipe.sign_with) if recipe.sign_with is not None else None
    if recipe.after_signing:
        manifest_bytes = recipe.after_signing(manifest_bytes)
    with path.open("wb") as out:
        for name, data in members:
            out.write(b"".join(entry(name, data)))
        for header, data in recipe.extra:
            out.write(header + data)
        out.write(b"".join(entry(bundle.MANIFEST, manifest_bytes, size=recipe.manifest_size)))
        if signature is not None:
            out.write(b"".join(entry(bundle.SIGNATURE, signature)))
        out.write(b"\0" * 1024)
    return manifest
