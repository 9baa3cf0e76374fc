"""Probe containers (invoke check, versions, sbom, lock) read an image and exit: they get the
engine's private IPC namespace, not the host's (`--ipc=host` is for NCCL and DataLoaders in
`invoke shell`/`smoke` containers)."""

from __future__ import annotations

import subprocess
from types import SimpleNamespace

import pytest

from mlsyskit import commands
from mlsyskit.checks import versions
from mlsyskit.engine import ContainerSpec
from mlsyskit.engine.spec import run_call
from mlsyskit.images import relock, sbom


class Recorded(Exception):
    pass


class RecordingEngine:
    """Keeps the spec of the container a probe would run, then stops the probe."""

    def __init__(self) -> None:
        self.specs: list[ContainerSpec] = []

    def run(self, spec: ContainerSpec, *, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        self.specs.append(spec)
        raise Recorded

    def image(self, ref: str) -> SimpleNamespace:
        return SimpleNamespace(id="sha256:" + "0" * 64, labels={})


def probes(monkeypatch: pytest.MonkeyPatch, engine: RecordingEngine):
    topic = SimpleNamespace(name="distributed", imports=("torch",), key_packages=("torch",))
    ctx = SimpleNamespace(catalog=SimpleNamespace(topic=lambda name: topic), engine=engine, base_name="pypi")
    monkeypatch.setattr(commands.Context, "resolve", staticmethod(lambda *a, **k: ctx))
    return {
        "check": lambda: commands.check("distributed", None, print),
        "versions": lambda: versions.probe_image(engine, "img", ["torch"]),  # type: ignore[arg-type]
        "sbom": lambda: sbom.probe(engine, "img"),  # type: ignore[arg-type]
        "lock": lambda: relock.dpkg_versions(engine, "img"),  # type: ignore[arg-type]
    }


@pytest.mark.parametrize("probe", ["check", "versions", "sbom", "lock"])
def test_probe_containers_do_not_share_the_hosts_ipc(monkeypatch, probe):
    engine = RecordingEngine()
    with pytest.raises(Recorded):
        probes(monkeypatch, engine)[probe]()
    (spec,) = engine.specs
    args = run_call(spec).args
    assert "--ipc=host" not in args and not any(a.startswith("--ipc") for a in args)


def test_work_containers_still_share_it_unless_a_shm_size_is_given():
    assert "--ipc=host" in run_call(ContainerSpec(image="img", host_ipc=True)).args
    sized = run_call(ContainerSpec(image="img", host_ipc=True, shm_size="16g")).args
    assert "--ipc=host" not in sized and "--shm-size" in sized
