"""`./kit`'s own set-up through kit.toml's mirror: a fresh copy of the checkout, a local PyPI
mirror (a PEP 503 index of the kit's locked wheels, served on loopback) and every proxy
pointing at a closed port, so nothing but the mirror can answer. pip installs uv from it
and uv installs the kit's lock from it, hash-checked."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlsyskit import REPO_ROOT
from tests.conftest import need


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def write_index(wheels: Path, root: Path) -> None:
    """root/simple/<project>/index.html linking each wheel with its sha256 (PEP 503)."""
    projects: dict[str, list[Path]] = {}
    for wheel in sorted(wheels.glob("*.whl")):
        projects.setdefault(normalize(wheel.name.split("-")[0]), []).append(wheel)
    for project, files in projects.items():
        folder = root / "simple" / project
        folder.mkdir(parents=True)
        links = "".join(f'<a href="../../files/{f.name}#sha256={hashlib.sha256(f.read_bytes()).hexdigest()}">{f.name}</a>\n' for f in files)
        (folder / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{links}</body></html>\n")
    shutil.copytree(wheels, root / "files")


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    """A PyPI mirror on loopback holding the kit's locked wheels and uv."""
    need(shutil.which("uv") is not None or (REPO_ROOT / ".venv/bin/uv").exists(), "no uv to export the kit's lock")
    work = tmp_path_factory.mktemp("mirror")
    uv = shutil.which("uv") or str(REPO_ROOT / ".venv/bin/uv")
    requirements = work / "requirements.txt"
    subprocess.run(
        [uv, "export", "--frozen", "--no-emit-project", "--no-hashes", "--format", "requirements.txt", "-o", str(requirements), "-q"],
        cwd=REPO_ROOT, check=True,
    )  # fmt: skip
    wheels = work / "wheels"
    uv_version = re.search(r"UV_VERSION=(\S+)", (REPO_ROOT / "kit").read_text()).group(1)
    # The kit's own environment has no pip (uv made it): a throw-away venv's pip downloads.
    subprocess.run([shutil.which("python3") or sys.executable, "-m", "venv", str(work / "pip")], check=True)
    for what in (["-r", str(requirements)], [f"uv=={uv_version}"]):
        proc = subprocess.run(
            [str(work / "pip/bin/pip"), "download", "--quiet", "--no-deps", "--only-binary=:all:", "-d", str(wheels), *what],
            capture_output=True, text=True,
        )  # fmt: skip
        need(proc.returncode == 0, f"cannot download the kit's wheels to build a mirror: {proc.stderr[-300:]}")
    root = work / "root"
    write_index(wheels, root)
    log = work / "http.log"
    with open(log, "w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "0", "--directory", str(root)],
            stdout=out, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    try:
        port = None
        for _ in range(100):
            found = re.search(r"port (\d+)", log.read_text())
            if found:
                port = int(found.group(1))
                break
            time.sleep(0.1)
        assert port, log.read_text()
        yield f"http://127.0.0.1:{port}/simple", log
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_kit_sets_itself_up_from_the_configured_mirror_only(mirror, tmp_path):
    index, log = mirror
    checkout = tmp_path / "checkout"
    files = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        target = checkout / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, target)
    (checkout / "kit.local.toml").write_text(f'[network]\npypi_index = "{index}"\n')
    closed = "http://127.0.0.1:9"  # nothing listens: pypi.org is out of reach
    env = {
        **os.environ,
        "HTTP_PROXY": closed, "HTTPS_PROXY": closed, "http_proxy": closed, "https_proxy": closed,
        "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
        "PATH": ":".join(p for p in os.environ["PATH"].split(":") if not (Path(p) / "uv").exists()),
        "PIP_RETRIES": "0", "PIP_TIMEOUT": "10", "UV_HTTP_TIMEOUT": "10",
    }  # fmt: skip
    env.pop("VIRTUAL_ENV", None)
    proc = subprocess.run(["./kit", "--version"], cwd=checkout, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stdout.strip().startswith("Invoke 3.0.3")
    served = log.read_text()
    assert "GET /simple/uv/" in served and "GET /simple/invoke/" in served and "GET /files/invoke-" in served
    version = subprocess.run([str(checkout / ".venv/bin/python"), "-c", "import yaml, invoke; print(invoke.__version__)"],
                             capture_output=True, text=True)  # fmt: skip
    assert version.stdout.strip() == "3.0.3", version.stderr
