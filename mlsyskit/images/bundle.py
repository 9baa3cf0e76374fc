"""Offline bundles: one file that carries topics (or a stack) to a machine with no network.

A bundle is a plain tar (no compression: the image layers are mostly compressed wheels
already, and 2 cores would spend minutes on gzip for little):

    mlsyskit-bundle/images.tar         `docker save` of every image together: each layer once
    mlsyskit-bundle/sbom/*.cdx.json    one CycloneDX SBOM per topic image
    mlsyskit-bundle/locks/...          the uv locks the images were installed from
    mlsyskit-bundle/compose/...        a stack's compose file, its scripts and the smoke tests
    mlsyskit-bundle/kernel-cache.tar   with --with-cache: the topic images' kernel caches
                                       (runtime/caches.py); `invoke load` unpacks it into the
                                       loading user's cache under the same image IDs
    mlsyskit-bundle/manifest.json      kit version, images (ID, tags, labels), and the size
                                       and sha256 of every other member
    mlsyskit-bundle/manifest.sig       last, in a signed bundle: an ed25519 signature over
                                       the manifest (signing.py)

images.tar is streamed from `docker save` straight into the bundle (its header is written
when its size is known), so writing needs no second copy on disk.

A bundle comes from someone else, so loading trusts nothing in it until it is checked, and
reads it with the kit's own code (`read_members`), never with tarfile's extraction (whose
safety depends on the Python patch level: Debian 12's 3.11.2 has no `filter=`): every
member must be a regular file of a known name, once, inside the file; the manifest (and its
signature, where one is required) is checked first; every size is bounded by the manifest
and by free disk before anything is read; every sha256 is checked while the small files go
to a private temporary folder beside their destination; the tags docker would set (the
inner archive's own manifest) must be the bundle's, under `mlsyskit/` unless named with
`--allow-tags`. Only then does images.tar reach the engine, its bytes hashed again on the
way; a failed load puts every tag it moved back where it was.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from mlsyskit import IMAGE_PREFIX, KIT_VERSION, LABEL_PREFIX, REPO_ROOT
from mlsyskit.data.catalog import Catalog, Topic
from mlsyskit.engine import Engine, ImageInfo, image_ref
from mlsyskit.errors import KitError, UsageError
from mlsyskit.images import sbom, signing
from mlsyskit.images.ensure import built_image
from mlsyskit.images.plan import topic_alias
from mlsyskit.report import size as human_size

FORMAT = "mlsyskit-bundle/1"
ROOT = "mlsyskit-bundle"
IMAGES = f"{ROOT}/images.tar"
MANIFEST = f"{ROOT}/manifest.json"
SIGNATURE = f"{ROOT}/manifest.sig"
KERNEL_CACHE = f"{ROOT}/kernel-cache.tar"  # unpacked beside the locks; `invoke load` moves it into the cache
BLOCK = 512
RECORD = 20 * BLOCK
CHUNK = 1 << 20
RECOPY = "copy the bundle again and compare its size and sha256 with the sender's (`ls -l`, `sha256sum`)"

Log = Callable[[str], None]


class Progress:
    """One line every 5% or every 10 s of a long copy: how far, how fast."""

    def __init__(self, log: Log, what: str, total: int) -> None:
        self.log, self.what, self.total = log, what, max(total, 1)
        self.start = self.last_time = time.monotonic()
        self.last_share = 0.0
        self.done_bytes = 0

    def add(self, n: int) -> None:
        self.done_bytes += n
        now, share = time.monotonic(), self.done_bytes / self.total
        if share - self.last_share >= 0.05 or now - self.last_time >= 10:
            self.last_share, self.last_time = share, now
            self.log(f"{self.what}: {human_size(self.done_bytes)} of ~{human_size(self.total)} ({min(share, 1):.0%}) at {self.rate()}")

    def rate(self) -> str:
        return f"{human_size(int(self.done_bytes / max(time.monotonic() - self.start, 1e-3)))}/s"

    def seconds(self) -> float:
        return time.monotonic() - self.start


@dataclass(frozen=True)
class Contents:
    """What a bundle carries: topic images (and their parents), a stack's files."""

    topics: list[Topic]
    stack: str  # "" when topics were named
    base: str


def image_chain(engine: Engine, topic: Topic, base: str) -> list[ImageInfo]:
    """The topic image and its parents, as the engine has them (all needed: `invoke build`
    on the other side then finds every layer current)."""
    info = built_image(engine, topic, topic_alias(topic.name, base))
    return [info, *sbom.parents(engine, info)]


def _header(name: str, size: int, mtime: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, mtime, 0o644
    info.uname = info.gname = "root"
    # GNU format: one 512-byte header whatever the size (images pass ustar's 8 GiB limit)
    header = info.tobuf(format=tarfile.GNU_FORMAT)
    assert len(header) == BLOCK, name
    return header


def _write_member(out: IO[bytes], name: str, data: bytes, mtime: int) -> dict[str, Any]:
    out.write(_header(name, len(data), mtime) + data + b"\0" * (-len(data) % BLOCK))
    return {"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _stream_member(out: IO[bytes], name: str, chunks: Iterable[bytes], mtime: int, progress: Progress) -> dict[str, Any]:
    """A member whose size is known only at its end: a placeholder header, the data, then
    the real header written over the placeholder."""
    start = out.tell()
    out.write(b"\0" * BLOCK)
    digest, size = hashlib.sha256(), 0
    for chunk in chunks:
        out.write(chunk)
        digest.update(chunk)
        size += len(chunk)
        progress.add(len(chunk))
    out.write(b"\0" * (-size % BLOCK))
    end = out.tell()
    out.seek(start)
    out.write(_header(name, size, mtime))
    out.seek(end)
    return {"name": name, "size": size, "sha256": digest.hexdigest()}


def _kit_files(contents: Contents, catalog: Catalog) -> dict[str, Path]:
    """{name in the bundle: file}: the locks, and a stack's compose file with what it mounts."""
    files: dict[str, Path] = {"locks/uv.lock": catalog.root / "uv.lock"}
    for topic in contents.topics:
        for path in sbom.image_locks(catalog, topic)[1:]:
            files[f"locks/{path.parent.relative_to(catalog.root)}/uv.lock"] = path
    if contents.stack:
        compose = catalog.root / "compose"
        files[f"compose/{contents.stack}.yml"] = compose / f"{contents.stack}.yml"
        for path in sorted((compose / "scripts").iterdir()):
            files[f"compose/scripts/{path.name}"] = path
        # the whole package a stack's services run (`python -m smoke_tests.X`): its __init__,
        # the shared _result/_gates/_hardware modules and the GPU peaks table beside them
        for path in sorted([*(catalog.root / "smoke_tests").glob("*.py"), *(catalog.root / "smoke_tests").glob("*.toml")]):
            files[f"smoke_tests/{path.name}"] = path
    return files


def write_bundle(
    engine: Engine, catalog: Catalog, contents: Contents, out: Path, log: Log, *, sign_with: Path | None = None,
    extra: Sequence[tuple[str, Path]] = (), notes: Mapping[str, Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Write the bundle to `out` (through a temporary file beside it, renamed at the end: an
    interrupted run leaves no file that looks whole), signed with the ed25519 key
    `sign_with` when given. `extra`: (name in the bundle, file) streamed in after the kit's
    files with their checksums (the kernel cache); `notes`: manifest fields that describe
    them. Returns the manifest."""
    key = signing.load_private_key(sign_with) if sign_with is not None else None  # a bad key: before minutes of saving
    chains = {t.name: image_chain(engine, t, contents.base) for t in contents.topics}
    images: dict[str, ImageInfo] = {}
    for chain in chains.values():
        for info in chain:
            images.setdefault(info.id, info)
    refs = sorted({tag for info in images.values() for tag in info.tags if tag.startswith(f"{IMAGE_PREFIX}/")})
    # what `docker save` will write, near enough: each image's size beyond its parent's
    by_ref = {tag: info for info in images.values() for tag in info.tags}
    estimate = sum(info.size - (by_ref[p].size if (p := info.labels.get(sbom.PARENT_LABEL, "")) in by_ref else 0) for info in images.values())
    newest = max(int(t.timestamp()) if (t := sbom.image_time(info.created)) else 0 for info in images.values())

    out.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(out.parent).free
    if free < estimate * 1.05:
        raise KitError(
            f"not enough space for the bundle in {out.parent}: it needs about {human_size(estimate)}, {human_size(free)} is free",
            fix="free space there, or write it elsewhere with -o",
        )
    with tempfile.TemporaryDirectory(prefix="mlsyskit-sbom-") as scratch:
        sboms = {}
        for topic in contents.topics:
            path = Path(scratch) / f"{topic.name}-{contents.base}.cdx.json"
            sbom.write_sbom(engine, catalog, topic, topic_alias(topic.name, contents.base), path, log=log)
            sboms[f"sbom/{path.name}"] = path
        partial = out.with_name(out.name + ".partial")
        try:
            with partial.open("wb") as handle:
                log(f"saving {len(images)} images ({', '.join(refs)}) into {out}")
                progress = Progress(log, "bundle", estimate)
                files = [_stream_member(handle, IMAGES, engine.save(refs), newest, progress)]
                for name, path in [*sorted(sboms.items()), *sorted(_kit_files(contents, catalog).items())]:
                    files.append(_write_member(handle, f"{ROOT}/{name}", path.read_bytes(), newest))
                for name, path in extra:
                    with path.open("rb") as stream:
                        chunks = iter(lambda: stream.read(CHUNK), b"")
                        files.append(_stream_member(handle, f"{ROOT}/{name}", chunks, newest, Progress(log, name, path.stat().st_size)))
                manifest = {
                    "format": FORMAT,
                    "kit_version": KIT_VERSION,
                    "base": contents.base,
                    "topics": [t.name for t in contents.topics],
                    "stack": contents.stack,
                    "images": [
                        {
                            "id": info.id,
                            "tags": sorted(t for t in info.tags if t.startswith(f"{IMAGE_PREFIX}/")),
                            "labels": {k: v for k, v in sorted(info.labels.items()) if k.startswith(LABEL_PREFIX)},
                        }
                        for info in sorted(images.values(), key=lambda i: sorted(i.tags))
                    ],
                    "files": files,
                    **(notes or {}),
                }
                manifest_bytes = json.dumps(manifest, indent=1).encode() + b"\n"
                _write_member(handle, MANIFEST, manifest_bytes, newest)
                if key is not None:
                    _write_member(handle, SIGNATURE, signing.sign(manifest_bytes, key), newest)
                handle.write(b"\0" * (2 * BLOCK))
                handle.write(b"\0" * (-handle.tell() % RECORD))
            partial.replace(out)
        except OSError as exc:  # a full disk, a lost mount: one line, no half-written file
            partial.unlink(missing_ok=True)
            raise KitError(f"cannot write {out}: {exc.strerror or exc}", fix="free space there, or write it elsewhere with -o") from None
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    log(f"bundle written in {progress.seconds():.0f} s ({progress.rate()})")
    return manifest


# --- load ----------------------------------------------------------------------------------

# The names a bundle may hold (besides images.tar, the manifest and its signature): one
# pattern per kind, each path component starting with a letter or digit (no `.`, `..`, `/`
# at the start, no backslash, ASCII only), locks at most four folders deep.
_PART = r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}"
KNOWN = re.compile(
    rf"{ROOT}/(?:images\.tar|manifest\.json|manifest\.sig|sbom/{_PART}\.cdx\.json|locks/(?:{_PART}/){{0,4}}uv\.lock"
    rf"|compose/{_PART}\.yml|compose/scripts/{_PART}|smoke_tests/_{{0,2}}{_PART}\.(?:py|toml)|kernel-cache\.tar)",
    re.ASCII,
)
MANIFEST_MAX = 4 << 20  # bytes: a manifest of hundreds of images is ~100 KB
SMALL_MAX = 64 << 20  # any member but images.tar and the kernel cache (locks, SBOMs, scripts); those two: the manifest and free disk
INNER_MAX = 16 << 20  # docker save's own manifest.json / repositories
IMAGE_ID = re.compile(r"sha256:[0-9a-f]{64}", re.ASCII)
SHA256 = re.compile(r"[0-9a-f]{64}", re.ASCII)
KINDS = {b"1": "a hard link", b"2": "a symbolic link", b"3": "a character device", b"4": "a block device", b"5": "a folder", b"6": "a FIFO"}
KINDS |= {b"L": "a GNU long name", b"K": "a GNU long link", b"S": "a sparse file", b"x": "a pax header", b"g": "a pax header"}


@dataclass(frozen=True)
class Member:
    name: str
    size: int
    offset: int  # of its data in the file


def refused(path: Path, what: str, fix: str = RECOPY) -> UsageError:
    """A bundle refused: bad input, one line, exit 2."""
    return UsageError(f"{path} {what}", fix=fix)


def _shown(name: str | bytes) -> str:
    text = ascii(name.decode(errors="replace") if isinstance(name, bytes) else name)
    return text if len(text) <= 100 else text[:97] + "..."


def _number(field: bytes) -> int:
    """A tar header's number: octal, or GNU base-256 (sizes past 8 GiB)."""
    if field[:1] and field[0] & 0x80:
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    text = field.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    if not re.fullmatch(rb"[0-7]+", text):
        raise ValueError(f"not an octal number: {text[:20]!r}")
    return int(text, 8)


def _headers(handle: IO[bytes], start: int, end: int, path: Path, what: str = "is truncated or not a kit bundle") -> Iterator[tuple[bytes, bytes, int, int]]:
    """(name, type, size, data offset) of each tar header between `start` and `end`, read by
    seeking over the data (nothing of a member is read here). A header whose checksum is
    wrong, or a member that would reach past `end`, is a one-line error."""
    position = start
    while position + BLOCK <= end:
        handle.seek(position)
        block = handle.read(BLOCK)
        if len(block) < BLOCK:
            break
        if block == b"\0" * BLOCK:
            return
        try:
            stored, size = _number(block[148:156]), _number(block[124:136])
        except ValueError as exc:
            raise refused(path, f"{what} (a tar header at byte {position}: {exc})") from None
        if stored != sum(block[:148]) + 8 * 32 + sum(block[156:]):
            raise refused(path, f"{what} (the tar header at byte {position} is damaged)")
        name = block[:100].split(b"\0", 1)[0]
        if block[257:263] == b"ustar\0" and (prefix := block[345:500].split(b"\0", 1)[0]):
            name = prefix + b"/" + name
        data = position + BLOCK
        if data + size > end:
            raise refused(path, f"{what} ({_shown(name)} declares {human_size(size)}, past its end)")
        yield name, block[156:157], size, data
        position = data + size + (-size % BLOCK)
    raise refused(path, f"{what} (it ends inside a tar header, or without the end-of-archive blocks)")


def read_members(handle: IO[bytes], path: Path) -> dict[str, Member]:
    """The bundle's members by name: regular files of known names, each once, each inside
    the file. Nothing is read but the headers."""
    end = handle.seek(0, 2)
    members: dict[str, Member] = {}
    for raw, kind, size, offset in _headers(handle, 0, end, path):
        if kind not in (b"0", b"\0"):
            raise refused(path, f"holds {KINDS.get(kind, 'an entry of type ' + ascii(kind))} ({_shown(raw)}): a kit bundle holds regular files only")
        try:
            name = raw.decode("ascii")
        except UnicodeDecodeError:
            name = ""
        if not KNOWN.fullmatch(name):
            raise refused(path, f"holds an unexpected member {_shown(raw)} (not a kit bundle, or changed after it was written)")
        if name in members:
            raise refused(path, f"holds {_shown(name)} twice (changed after it was written)")
        if name not in (IMAGES, KERNEL_CACHE) and size > (MANIFEST_MAX if name == MANIFEST else signing.SIGNATURE_MAX if name == SIGNATURE else SMALL_MAX):
            raise refused(path, f"is not a kit bundle: {_shown(name)} declares {human_size(size)}")
        members[name] = Member(name, size, offset)
    if not members:
        raise refused(path, "is truncated or not a kit bundle (no member)")
    return members


def _read(handle: IO[bytes], member: Member) -> bytes:
    handle.seek(member.offset)
    return handle.read(member.size)


def _range(handle: IO[bytes], member: Member, progress: Progress | None = None) -> Iterator[bytes]:
    """The member's bytes in chunks, from its place in the file (the same open file that was
    checked: a file renamed over it meanwhile is not read)."""
    left, position = member.size, member.offset
    while left > 0:
        handle.seek(position)
        chunk = handle.read(min(CHUNK, left))
        if not chunk:
            raise KitError("the bundle became shorter while it was read", fix=RECOPY)
        left -= len(chunk)
        position += len(chunk)
        if progress is not None:
            progress.add(len(chunk))
        yield chunk


def check_manifest(manifest: Any, members: dict[str, Member], path: Path, allowed_tags: frozenset[str]) -> dict[str, Any]:
    """The manifest's own fields (format, version, types, names, IDs, tags, labels), and the
    members against it: the same names, each of the size it records."""
    if not isinstance(manifest, dict):
        raise refused(path, "is not a kit bundle (its manifest is not a JSON object)")
    if manifest.get("format") != FORMAT:
        raise refused(path, f"is a {_shown(str(manifest.get('format')))} bundle; this kit reads {FORMAT}", fix="load it with the kit that wrote it")
    if manifest.get("kit_version") != KIT_VERSION:
        version = _shown(str(manifest.get("kit_version")))
        fix = "load it with the kit that wrote it, or write the bundle again with this kit"
        raise refused(path, f"was written by mlsyskit {version.strip(chr(39))}; this kit is {KIT_VERSION}", fix=fix)
    files, images = manifest.get("files"), manifest.get("images")
    if not isinstance(files, list) or not isinstance(images, list):
        raise refused(path, "is not a kit bundle (its manifest has no files or images list)")
    expected: dict[str, int] = {}
    for entry in files:
        name, size, digest = (entry.get(k) for k in ("name", "size", "sha256")) if isinstance(entry, dict) else (None, None, None)
        if not isinstance(name, str) or not KNOWN.fullmatch(name) or name in (MANIFEST, SIGNATURE) or name in expected:
            raise refused(path, f"is not a kit bundle: its manifest names the member {_shown(str(name))}")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or not isinstance(digest, str) or not SHA256.fullmatch(digest):
            raise refused(path, f"is not a kit bundle: its manifest's entry for {name} has no valid size and sha256")
        expected[name] = size
    for image in images:
        if not isinstance(image, dict) or not isinstance(image.get("id"), str) or not IMAGE_ID.fullmatch(image["id"]):
            raise refused(path, f"is not a kit bundle: an image ID in its manifest is {_shown(str(image.get('id') if isinstance(image, dict) else image))}")
        tags, labels = image.get("tags"), image.get("labels")
        if not isinstance(tags, list) or not isinstance(labels, dict):
            raise refused(path, f"is not a kit bundle: image {image['id'][:19]} has no tags list or labels")
        for tag in tags:
            if not isinstance(tag, str):
                raise refused(path, f"is not a kit bundle: a tag of image {image['id'][:19]} is not a string")
            try:
                image_ref(tag)
            except UsageError:
                raise refused(path, f"would set the tag {_shown(tag)}, which is not an image reference") from None
            if not tag.startswith(f"{IMAGE_PREFIX}/") and tag not in allowed_tags:
                raise refused(
                    path,
                    f"would set the tag {_shown(tag)}, outside {IMAGE_PREFIX}/ (it could replace an image builds start from)",
                    fix=f"if you mean it, name it: `invoke load FILE --allow-tags {tag}`",
                )
        if not all(isinstance(k, str) and k.startswith(LABEL_PREFIX) and isinstance(v, str) for k, v in labels.items()):
            raise refused(path, f"is not a kit bundle: image {image['id'][:19]} lists labels that are not the kit's")
    if IMAGES not in expected:
        raise refused(path, f"is not a kit bundle: its manifest lists no {IMAGES}")
    found = {name: m.size for name, m in members.items() if name not in (MANIFEST, SIGNATURE)}
    for name in sorted(set(expected) | set(found)):
        if name not in found:
            raise refused(path, f"is truncated or damaged: {name} is missing")
        if name not in expected:
            raise refused(path, f"was changed after it was written: {name} is not in its manifest")
        if found[name] != expected[name]:
            raise refused(path, f"is damaged: {name} does not match its size in the manifest")
    return manifest


def _inner_files(handle: IO[bytes], images: Member, path: Path) -> dict[str, bytes]:
    """docker save's own `manifest.json` and `repositories` from images.tar, read in place:
    they say which tags `docker load` would set. Each must be a regular file, once."""
    import posixpath

    found: dict[str, bytes] = {}
    long_name: bytes | None = None
    pax: dict[str, str] = {}
    for raw, kind, size, offset in _headers(handle, images.offset, images.offset + images.size, path, f"is not a kit bundle: {IMAGES} is no docker archive"):
        if kind in (b"x", b"L"):  # the next header's name (and size) come from here
            if size > INNER_MAX:
                raise refused(path, f"is not a kit bundle: {IMAGES} holds a {human_size(size)} tar extension header")
            handle.seek(offset)
            data = handle.read(size)
            if kind == b"L":
                long_name = data.split(b"\0", 1)[0]
            else:
                pax = dict(_pax_records(data, path))
            continue
        name = pax.get("path", "").encode() or long_name or raw
        long_name, pax = None, {}
        key = posixpath.normpath("/" + name.decode(errors="replace")).lstrip("/")
        if key in ("manifest.json", "repositories"):
            if kind not in (b"0", b"\0") or key in found or size > INNER_MAX:
                raise refused(path, f"is not a kit bundle: {IMAGES} holds a {key} that is not one plain file")
            handle.seek(offset)
            found[key] = handle.read(size)
    return found


def _pax_records(data: bytes, path: Path) -> Iterator[tuple[str, str]]:
    while data:
        length = data.partition(b" ")[0]
        if not length.isdigit() or int(length) > len(data) or int(length) <= len(length) + 1:
            raise refused(path, f"is not a kit bundle: {IMAGES} holds a damaged pax header")
        record, data = data[len(length) + 1 : int(length)], data[int(length) :]
        key, _, value = record.rstrip(b"\n").partition(b"=")
        yield key.decode(errors="replace"), value.decode(errors="replace")


def check_docker_tags(handle: IO[bytes], images: Member, manifest: dict[str, Any], path: Path) -> set[str]:
    """The tags `docker load` would set, from images.tar's own manifest: each must be one
    the bundle's manifest gives the same image (so under mlsyskit/, or named by the user),
    and the images must be the manifest's. Returns them."""
    inner = _inner_files(handle, images, path)
    wanted = {tag: image["id"] for image in manifest["images"] for tag in image["tags"]}
    ids = {image["id"] for image in manifest["images"]}
    try:
        entries = json.loads(inner["manifest.json"])
        repositories = json.loads(inner["repositories"]) if "repositories" in inner else {}
        tags: dict[str, str] = {}
        configs = set()
        for entry in entries:
            config = str(entry["Config"]).removeprefix("blobs/sha256/").removesuffix(".json")
            configs.add(f"sha256:{config}")
            for tag in entry.get("RepoTags") or []:
                tags[str(tag)] = f"sha256:{config}"
        for repository, by_tag in repositories.items():
            for tag in by_tag:
                tags.setdefault(f"{repository}:{tag}", "")
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise refused(path, f"is not a kit bundle: {IMAGES} has no docker manifest ({_shown(str(exc))})") from None
    for tag, image_id in sorted(tags.items()):
        if tag not in wanted or (image_id and wanted[tag] != image_id):
            raise refused(path, f"is not a kit bundle: {IMAGES} would set the tag {_shown(tag)}, which its manifest does not give that image")
    if configs != ids:
        raise refused(path, f"is not a kit bundle: {IMAGES} holds other images than its manifest lists")
    return set(tags)


@dataclass
class Checked:
    """A bundle that passed every check: its open file, manifest, members, the tags docker
    will set, and the private folder its small files were written to (if any)."""

    handle: IO[bytes]
    manifest: dict[str, Any]
    members: dict[str, Member]
    docker_tags: set[str]
    scratch: Path | None
    signer: str


def check_bundle(
    handle: IO[bytes], path: Path, log: Log, *, keys: list[Any] | None = None, allowed_tags: frozenset[str] = frozenset(), scratch: Path | None = None
) -> Checked:
    """Every check, before anything reaches the engine: structure, signature (when `keys`
    are given), manifest, sizes against the manifest and free disk, every sha256 (the small
    files written into `scratch`, a private folder), the tags docker would set."""
    members = read_members(handle, path)
    if MANIFEST not in members:
        raise refused(path, f"is truncated or not a kit bundle (no {MANIFEST} at its end)")
    manifest_bytes = _read(handle, members[MANIFEST])
    signer = ""
    if keys:
        signer = signing.check(manifest_bytes, _read(handle, members[SIGNATURE]) if SIGNATURE in members else None, keys, path)
    try:
        manifest = json.loads(manifest_bytes)
    except (ValueError, UnicodeDecodeError) as exc:
        raise refused(path, f"is truncated or not a kit bundle (its manifest is not JSON: {_shown(str(exc))})") from None
    check_manifest(manifest, members, path, allowed_tags)
    small = sum(m.size for name, m in members.items() if name not in (IMAGES, MANIFEST, SIGNATURE))
    if scratch is not None and (free := shutil.disk_usage(scratch).free) < small + (1 << 20):
        needed = f"{human_size(small)} needed, {human_size(free)} free"
        raise KitError(f"not enough space in {scratch.parent} for the bundle's files: {needed}", fix="free space there, or unpack elsewhere with --to")
    digests = {f["name"]: f["sha256"] for f in manifest["files"]}
    progress = Progress(log, "checking", sum(m.size for m in members.values()))
    for name, member in members.items():
        if name in (MANIFEST, SIGNATURE):
            continue
        digest = hashlib.sha256()
        out = None
        if scratch is not None and name != IMAGES:
            target = scratch / name.removeprefix(f"{ROOT}/")
            target.parent.mkdir(parents=True, exist_ok=True)
            out = open(target, "xb")  # noqa: SIM115 - closed below; "x": never through a link
        try:
            for chunk in _range(handle, member, progress):
                digest.update(chunk)
                if out is not None:
                    out.write(chunk)
        finally:
            if out is not None:
                out.close()
        if digest.hexdigest() != digests[name]:
            raise refused(path, f"is damaged: {name} does not match its sha256 in the manifest")
    docker_tags = check_docker_tags(handle, members[IMAGES], manifest, path)
    log(f"checked {len(members) - 1 - (SIGNATURE in members)} files ({human_size(progress.done_bytes)}) against the manifest in {progress.seconds():.0f} s")
    return Checked(handle, manifest, members, docker_tags, scratch, signer)


def verify(path: Path, log: Log, *, keys: list[Any] | None = None, allowed_tags: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Every check of `check_bundle`, writing nothing. Returns the manifest."""
    if not path.is_file():
        raise UsageError(f"no bundle at {path}", fix="give the path of a file written by `invoke bundle`")
    with path.open("rb") as handle:
        return check_bundle(handle, path, log, keys=keys, allowed_tags=allowed_tags).manifest


def trusted_keys(require_signature: str, config_key: str) -> list[Any]:
    """The public keys a bundle must be signed with: `--require-signature`'s and kit.toml's
    `bundles.trusted_key` (either one signing is enough); none: signatures are optional."""
    return [signing.load_public_key(Path(p)) for p in dict.fromkeys((require_signature, config_key)) if p]


def load_bundle(
    connect: Callable[[], Engine], path: Path, unpack_to: Path, log: Log, *, keys: list[Any] | None = None, allowed_tags: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """Check everything (`check_bundle`), then connect to the engine (a refused bundle never
    reaches it), `docker load` the images, check IDs, tags and labels, and move the other
    files under `unpack_to`. On failure every tag the load moved is put back on its previous
    image (or removed), and nothing is unpacked."""
    if not path.is_file():
        raise UsageError(f"no bundle at {path}", fix="give the path of a file written by `invoke bundle`")
    unpack_to.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{unpack_to.name}.loading-", dir=unpack_to.parent))  # private (0700), beside its destination
    try:
        with path.open("rb") as handle:
            checked = check_bundle(handle, path, log, keys=keys, allowed_tags=allowed_tags, scratch=scratch)
            if checked.signer:
                log(f"signed by {checked.signer} (trusted)")
            _load_images(connect(), checked, path, log)
        _move_into(scratch, unpack_to)
        (unpack_to / "manifest.json").write_text(json.dumps(checked.manifest, indent=1) + "\n")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return checked.manifest


def _load_images(engine: Engine, checked: Checked, path: Path, log: Log) -> None:
    manifest, images = checked.manifest, checked.members[IMAGES]
    root = engine.daemon().root_dir
    if root and Path(root).is_dir() and (free := shutil.disk_usage(root).free) < images.size:
        needed = f"{human_size(images.size)} needed, {human_size(free)} free"
        raise KitError(f"not enough space for the images under {root}: {needed}", fix="free space for the Docker engine first")
    tags = sorted(checked.docker_tags | {tag for image in manifest["images"] for tag in image["tags"]})
    before = {tag: (info.id if (info := engine.image(tag)) else None) for tag in tags}
    progress = Progress(log, "loading", images.size)
    digest = hashlib.sha256()
    expected = next(f["sha256"] for f in manifest["files"] if f["name"] == IMAGES)

    def hashed() -> Iterator[bytes]:
        for chunk in _range(checked.handle, images, progress):
            digest.update(chunk)
            yield chunk

    try:
        engine.load(hashed())
        if digest.hexdigest() != expected:
            raise refused(path, f"changed while it was loaded: {IMAGES} no longer matches its sha256")
        for image in manifest["images"]:
            info = engine.image(image["id"])
            labels = {k: v for k, v in (info.labels if info else {}).items() if k.startswith(LABEL_PREFIX)}
            missing = [t for t in image["tags"] if info is None or t not in info.tags]
            if info is None or missing or labels != image["labels"]:
                raise KitError(f"after `docker load`, image {image['id'][:19]} is not as bundled (tags missing: {missing or 'none'})", fix=RECOPY)
    except BaseException:
        restore_tags(engine, before)
        raise
    log(f"loaded {len(manifest['images'])} images in {progress.seconds():.0f} s ({progress.rate()})")


def restore_tags(engine: Engine, before: dict[str, str | None]) -> None:
    """Every tag back where it was: on its previous image, or gone where it did not exist."""
    for tag, previous in before.items():
        now = engine.image(tag)
        if now is None or now.id == previous:
            continue
        if previous is None:
            engine.remove_images([tag])
        else:
            engine.tag(previous, tag)


def _move_into(scratch: Path, unpack_to: Path) -> None:
    """The checked files from the private folder to their place, each renamed (the same
    file system: the folder is beside its destination)."""
    for source in sorted(p for p in scratch.rglob("*") if p.is_file()):
        target = unpack_to / source.relative_to(scratch)
        target.parent.mkdir(parents=True, exist_ok=True)
        source.replace(target)


def default_unpack_dir(path: Path) -> Path:
    return REPO_ROOT / ".kit" / "bundles" / path.name.split(".")[0]
