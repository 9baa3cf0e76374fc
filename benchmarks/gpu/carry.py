"""Carry kit images to a GPU machine that has no Docker, and run them there as the NVIDIA
container toolkit would run them.

Here, with the engine (the kit's environment):

    .venv/bin/python benchmarks/gpu/carry.py pack --out .img mlsyskit/verl:pypi mlsyskit/openrlhf:pypi ...

exports each image's whole filesystem (``docker export`` of a created container, through the
kit's engine), stores every file's content once across all the images (images on one
framework share torch and the CUDA wheels, frameworks share the base; a file is stored once
whatever image holds it), and writes one zstd stream of a tar (the unique contents, then
``manifest.json``: each image's ID, environment and every path's type, mode, owner, mtime
and content hash) split into pieces of 54 MiB under ``--out`` (the device tool carries
one piece a call). ``--out``/pack.json says what was packed.

On the GPU machine (root, no network; Python's standard library and the zstandard wheel
that ``pack`` leaves beside the pieces, since those machines have no zstd tool):

    python3 benchmarks/gpu/carry.py unpack PIECES_DIR ROOTS_DIR      # every image, one folder each
    python3 benchmarks/gpu/carry.py setup ROOTS_DIR/NAME             # the GPU, as the toolkit gives it
    python3 benchmarks/gpu/carry.py run ROOTS_DIR/NAME [--uid 1000] [--home DIR] [--bind SRC:DST]
            [--env NAME=VALUE] -- COMMAND...

``unpack`` writes each content once and hard-links it into every image folder that holds
it with the same mode and owner (a copy where those differ), so four images of one framework
take little more disk than one. ``setup`` does what the NVIDIA container toolkit's hook
does for ``docker run --gpus all``: the host driver's user-space libraries (libcuda,
libnvidia-*) go into the image's library folder and its ``ldconfig`` runs, ``nvidia-smi``
goes into /usr/bin, and /dev (with every /dev/nvidia*), /proc and /sys are bound in; it
also writes /etc/hosts and /etc/hostname, which Docker writes at run time. ``run`` starts
the command with ``chroot`` in the image's own environment (its ``ENV``, PATH included,
nothing of the host's), ``HOME`` as given, as root or ``--uid`` (the way ``invoke shell``
runs as the caller's UID with an empty HOME), with the checkout's ``smoke_tests/`` at
/opt/mlsyskit/smoke_tests and ``PYTHONPATH=/opt/mlsyskit`` as ``invoke smoke`` mounts them.

What differs from ``docker run --gpus all``: no namespaces (the command sees the host's
processes, network and IPC: as ``--pid=host --network=host --ipc=host``), no cgroup
limits, all of /dev instead of the GPU's device files, and the driver's libraries copied,
not bind-mounted read-only. Limits are the host's (memlock unlimited as root there).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

PIECE_BYTES = 56623104  # 54 MiB: one device call carries 64 MiB with the checkout (about 10 MB)
SPOOL_BYTES = 256 << 20
KIT_ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------- pack (here)


class ChunkReader(io.RawIOBase):
    """A file object over an iterator of byte chunks (an export stream)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks: Iterator[bytes] = iter(chunks)
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buffer:
            try:
                self._buffer = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(b), len(self._buffer))
        b[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n


def image_name(ref: str) -> str:
    """mlsyskit/verl:pypi -> verl-pypi: the folder an image unpacks to."""
    return ref.split("/")[-1].replace(":", "-")


def known_contents(folders: list[Path]) -> set[str]:
    """The contents earlier packs carried (their manifest.json): not carried again."""
    known: set[str] = set()
    for folder in folders:
        manifest = json.loads((folder / "manifest.json").read_text())
        for image in manifest["images"].values():
            known.update(e[7] for e in image["entries"] if e[1] in ("0", "\x00") and len(e) > 7)
    return known


def pack(refs: list[str], out: Path, level: int, prefix: str = "pack", known: set[str] | None = None) -> dict[str, Any]:
    sys.path.insert(0, str(KIT_ROOT))
    from mlsyskit.engine import Engine

    engine = Engine.connect()
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob(f"{prefix}.part-*"):
        old.unlink()
    zstd = subprocess.Popen(["zstd", "-q", "-T0", f"-{level}", "--long=27", "-c"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    split = subprocess.Popen(["split", "-b", str(PIECE_BYTES), "-d", "-a", "3", "-", str(out / f"{prefix}.part-")], stdin=zstd.stdout)
    assert zstd.stdin is not None and zstd.stdout is not None
    zstd.stdout.close()
    seen: set[str] = set(known or ())  # carried by an earlier pack: its unpack left them in the store
    manifest: dict[str, Any] = {"format": 1, "images": {}}
    totals = {"files": 0, "bytes": 0, "unique_bytes": 0}
    start = time.monotonic()
    with tarfile.open(fileobj=zstd.stdin, mode="w|", format=tarfile.PAX_FORMAT) as blobs:
        for ref in refs:
            info = engine.image(ref)
            if info is None:
                raise SystemExit(f"{ref}: no such image here (build it first)")
            entries: list[list[Any]] = []
            with tarfile.open(fileobj=io.BufferedReader(ChunkReader(engine.image_files(ref)), 1 << 20), mode="r|") as export:
                for member in export:
                    entry = [member.name, member.type.decode(), member.mode, member.uid, member.gid, int(member.mtime)]
                    if member.isreg():
                        digest, spooled = _hash_member(export, member)
                        entry += [member.size, digest]
                        totals["files"] += 1
                        totals["bytes"] += member.size
                        if digest not in seen:
                            seen.add(digest)
                            totals["unique_bytes"] += member.size
                            blob = tarfile.TarInfo(f"blobs/{digest}")
                            blob.size = member.size
                            spooled.seek(0)
                            blobs.addfile(blob, spooled)
                        spooled.close()
                    elif member.issym() or member.islnk():
                        entry += [0, member.linkname]
                    entries.append(entry)
            manifest["images"][image_name(ref)] = {"ref": ref, "id": info.id, "env": list(info.env), "entries": entries}
            print(f"packed {ref} ({info.id[:19]}): {len(entries)} paths; so far {totals['unique_bytes'] / 1e9:.2f} GB unique "
                  f"of {totals['bytes'] / 1e9:.2f} GB, {time.monotonic() - start:.0f} s", flush=True)  # fmt: skip
        data = json.dumps(manifest).encode()
        (out / "manifest.json").write_bytes(data)  # for a later pack's --known
        member = tarfile.TarInfo("manifest.json")
        member.size = len(data)
        blobs.addfile(member, io.BytesIO(data))
    zstd.stdin.close()
    if zstd.wait() != 0 or split.wait() != 0:
        raise SystemExit("zstd or split failed")
    pieces = sorted(out.glob(f"{prefix}.part-*"))
    summary = {
        "images": {name: {"ref": m["ref"], "id": m["id"], "paths": len(m["entries"])} for name, m in manifest["images"].items()},
        **totals,
        "compressed_bytes": sum(p.stat().st_size for p in pieces),
        "pieces": [p.name for p in pieces],
        "seconds": round(time.monotonic() - start, 1),
    }
    (out / f"{prefix}.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _hash_member(export: tarfile.TarFile, member: tarfile.TarInfo) -> tuple[str, IO[bytes]]:
    """The member's sha256 and its content in a rewound spool (memory, or disk when large)."""
    source = export.extractfile(member)
    assert source is not None
    digest = hashlib.sha256()
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115 - returned to the caller
    while chunk := source.read(1 << 20):
        digest.update(chunk)
        spool.write(chunk)
    return digest.hexdigest(), spool  # type: ignore[return-value]


# ---------------------------------------------------------------------------- unpack (there)


class PiecesReader(io.RawIOBase):
    """The pieces ``pack.part-000``, ``-001``... read back as one stream."""

    def __init__(self, pieces: list[Path]) -> None:
        self._pieces = iter(pieces)
        self._file: IO[bytes] | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while True:
            if self._file is None:
                path = next(self._pieces, None)
                if path is None:
                    return 0
                self._file = path.open("rb")
            n = self._file.readinto(b)
            if n:
                return n
            self._file.close()
            self._file = None


def zstd_reader(pieces_dir: Path, prefix: str) -> IO[bytes]:
    try:
        import zstandard
    except ImportError:
        tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
        wheel = next(pieces_dir.glob(f"zstandard-*-{tag}-{tag}-*.whl"), None)
        if wheel is None:
            raise SystemExit(f"no zstandard module and no zstandard wheel for {tag} beside the pieces") from None
        target = Path(tempfile.mkdtemp(prefix="zstandard-"))
        import zipfile

        with zipfile.ZipFile(wheel) as whl:  # a wheel is a zip: no pip needed
            whl.extractall(target)
        sys.path.insert(0, str(target))
        import zstandard
    pieces = sorted(pieces_dir.glob(f"{prefix}.part-*"))
    if not pieces:
        raise SystemExit(f"no {prefix}.part-* pieces in {pieces_dir}")
    raw = io.BufferedReader(PiecesReader(pieces), 1 << 20)
    reader: IO[bytes] = zstandard.ZstdDecompressor(max_window_size=2**27).stream_reader(raw)
    return reader


def unpack(pieces_dir: Path, roots: Path, prefix: str = "pack") -> dict[str, Any]:
    start = time.monotonic()
    store = roots / ".store"
    store.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] | None = None
    written = 0
    with tarfile.open(fileobj=zstd_reader(pieces_dir, prefix), mode="r|") as stream:
        for member in stream:
            source = stream.extractfile(member)
            assert source is not None
            if member.name == "manifest.json":
                manifest = json.loads(source.read())
                continue
            digest = member.name.removeprefix("blobs/")
            if "/" in digest or len(digest) != 64:
                raise SystemExit(f"unexpected member {member.name!r} in the pack")
            with (store / digest).open("wb") as f:
                shutil.copyfileobj(source, f, 1 << 20)
            written += member.size
    if manifest is None:
        raise SystemExit("the pack ended without its manifest: a piece is missing")
    print(f"contents: {written / 1e9:.2f} GB in {time.monotonic() - start:.0f} s", flush=True)
    done = {}
    for name, image in manifest["images"].items():
        done[name] = materialize(roots / name, image, store)
        (roots / name / ".kit-image.json").write_text(json.dumps({"ref": image["ref"], "id": image["id"], "env": image["env"]}))
        print(f"{name}: {done[name]} paths in {roots / name} ({time.monotonic() - start:.0f} s)", flush=True)
    return done


def materialize(root: Path, image: dict[str, Any], store: Path) -> int:
    """Create the image's tree under ``root`` from the manifest, files hard-linked from the
    store (one inode per content, mode and owner)."""
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    dirs: list[tuple[Path, int, int, int, int]] = []
    for entry in image["entries"]:
        name, kind, mode, uid, gid, mtime = entry[:6]
        path = root / name.lstrip("/")
        if kind == tarfile.DIRTYPE.decode():
            path.mkdir(parents=True, exist_ok=True)
            dirs.append((path, mode, uid, gid, mtime))
        elif kind in (tarfile.REGTYPE.decode(), tarfile.AREGTYPE.decode()):
            size, digest = entry[6], entry[7]
            keyed = store / f"{digest}-{mode:o}-{uid}-{gid}"
            if not keyed.exists():
                blob = store / digest
                if not blob.exists() and size == 0:
                    blob.touch()
                if blob.stat().st_nlink == 1:  # the first use of this content: the blob itself
                    os.link(blob, keyed)
                else:  # the same content with another mode or owner: its own inode
                    shutil.copyfile(blob, keyed)
                os.chown(keyed, uid, gid)
                os.chmod(keyed, mode)
                os.utime(keyed, (mtime, mtime))
            path.parent.mkdir(parents=True, exist_ok=True)
            os.link(keyed, path)
        elif kind == tarfile.SYMTYPE.decode():
            path.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(entry[7], path)
            os.lchown(path, uid, gid)
        elif kind == tarfile.LNKTYPE.decode():
            os.link(root / entry[7].lstrip("/"), path)
        # devices and fifos: /dev is bound from the host at setup
    for path, mode, uid, gid, mtime in reversed(dirs):
        os.chown(path, uid, gid)
        os.chmod(path, mode)
        os.utime(path, (mtime, mtime))
    return len(image["entries"])


# ---------------------------------------------------------------------------- setup and run (there)


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=check)


def driver_dir() -> Path:
    for line in sh("ldconfig", "-p").stdout.splitlines():
        if "libcuda.so.1 " in line and "x86-64" in line:
            return Path(line.split("=>")[-1].strip()).parent
    raise SystemExit("no libcuda.so.1 on this machine: no NVIDIA driver")


def setup(root: Path, smoke_tests: Path) -> None:
    for sub in ("dev", "proc", "sys"):
        sh("umount", "-R", str(root / sub), check=False)
        (root / sub).mkdir(exist_ok=True)
    sh("mount", "--rbind", "/dev", str(root / "dev"))
    sh("mount", "-t", "proc", "proc", str(root / "proc"))
    sh("mount", "--rbind", "/sys", str(root / "sys"))
    (root / "tmp").mkdir(exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    libdir = root / "usr/lib/x86_64-linux-gnu"
    drv = driver_dir()
    copied = 0
    for pattern in ("libcuda.so*", "libnvidia-*.so*", "libcudadebugger.so*"):
        for lib in drv.glob(pattern):
            target = libdir / lib.name
            if target.exists() or target.is_symlink():
                target.unlink()
            if lib.is_symlink():
                os.symlink(os.readlink(lib), target)
            else:
                shutil.copy2(lib, target)
            copied += 1
    for tool in ("nvidia-smi", "nvidia-debugdump"):
        found = shutil.which(tool)
        if found:
            shutil.copy2(found, root / "usr/bin" / tool)
    sh("chroot", str(root), "/sbin/ldconfig")
    hostname = os.uname().nodename
    # A file of the image is a hard link shared with every file of the same content (all
    # empty files, say): replace these, never write into them.
    for name in ("etc/hosts", "etc/hostname", "etc/resolv.conf"):
        (root / name).unlink(missing_ok=True)
    (root / "etc/hosts").write_text(f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n")
    (root / "etc/hostname").write_text(hostname + "\n")
    if Path("/etc/resolv.conf").exists():
        shutil.copyfile("/etc/resolv.conf", root / "etc/resolv.conf")
    target = root / "opt/mlsyskit/smoke_tests"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(smoke_tests, target, ignore=shutil.ignore_patterns("__pycache__"))
    seen = sh("chroot", str(root), "/sbin/ldconfig", "-p").stdout
    print(f"{root}: driver {drv} ({copied} libraries), libcuda {'found' if 'libcuda.so.1' in seen else 'MISSING'} by the image's loader", flush=True)


def run(root: Path, command: list[str], uid: int | None, home: str, binds: list[str], extra_env: list[str]) -> int:
    meta = json.loads((root / ".kit-image.json").read_text())
    mounted = []
    for bind in binds:
        source, _, target = bind.partition(":")
        where = root / target.lstrip("/")
        where.mkdir(parents=True, exist_ok=True)
        sh("mount", "--bind", source, str(where))
        mounted.append(where)
    home_dir = root / home.lstrip("/")
    home_dir.mkdir(parents=True, exist_ok=True)
    if uid is not None:
        os.chown(home_dir, uid, uid)
    env = [*meta["env"], f"KIT_IMAGE_ID={meta['id']}", f"HOME={home}", "PYTHONPATH=/opt/mlsyskit", "PYTHONUNBUFFERED=1", "HF_HUB_OFFLINE=1",
           "NCCL_NVLS_ENABLE=0", "TORCH_SYMM_MEM_DISABLE_MULTICAST=1", "NVSHMEM_DISABLE_NVLS=1",
           f"USER={'root' if uid is None else 'kit'}", f"LOGNAME={'root' if uid is None else 'kit'}", *extra_env]  # fmt: skip
    chroot = ["chroot"] + ([f"--userspec={uid}:{uid}"] if uid is not None else []) + [str(root)]
    try:
        return subprocess.call([*chroot, "/usr/bin/env", "-i", *env, "/bin/bash", "-c", "cd /tmp && " + " ".join(command)])
    finally:
        for where in mounted:
            sh("umount", str(where), check=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("pack")
    p.add_argument("--out", type=Path, default=Path(".img"))
    p.add_argument("--level", type=int, default=10)
    p.add_argument("--prefix", default="pack", help="the pieces' name (PREFIX.part-NNN)")
    p.add_argument("--known", type=Path, action="append", default=[], help="an earlier pack's folder: its contents are not carried again")
    p.add_argument("images", nargs="+")
    u = sub.add_parser("unpack")
    u.add_argument("pieces", type=Path)
    u.add_argument("roots", type=Path)
    u.add_argument("--prefix", default="pack")
    s = sub.add_parser("setup")
    s.add_argument("root", type=Path)
    s.add_argument("--smoke-tests", type=Path, default=KIT_ROOT / "smoke_tests")
    r = sub.add_parser("run")
    r.add_argument("root", type=Path)
    r.add_argument("--uid", type=int)
    r.add_argument("--home", default="/root")
    r.add_argument("--bind", action="append", default=[], metavar="SRC:DST")
    r.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    argv = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if "--" in argv:  # run's command: everything after the first --
        at = argv.index("--")
        argv, command = argv[:at], argv[at + 1 :]
    args = parser.parse_args(argv)
    if args.verb == "pack":
        summary = pack(args.images, args.out, args.level, args.prefix, known_contents(args.known))
        print(json.dumps({k: v for k, v in summary.items() if k != "pieces"}, indent=2), f"\n{len(summary['pieces'])} pieces")
        return 0
    if args.verb == "unpack":
        unpack(args.pieces, args.roots, args.prefix)
        return 0
    if args.verb == "setup":
        setup(args.root, args.smoke_tests)
        return 0
    if not command:
        parser.error("run needs a command after --")
    return run(args.root, command, args.uid, args.home, args.bind, args.env)


if __name__ == "__main__":
    sys.exit(main())
