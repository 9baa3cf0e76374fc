"""--arch: base names per architecture, tags and labels that differ by architecture, topics
without arm64, and whether this host can emulate the other architecture (binfmt_misc)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlsyskit.context import Context, binfmt_state
from mlsyskit.data.catalog import load_catalog
from mlsyskit.data.config import load_config
from mlsyskit.errors import UsageError
from mlsyskit.images.plan import RootImage, base_layer, topic_alias, topic_layers

ROOT = RootImage(ref="mlsyskit/rootfs-pypi:bookworm", image_id="sha256:" + "0" * 64, origin="bootstrap")


def test_base_names_carry_the_architecture():
    catalog = load_catalog()
    assert (catalog.base("pypi").name, catalog.base("pypi").arch) == ("pypi", "amd64")
    arm = catalog.base("pypi-arm64")
    assert (arm.name, arm.arch, arm.flavour, arm.platform) == ("pypi-arm64", "arm64", "pypi", "linux/arm64")
    assert catalog.base("pypi", "arm64") == arm and catalog.base("pypi-amd64").name == "pypi"
    assert topic_alias("distributed", arm.name) == "mlsyskit/distributed:pypi-arm64"


@pytest.mark.parametrize(("name", "message"), [("pypi-x86", "unknown architecture 'x86'"), ("nope", "unknown base 'nope'")])
def test_unknown_architecture_or_base_is_one_line(name, message):
    with pytest.raises(UsageError, match=message) as caught:
        load_catalog().base(name)
    assert caught.value.fix


def test_arch_alone_takes_the_configured_base():
    ctx = Context.resolve("-arm64")
    assert ctx.base.name == f"{load_config().base}-arm64" and ctx.arch == "arm64"


def test_tags_and_labels_differ_by_architecture():
    catalog, config = load_catalog(), load_config()
    amd = topic_layers(catalog, config, catalog.topic("distributed"), base_layer(catalog, config, catalog.base("pypi"), ROOT))
    arm = topic_layers(catalog, config, catalog.topic("distributed"), base_layer(catalog, config, catalog.base("pypi-arm64"), ROOT))
    assert all(a.tag != b.tag for a, b in zip(amd, arm))
    assert [layer.labels()["org.mlsyskit.arch"] for layer in arm] == ["arm64"] * 3
    assert arm[0].repository == "mlsyskit/base-pypi-arm64" and arm[1].repository == amd[1].repository  # frameworks share a repository


def test_a_topic_without_arm64_says_why_before_anything_is_built():
    topic = load_catalog().topic("openrlhf")
    assert topic.arches == ("amd64",)
    with pytest.raises(UsageError, match="has no arm64 image: flash-attn 2.8.3") as caught:
        topic.check_arch("arm64")
    assert caught.value.fix == "use --arch amd64"
    assert load_catalog().topic("distributed").arches == ("amd64", "arm64")


def test_all_topics_for_arm64_leave_out_those_without_it_and_say_why(monkeypatch):
    import mlsyskit.context as context

    monkeypatch.setattr(context, "require_arch", lambda arch: None)  # emulation is another test's
    ctx = Context.resolve("-arm64")
    said: list[str] = []
    kept = ctx.every_topic_for_arch(list(ctx.catalog.topics.values()), said.append)
    assert "openrlhf" not in {t.name for t in kept} and {"distributed", "sglang", "verl"} <= {t.name for t in kept}
    assert len(said) == 1 and said[0].startswith("note: openrlhf left out: it has no arm64 image (flash-attn 2.8.3")
    with pytest.raises(UsageError, match="topic 'openrlhf' has no arm64 image"):  # named explicitly: an error
        ctx.topics_for_arch([ctx.catalog.topic("openrlhf")])


def handler(folder: Path, text: str) -> Path:
    (folder / "status").write_text("enabled\n")
    (folder / "qemu-aarch64").write_text(text)
    return folder


@pytest.mark.parametrize(
    ("text", "state"),
    [
        ("enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: POCF\n", "ready"),
        ("enabled\ninterpreter /usr/bin/qemu-aarch64-static\nflags: \n", "qemu-aarch64 has no F flag (containers cannot use it)"),
        ("disabled\nflags: F\n", "qemu-aarch64 is registered but disabled"),
    ],
)
def test_binfmt_states(tmp_path, text, state, monkeypatch):
    monkeypatch.setattr("mlsyskit.context.host_arch", lambda: "amd64")
    assert binfmt_state("arm64", handler(tmp_path, text)) == state


def test_binfmt_not_mounted_or_not_registered(tmp_path, monkeypatch):
    monkeypatch.setattr("mlsyskit.context.host_arch", lambda: "amd64")
    assert binfmt_state("arm64", tmp_path) == "binfmt_misc is not mounted"
    (tmp_path / "status").write_text("enabled\n")
    assert binfmt_state("arm64", tmp_path) == "no qemu-aarch64 handler registered"
    assert binfmt_state("amd64", tmp_path) == "native"


def test_a_host_that_cannot_emulate_is_told_to_run_doctor(monkeypatch):
    from mlsyskit.context import require_arch

    monkeypatch.setattr("mlsyskit.context.binfmt_state", lambda arch: "binfmt_misc is not mounted")
    with pytest.raises(UsageError, match="this host cannot run arm64 code: binfmt_misc is not mounted") as caught:
        require_arch("arm64")
    assert "invoke doctor --fix" in caught.value.fix


def test_lock_markers_follow_the_architecture():
    from mlsyskit.checks.versions import base_environment, locked_versions

    catalog = load_catalog()
    amd, arm = (base_environment(catalog.base(name)) for name in ("pypi", "pypi-arm64"))
    assert (amd["platform_machine"], arm["platform_machine"]) == ("x86_64", "aarch64")
    # sglang's lock forks by machine: decord2 (video decoding) is asked for on aarch64 only
    assert "decord2" not in locked_versions(catalog, catalog.topic("sglang"), amd)
    assert "decord2" in locked_versions(catalog, catalog.topic("sglang"), arm)


def test_a_flavour_the_debian_lock_never_recorded_is_not_stale():
    from mlsyskit.images.relock import check_debian

    lines: list[str] = []
    assert check_debian(load_catalog(), "nvidia", log=lines.append) == []
    assert lines and lines[0].startswith("unrecorded  images/debian-lock.toml [nvidia]")


def test_an_arm64_container_under_qemu_gets_an_arm64_cpuinfo(tmp_path, monkeypatch):
    """torch 2.14's aarch64 oneDNN segfaults at import on the x86 /proc/cpuinfo that qemu-user
    passes through: an emulated arm64 container sees an arm64 one instead (engine/emulation.py)."""
    from mlsyskit.engine import ContainerSpec, emulation
    from mlsyskit.engine.spec import run_call

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(emulation, "host_arch", lambda: "amd64")
    args = run_call(ContainerSpec(image="mlsyskit/sglang:pypi-arm64", platform="linux/arm64")).args
    volume = args[args.index("-v") + 1]
    path, target = volume.split(":")[:2]
    assert target == "/proc/cpuinfo" and volume.endswith(":ro")
    text = Path(path).read_text()
    assert text.count("CPU part\t: 0xd4f") == text.count("processor\t:") >= 1  # Neoverse V2 (Grace), one per CPU
    assert "-v" not in run_call(ContainerSpec(image="mlsyskit/sglang:pypi")).args  # the host's own architecture
    monkeypatch.setattr(emulation, "host_arch", lambda: "arm64")  # an arm64 host runs arm64 natively
    assert emulation.emulation_volumes("linux/arm64") == ()
    assert emulation.foreign_platform("amd64") == "linux/amd64" and emulation.foreign_platform("arm64") == ""
