"""`invoke topics` and `invoke versions` tables from the real catalog and locks, with the
engine's side (image states, what a container reported) given as data: no Docker."""

import pytest

from mlsyskit import LABEL_PREFIX
from mlsyskit.checks.versions import (
    CUDA,
    NCCL,
    PYTHON,
    ImageProbe,
    ImageState,
    base_environment,
    gpu_needs,
    key_packages,
    label_problems,
    locked_versions,
    topics_table,
    versions_rows,
    versions_table,
)
from mlsyskit.data.catalog import load_catalog
from mlsyskit.data.lockfile import key_versions, lock_sha256


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


@pytest.fixture(scope="module")
def pypi(catalog):
    return catalog.base("pypi")


@pytest.fixture(scope="module")
def locked(catalog, pypi):
    env = base_environment(pypi)
    return {t.name: locked_versions(catalog, t, env) for t in catalog.select([])}


def _rows(text: str) -> dict[str, list[str]]:
    """{first cell: cells} of a table printed by report.table (columns split on 2+ spaces)."""
    import re

    lines = [line for line in text.splitlines()[2:] if not line.startswith("image:")]  # the footnote
    return {cells[0]: cells for cells in (re.split(r"\s{2,}", line.strip()) for line in lines) if cells}


def test_every_topic_of_the_issue_is_in_the_catalogue(catalog):
    assert {"sglang", "verl", "distributed", "cuda-graph", "quantization", "openrlhf", "docs"} <= set(catalog.topics)


def test_topics_table_has_a_row_per_topic_with_framework_torch_and_image_state(catalog, locked):
    states = {name: ImageState(current=False) for name in catalog.topics}
    states["sglang"] = ImageState(current=True, alias_labels={})
    states["verl"] = ImageState(current=False, alias_labels={f"{LABEL_PREFIX}.topic": "verl"})
    rows = _rows(topics_table(catalog, locked, states, "pypi"))
    assert set(rows) == set(catalog.topics)
    for name, topic in catalog.topics.items():
        topic_name, framework, versions, gpus, image, tag = rows[name]
        assert framework == (topic.framework or "(none)")
        if topic.framework:
            framework_torch = key_versions(catalog.frameworks[topic.framework].lock_path, ["torch"])["torch"]
            assert versions.startswith(f"torch {framework_torch}, ")
        else:
            assert "torch" not in versions
    assert rows["sglang"][4:] == ["built", "mlsyskit/sglang:pypi"]
    assert rows["verl"][4:] == ["stale", "mlsyskit/verl:pypi"]
    assert rows["distributed"][4:] == ["no", "-"]


def test_topics_table_says_unknown_without_an_engine(catalog, locked):
    text = topics_table(catalog, locked, None, "pypi")
    assert {cells[4] for cells in _rows(text).values()} == {"?"}
    assert "no Docker engine answered" in text


def test_headline_versions_are_the_locked_ones(catalog, locked):
    rows = _rows(topics_table(catalog, locked, None, "pypi"))
    sglang_lock = key_versions(catalog.topic("sglang").lock_path, ["sglang", "sglang-router"])
    assert f"sglang {sglang_lock['sglang']}" in rows["sglang"][2]
    assert f"sglang-router {sglang_lock['sglang-router']}" in rows["sglang"][2]


@pytest.mark.parametrize(
    ("state", "status"),
    [
        (ImageState(current=True, alias_labels={}), "built"),
        (ImageState(current=False, alias_labels={"x": "y"}), "stale"),
        (ImageState(current=False, alias_labels=None), "no"),
    ],
)
def test_image_state(state, status):
    assert state.status == status


def test_gpu_needs(catalog):
    assert gpu_needs(catalog.topic("docs")) == "none"
    topic = catalog.topic("sglang")
    assert gpu_needs(topic) == f"{topic.gpus_min} min, {topic.gpus_recommended} rec."


def test_key_packages_are_the_topics_then_its_frameworks_each_once(catalog):
    topic = catalog.topic("sglang")
    names = key_packages(catalog, topic)
    assert names[: len(topic.key_packages)] == list(topic.key_packages)
    assert names.count("torch") == 1
    assert set(catalog.frameworks[topic.framework].key_packages) <= set(names)
    assert key_packages(catalog, catalog.topic("docs")) == list(catalog.topic("docs").key_packages)


def test_locked_versions_follow_the_bases_python(catalog):
    """A lock forking by Python (numpy for 3.11 and 3.12+) is read for the base's Python."""
    topic = catalog.topic("cuda-graph")
    on_311 = locked_versions(catalog, topic, base_environment(catalog.base("pypi")))
    on_312 = locked_versions(catalog, topic, base_environment(catalog.base("nvidia")))
    forks = key_versions(topic.lock_path, ["numpy"])["numpy"].split("|")
    assert on_311["numpy"] in forks and on_312["numpy"] in forks
    assert on_311["torch"] == on_312["torch"]


def _probe_matching(catalog, topic, locked_for_topic, **changes):
    names = key_packages(catalog, topic)
    dists = {n: locked_for_topic.get(n) for n in names}
    dists.update(changes)
    framework = catalog.frameworks[topic.framework]
    runtime = {PYTHON: "3.11.2", CUDA: framework.cuda, NCCL: locked_for_topic["nvidia-nccl-cu13"]}
    return ImageProbe(environment=base_environment(catalog.base("pypi")), distributions=dists, runtime=runtime)


def test_versions_rows_match_when_the_image_holds_the_lock(catalog, pypi, locked):
    topic = catalog.topic("verl")
    probe = _probe_matching(catalog, topic, locked["verl"])
    rows = versions_rows(catalog, topic, pypi, locked["verl"], probe)
    assert [r[0] for r in rows[-3:]] == [PYTHON, CUDA, NCCL]
    assert {r[3] for r in rows} == {"ok"}
    assert dict((r[0], r[1]) for r in rows)["verl"] == locked["verl"]["verl"]
    text = versions_table(catalog, topic, pypi, "mlsyskit/verl:pypi", locked["verl"], probe)
    assert text.endswith("every key version matches the lock")


def test_versions_rows_flag_a_drifted_and_a_missing_package(catalog, pypi, locked):
    topic = catalog.topic("sglang")
    probe = _probe_matching(catalog, topic, locked["sglang"], transformers="4.0.0", xgrammar=None)
    rows = {r[0]: r for r in versions_rows(catalog, topic, pypi, locked["sglang"], probe)}
    assert rows["transformers"][2:] == ("4.0.0", "DIFFERS")
    assert rows["xgrammar"][2:] == ("(missing)", "DIFFERS")
    assert rows["sglang"][3] == "ok"
    text = versions_table(catalog, topic, pypi, "mlsyskit/sglang:pypi", locked["sglang"], probe)
    assert text.endswith("2 differ from the lock")


def test_versions_rows_without_an_image_show_the_lock_only(catalog, pypi, locked):
    topic = catalog.topic("docs")
    rows = versions_rows(catalog, topic, pypi, locked["docs"], None)
    assert {r[2] for r in rows} == {"-"} and {r[3] for r in rows} == {""}
    assert [r[0] for r in rows][-1] == PYTHON  # no framework: no CUDA or NCCL rows
    assert "not built" in versions_table(catalog, topic, pypi, "mlsyskit/docs:pypi", locked["docs"], None)


def test_label_problems(catalog):
    topic = catalog.topic("quantization")
    good = {
        f"{LABEL_PREFIX}.kind": "topic",
        f"{LABEL_PREFIX}.topic": topic.name,
        f"{LABEL_PREFIX}.framework": topic.framework,
        f"{LABEL_PREFIX}.lock-sha256": lock_sha256(topic.lock_path),
        f"{LABEL_PREFIX}.key-versions": "{}",
    }
    assert label_problems(topic, good) == []
    stale = {**good, f"{LABEL_PREFIX}.lock-sha256": "0" * 64}
    assert [p.split("=")[0] for p in label_problems(topic, stale)] == [f"{LABEL_PREFIX}.lock-sha256"]
