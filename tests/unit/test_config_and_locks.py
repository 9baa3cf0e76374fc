import pytest

from mlsyskit.data.catalog import load_catalog
from mlsyskit.data.config import load_config
from mlsyskit.data.lockfile import disagreements, read_packages
from mlsyskit.errors import UsageError


def test_defaults_and_proxy_from_environment(kit_tree):
    config = load_config(kit_tree, environ={"HTTPS_PROXY": "http://proxy:3128"})
    assert config.base == "pypi" and config.rootfs == "auto"
    assert config.proxy["HTTPS_PROXY"] == "http://proxy:3128"
    assert "HTTP_PROXY" not in config.proxy


def test_local_file_overrides_and_bad_values_fail(kit_tree):
    (kit_tree / "kit.local.toml").write_text('[network]\npypi_index = "https://mirror.example/simple"\n')
    assert load_config(kit_tree, environ={}).pypi_index == "https://mirror.example/simple"
    (kit_tree / "kit.local.toml").write_text('[build]\nrootfs = "magic"\n')
    with pytest.raises(UsageError, match="build.rootfs"):
        load_config(kit_tree, environ={})
    (kit_tree / "kit.local.toml").write_text('[network]\nca_bundle = "/no/such.pem"\n')
    with pytest.raises(UsageError, match="is not a file"):
        load_config(kit_tree, environ={})
    (kit_tree / "kit.local.toml").write_text('[network]\ntoken = "x"\n')
    with pytest.raises(UsageError, match="unknown field 'network.token'"):
        load_config(kit_tree, environ={})


def test_lock_reader_skips_the_virtual_project():
    packages = read_packages(load_catalog().topic("distributed").lock_path)
    assert packages["torch"] == ("2.11.0",)
    assert "topic-distributed" not in packages


def test_topic_agrees_with_its_framework():
    catalog = load_catalog()
    for topic in catalog.topics.values():
        if topic.framework:
            assert disagreements(catalog.frameworks[topic.framework].lock_path, topic.lock_path) == [], topic.name


def test_disagreement_is_reported(kit_tree):
    lock = kit_tree / "envs/distributed/uv.lock"
    lock.write_text(lock.read_text().replace('name = "torch"\nversion = "2.11.0"', 'name = "torch"\nversion = "2.10.0"'))
    framework = kit_tree / "images/frameworks/torch-2.11-cu130/uv.lock"
    assert ("torch", "2.11.0", "2.10.0") in disagreements(framework, lock)


def test_forked_lock_gives_one_version_per_python():
    from mlsyskit.data.lockfile import expected_packages

    lock = load_catalog().topic("distributed").lock_path
    base = {
        "sys_platform": "linux",
        "platform_machine": "x86_64",
        "platform_system": "Linux",
        "os_name": "posix",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
    }
    py311 = expected_packages(lock, {**base, "python_version": "3.11", "python_full_version": "3.11.2"})
    py312 = expected_packages(lock, {**base, "python_version": "3.12", "python_full_version": "3.12.3"})
    assert py311["torch"] == py312["torch"] == "2.11.0"
    assert set(read_packages(lock)["numpy"]) >= {py311["numpy"], py312["numpy"]}


def test_apt_mirror_with_credentials_is_refused(kit_tree):
    (kit_tree / "kit.local.toml").write_text('[network]\napt_mirror = "http://user:secret@mirror.example/debian"\n')
    with pytest.raises(UsageError, match="carries credentials"):
        load_config(kit_tree, environ={})


def test_config_section_that_is_not_a_table_and_unreadable_file(kit_tree):
    (kit_tree / "kit.local.toml").write_text('network = "x"\n')
    with pytest.raises(UsageError, match="'network' must be a table"):
        load_config(kit_tree, environ={})
    with pytest.raises(UsageError, match="cannot read the config file"):
        load_config(kit_tree, environ={"MLSYSKIT_CONFIG": str(kit_tree)})


def test_proxy_values_reach_builds_by_name_only(monkeypatch, tmp_path):
    """A proxy URL may carry a password: it goes to the docker client's environment and
    only its name onto the command line, which `ps` shows to every user."""
    import subprocess

    from mlsyskit.engine import Client, Engine

    seen = {}

    class FakePopen:
        def __init__(self, args, env=None, **kwargs):
            seen["args"], seen["env"] = args, env
            self.stdout = iter(())

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def wait(self):
            return 0

    monkeypatch.setattr(subprocess, "Popen", FakePopen)
    secret = "http://alice:s3cret@proxy.example:3128"
    Engine(Client("/usr/bin/docker", "20.10.24", False)).build(
        dockerfile=tmp_path / "Dockerfile",
        context=tmp_path,
        tag="t:1",
        build_args={"A": "1"},
        labels={},
        secrets={},
        build_env={"HTTPS_PROXY": secret},
    )
    assert not any("s3cret" in arg for arg in seen["args"])
    assert "HTTPS_PROXY" in seen["args"] and seen["env"]["HTTPS_PROXY"] == secret
