"""A corpus of hostile bundles, each loaded with the real CLI (`invoke load`) in a child
process, under the kit's Python and under Debian 12's own /usr/bin/python3 (3.11.2: no
tarfile `filter=`, no CVE-2025-4517 fix), with DOCKER_HOST pointing at a recording socket.
Each must be refused with one line and exit 2, write nothing outside its private folder (no
`--to` folder, no file where it aimed), and put nothing at all on the engine's socket: a
refused bundle never reaches the engine, so no tag can move. A valid bundle through the same
path does reach the socket (the control that the refusals come from the checks)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mlsyskit import REPO_ROOT
from mlsyskit.images import bundle
from tests.unit import hostile_bundles as hb
from tests.unit.recording import RecordingDaemon

ROOT = bundle.ROOT
KEY = Ed25519PrivateKey.generate()
OTHER_KEY = Ed25519PrivateKey.generate()
DEBIAN_PYTHON = Path("/usr/bin/python3")


def cases(target: Path) -> dict[str, tuple[hb.Recipe, str]]:
    """{case: (recipe, what the one line must say)}; `target` is where escapes aim."""
    E = hb.entry
    return {
        "path traversal": (
            hb.Recipe(extra=[E(f"{ROOT}/../../{target.name}/escaped.txt", b"pwnd")], listed=[f"{ROOT}/../../{target.name}/escaped.txt"]),
            "unexpected member",
        ),
        "absolute path": (hb.Recipe(extra=[E(f"{target}/absolute.txt", b"pwnd")], listed=[f"{target}/absolute.txt"]), "unexpected member"),
        "symlink chain": (
            hb.Recipe(
                extra=[
                    E(f"{ROOT}/locks/a", kind=tarfile.SYMTYPE, link="../../.."),
                    E(f"{ROOT}/locks/a/b", kind=tarfile.SYMTYPE, link=".."),
                    E(f"{ROOT}/locks/a/b/escaped.txt", b"pwnd"),
                ],
            ),
            "holds a symbolic link",
        ),
        "symlink to the target": (hb.Recipe(extra=[E(f"{ROOT}/locks/uv.lock2", kind=tarfile.SYMTYPE, link=str(target))]), "holds a symbolic link"),
        "hardlink out": (hb.Recipe(extra=[E(f"{ROOT}/locks/passwd", kind=tarfile.LNKTYPE, link="/etc/passwd")]), "holds a hard link"),
        "device node": (hb.Recipe(extra=[E(f"{ROOT}/locks/null", kind=tarfile.CHRTYPE)]), "holds a character device"),
        "fifo": (hb.Recipe(extra=[E(f"{ROOT}/locks/fifo", kind=tarfile.FIFOTYPE)]), "holds a FIFO"),
        "folder": (hb.Recipe(extra=[E(f"{ROOT}/locks/", kind=tarfile.DIRTYPE)]), "holds a folder"),
        "gnu sparse member": (hb.Recipe(extra=[E(f"{ROOT}/locks/sparse", kind=tarfile.GNUTYPE_SPARSE)]), "holds a sparse file"),
        "long name": (hb.Recipe(extra=[E(f"{ROOT}/locks/" + "x" * 150 + "/uv.lock", b"x")]), "holds a GNU long name"),
        "sparse bomb manifest": (hb.Recipe(manifest_size=20 << 30), "declares 21.47 GB"),
        "huge declared member": (hb.Recipe(extra=[E(f"{ROOT}/locks/big/uv.lock", b"x" * 1000, size=100 << 20)]), "past its end"),
        "CR/LF in an ID": (hb.Recipe(image_id="sha256:" + "a" * 64 + "\r\nPOST /containers/create HTTP/1.1"), "an image ID in its manifest is"),
        "CR/LF in a tag": (hb.Recipe(tags=[hb.TAG + "\r\nHost: x"]), "which is not an image reference"),
        "foreign tag": (hb.Recipe(tags=["debian:bookworm"], repo_tags=["debian:bookworm"]), "outside mlsyskit/"),
        "foreign letters in a tag": (hb.Recipe(tags=["mlsyskit/hоstile:one"]), "which is not an image reference"),
        "docker archive sets another tag": (hb.Recipe(repo_tags=[hb.TAG, "debian:bookworm"]), "would set the tag 'debian:bookworm'"),
        "duplicated member": (hb.Recipe(extra=[E(f"{ROOT}/locks/uv.lock", b"version = 2\n")]), "twice"),
        "member not in the manifest": (hb.Recipe(extra=[E(f"{ROOT}/locks/envs/x/uv.lock", b"x")]), "is not in its manifest"),
        "label that is not the kit's": (
            hb.Recipe(manifest_edit=lambda m: m["images"][0]["labels"].update({"com.example.x": "y"})),
            "labels that are not the kit's",
        ),
        "manifest lies about a size": (hb.Recipe(manifest_edit=lambda m: m["files"][1].update(size=5)), "does not match its size"),
        "manifest lies about a sha256": (hb.Recipe(manifest_edit=lambda m: m["files"][1].update(sha256="0" * 64)), "does not match its sha256"),
        "unsigned where required": (hb.Recipe(), "is not signed, and a signature is required"),
        "signed by another key": (hb.Recipe(sign_with=OTHER_KEY), "is not signed by a trusted key"),
        "changed after signing": (hb.Recipe(sign_with=KEY, after_signing=lambda b: b.replace(b'"pypi"', b'"PYPI"')), "is not signed by a trusted key"),
    }


SIGNED_CASES = {"unsigned where required", "signed by another key", "changed after signing"}


def debian_venv(tmp: Path) -> Path:
    """A venv built on Debian's /usr/bin/python3 that sees the kit's packages (the same
    cp311 wheels); in CI the kit's own environment is built on it already (.ci/run)."""
    if Path(sys._base_executable).resolve() == DEBIAN_PYTHON.resolve():
        return Path(sys.executable)
    venv = tmp / "debian-venv"
    subprocess.run([str(DEBIAN_PYTHON), "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(venv.glob("lib/python3*/site-packages"))
    (site / "kit.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv / "bin" / "python"


@pytest.fixture(scope="module", params=["kit", "debian"])
def python(request, tmp_path_factory) -> Iterator[Path]:
    if request.param == "kit":
        yield Path(sys.executable)
        return
    if not DEBIAN_PYTHON.exists():
        pytest.skip("no /usr/bin/python3 (not a Debian machine)")
    interpreter = debian_venv(tmp_path_factory.mktemp("py"))
    version = subprocess.run([str(interpreter), "-c", "import sys; print(sys.version.split()[0])"], capture_output=True, text=True, check=True).stdout.strip()
    assert version.startswith("3.11"), version
    yield interpreter


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("keys")
    public = KEY.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (folder / "trusted.pub.pem").write_bytes(public)
    return {"public": folder / "trusted.pub.pem"}


def load(python: Path, file: Path, to: Path, socket: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "MLSYSKIT_"))}
    env |= {"DOCKER_HOST": f"unix://{socket}", "DOCKER_CONFIG": str(socket.parent / "docker-config"), "PYTHONPATH": str(REPO_ROOT)}
    command = [str(python), "-m", "invoke", "-r", str(REPO_ROOT), "load", str(file), "--to", str(to), *args]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("case", sorted(cases(Path("/x"))))
def test_a_hostile_bundle_is_refused_in_one_line_and_touches_nothing(python, keys, tmp_path, case):
    target = tmp_path / "target"  # where the escapes aim: it must stay empty
    target.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    recipe, message = cases(target)[case]
    if recipe.sign_with is not None or case in SIGNED_CASES:
        args = ("--require-signature", str(keys["public"]))
    else:
        args = ()
    path = work / "hostile.bundle"
    hb.write(path, recipe)
    if case == "truncated":
        path.write_bytes(path.read_bytes()[:3000])
    daemon = RecordingDaemon(tmp_path / "docker.sock")
    try:
        proc = load(python, path, work / "out", daemon.path, *args)
    finally:
        daemon.close()
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: ") and "(fix: " in lines[0], proc.stderr
    assert message in lines[0], lines[0]
    assert sorted(p.name for p in work.iterdir()) == ["hostile.bundle"], "something was written beside the bundle"
    assert list(target.iterdir()) == [], "something was written where the bundle aimed"
    assert not (tmp_path / "escaped.txt").exists() and not (REPO_ROOT.parent / "escaped.txt").exists()
    daemon.settle()
    assert daemon.received == [], "a refused bundle reached the engine's socket"


def test_a_truncated_bundle_is_refused_the_same_way(python, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    path = work / "cut.bundle"
    hb.write(path)
    path.write_bytes(path.read_bytes()[:3000])
    daemon = RecordingDaemon(tmp_path / "docker.sock")
    try:
        proc = load(python, path, work / "out", daemon.path)
    finally:
        daemon.close()
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "is truncated or not a kit bundle" in proc.stderr
    daemon.settle()
    assert sorted(p.name for p in work.iterdir()) == ["cut.bundle"] and daemon.received == []


def test_a_valid_signed_bundle_passes_the_checks_and_reaches_the_engine(python, keys, tmp_path):
    """The control: the same path with a valid signed bundle gets past every check and asks
    the engine (the recording socket has no images and refuses the load: exit 3), and still
    leaves nothing unpacked."""
    if shutil.which("docker") is None:
        pytest.skip("no docker CLI (Engine.connect probes it)")
    work = tmp_path / "work"
    work.mkdir()
    path = work / "good.bundle"
    hb.write(path, hb.Recipe(sign_with=KEY))
    daemon = RecordingDaemon(tmp_path / "docker.sock")
    try:
        proc = load(python, path, work / "out", daemon.path, "--require-signature", str(keys["public"]))
    finally:
        daemon.close()
    assert "signed by sha256:" in proc.stdout and "checked 2 files" in proc.stdout, proc.stdout + proc.stderr
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert ("POST", "/v1.41/images/load") in daemon.requests()
    assert sorted(p.name for p in work.iterdir()) == ["good.bundle"]
