import pytest

from mlsyskit.config import load_config
from mlsyskit.errors import UsageError
from mlsyskit.lockfile import disagreements, read_packages
from mlsyskit.catalog import load_catalog


def test_defaults_and_proxy_from_environment(kit_tree):
    config = load_config(kit_tree, environ={"HTTPS_PROXY": "http://proxy:3128"})
    assert config.base == "pypi" and config.rootfs == "auto"
    assert config.proxy_env()["HTTPS_PROXY"] == "http://proxy:3128"
    assert "HTTP_PROXY" not in config.proxy_env()


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


def test_topic_agrees_with_its_stack():
    catalog = load_catalog()
    for topic in catalog.topics.values():
        if topic.stack:
            assert disagreements(catalog.stacks[topic.stack].lock_path, topic.lock_path) == [], topic.name


def test_disagreement_is_reported(kit_tree):
    lock = kit_tree / "envs/distributed/uv.lock"
    lock.write_text(lock.read_text().replace('name = "torch"\nversion = "2.11.0"', 'name = "torch"\nversion = "2.10.0"'))
    stack = kit_tree / "images/stacks/torch-2.11-cu130/uv.lock"
    assert ("torch", "2.11.0", "2.10.0") in disagreements(stack, lock)


def test_forked_lock_gives_one_version_per_python():
    from mlsyskit.lockfile import expected_packages

    lock = load_catalog().topic("distributed").lock_path
    base = {"sys_platform": "linux", "platform_machine": "x86_64", "platform_system": "Linux", "os_name": "posix",
            "implementation_name": "cpython", "platform_python_implementation": "CPython"}
    py311 = expected_packages(lock, {**base, "python_version": "3.11", "python_full_version": "3.11.2"})
    py312 = expected_packages(lock, {**base, "python_version": "3.12", "python_full_version": "3.12.3"})
    assert py311["torch"] == py312["torch"] == "2.11.0"
    assert set(read_packages(lock)["numpy"]) >= {py311["numpy"], py312["numpy"]}
