"""images/debian-lock.toml (pins, staleness, the one-line errors) and `invoke verify`'s
content manifest and comparison, without an engine."""

from __future__ import annotations

import io
import shutil
import tarfile

import pytest

from mlsyskit import REPO_ROOT
from mlsyskit.data import debian_lock
from mlsyskit.data.catalog import load_catalog
from mlsyskit.data.config import load_config
from mlsyskit.images import verify
from mlsyskit.images.plan import RootImage, base_layer, topic_layers
from mlsyskit.images.relock import check_debian, debian_asks

ROOT = RootImage(ref="mlsyskit/rootfs-pypi:bookworm", image_id="sha256:" + "0" * 64, origin="bootstrap")


def test_the_committed_lock_covers_what_the_files_ask_for():
    catalog = load_catalog()
    lock = debian_lock.load(REPO_ROOT)
    keys = set()
    for base in ("pypi", "pypi-arm64"):  # each architecture has its own entries (binNMU versions differ)
        assert check_debian(catalog, base, log=lambda _: None) == []
        keys |= set(debian_asks(catalog, base)) | {f"{base}/rootfs"}
    assert keys == set(lock.entries)
    assert lock.entries["pypi/base"].packages["python3"] and lock.entries["pypi/rootfs"].packages["dpkg"]


def test_builds_install_the_whole_locked_closure_pinned():
    catalog, config = load_catalog(), load_config()
    base = base_layer(catalog, config, catalog.base("pypi"), ROOT)
    pins = base.build_args["APT_PACKAGES"].split()
    locked = debian_lock.load(REPO_ROOT).entries["pypi/base"].packages
    assert pins == [f"{name}={version}" for name, version in sorted(locked.items())]
    assert {p.split("=")[0] for p in pins} >= set(catalog.base("pypi").apt_packages)
    topic = topic_layers(catalog, config, catalog.topic("distributed"), base)[-1]
    assert "numactl=" in topic.build_args["APT_PACKAGES"]
    # the base's uv is hash-checked against the kit's own lock
    assert base.build_args["UV_REQUIREMENT"].startswith("uv==0.13.9 --hash=sha256:")


def test_asking_for_another_package_makes_the_lock_stale_and_unpinned(kit_tree):
    toml = kit_tree / "envs/distributed/topic.toml"
    toml.write_text(toml.read_text().replace('"numactl",', '"numactl", "htop",'))
    catalog = load_catalog(kit_tree)
    lines: list[str] = []
    assert check_debian(catalog, "pypi", log=lines.append) == ["pypi/topic/distributed"]
    assert any(line.startswith("stale  images/debian-lock.toml [pypi/topic/distributed]") for line in lines)
    base = base_layer(catalog, load_config(kit_tree), catalog.base("pypi"), ROOT)
    topic = topic_layers(catalog, load_config(kit_tree), catalog.topic("distributed"), base)[-1]
    assert "htop" in topic.build_args["APT_PACKAGES"].split() and "=" not in topic.build_args["APT_PACKAGES"]


def test_lock_check_fails_with_the_fix(kit_tree, monkeypatch):
    from mlsyskit import commands
    from mlsyskit.errors import LockError

    shutil.copy(REPO_ROOT / "images" / "debian-lock.toml", kit_tree / "images" / "debian-lock.toml")
    bases = kit_tree / "images/bases.toml"
    bases.write_text(bases.read_text().replace('"iproute2"]', '"iproute2", "vim-tiny"]', 1))
    monkeypatch.setattr("mlsyskit.context.REPO_ROOT", kit_tree)
    monkeypatch.setattr("mlsyskit.commands.lock_all", lambda *a, **k: None)  # uv's part is tested elsewhere
    monkeypatch.setattr("mlsyskit.context.load_catalog", lambda root=kit_tree: load_catalog(kit_tree))
    with pytest.raises(LockError, match=r"images/debian-lock.toml is stale for pypi/base") as caught:
        commands.lock("", True, lambda _: None)
    assert "invoke lock" in caught.value.fix


def test_a_version_the_mirror_lost_is_one_line_naming_a_snapshot():
    lock = debian_lock.DebianLock(REPO_ROOT / "x.toml", recorded="20261130T091024Z")
    tail = "#7 12.3 E: Version '3.11.2-1+b1' for 'python3' was not found\n#7 ERROR: process did not complete"
    error = debian_lock.missing_version_error(tail, lock, "http://deb.debian.org/debian")
    assert error is not None and "no longer serves python3=3.11.2-1+b1" in str(error)
    assert "https://snapshot.debian.org/archive/debian/20261130T091024Z/" in error.fix and "network.apt_mirror" in error.fix
    assert debian_lock.missing_version_error("E: Unable to locate package nope", lock, "m") is None


def test_dpkg_status_and_differences():
    status = (
        "Package: bash\nStatus: install ok installed\nVersion: 5.2.15-2+b7\nDescription: x\n continued\n\n"
        "Package: gone\nStatus: deinstall ok config-files\nVersion: 1\n\n"
        "Package: dpkg\nStatus: install ok installed\nVersion: 1.21.22\n"
    )
    found = debian_lock.read_dpkg_status(status)
    assert found == {"bash": "5.2.15-2+b7", "dpkg": "1.21.22"}
    assert debian_lock.differences({"bash": "5.2.15-2+b7", "dpkg": "1.21.21"}, found) == ["dpkg: 1.21.21 -> 1.21.22"]
    assert debian_lock.closure({"a": "1", "b": "1"}, {"a": "1", "b": "2", "c": "1"}) == {"b": "2", "c": "1"}


def test_the_lock_file_round_trips():
    lock = debian_lock.load(REPO_ROOT)
    again = debian_lock.DebianLock(lock.path, lock.recorded, lock.entries)
    assert debian_lock.dump(again) == (REPO_ROOT / "images" / "debian-lock.toml").read_text()


# --- invoke verify --------------------------------------------------------------------------


def fs_tar(files: dict[str, bytes], links: dict[str, str] | None = None) -> list[bytes]:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1  # mtimes never count
            archive.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            archive.addfile(info)
    data = buffer.getvalue()
    return [data[i : i + 4096] for i in range(0, len(data), 4096)]  # chunked, as docker export streams


def test_content_manifest_and_comparison():
    before = verify.content_manifest(fs_tar({"./etc/a": b"x" * 10_000, "./usr/b.pyc": b"1"}, {"./usr/lib/l": "b"}))
    after = verify.content_manifest(fs_tar({"./etc/a": b"x" * 10_000, "./usr/b.pyc": b"2", "./var/log/dpkg.log": b"log"}, {"./usr/lib/l": "c"}))
    assert before["/etc/a"][:3] == ("file", 0o644, 10_000)
    result = verify.compare(before, after)
    assert result.compared == 4 and result.only_after == ["/var/log/dpkg.log"]
    assert result.changed == {"/usr/b.pyc": ["content"], "/usr/lib/l": ["content"]}
    assert result.unexplained() == ["/var/log/dpkg.log", "/usr/b.pyc", "/usr/lib/l"]
    assert "compared 4 paths: 3 differ, 3 outside the documented list" in verify.report(result)
    same = verify.compare(before, dict(before))
    assert same.differing() == 0 and same.unexplained() == []
