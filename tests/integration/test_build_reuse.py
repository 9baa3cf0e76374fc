"""The layer graph on the real engine: a warm rebuild reuses every layer, and a changed
topic dependency rebuilds only the topic layer."""

import subprocess
import sys

from mlsyskit import REPO_ROOT
from mlsyskit.data.catalog import load_catalog
from mlsyskit.data.config import load_config
from mlsyskit.data.lockfile import uv_binary
from mlsyskit.engine import ContainerSpec
from mlsyskit.images.build import build_topics


def test_warm_rebuild_reuses_every_layer(engine, build_topic):
    build_topic("distributed")
    catalog = load_catalog()
    again = build_topics(engine, catalog, load_config(), [catalog.topic("distributed")], base_name="pypi", log=print)
    assert [(r.layer.kind, r.status) for r in again] == [("base", "reused"), ("framework", "reused"), ("topic", "reused")]


def test_bumping_a_topic_dependency_rebuilds_only_the_topic(engine, build_topic, kit_tree):
    first = build_topic("distributed")
    pyproject = kit_tree / "envs/distributed/pyproject.toml"
    # A small, pure-Python addition: the kind of change users make most.
    pyproject.write_text(pyproject.read_text().replace('"psutil",', '"psutil",\n    "tabulate==0.9.0",'))
    subprocess.run([uv_binary(), "lock", "--directory", str(kit_tree / "envs/distributed")], check=True, capture_output=True)
    catalog = load_catalog(kit_tree)
    results = build_topics(engine, catalog, load_config(kit_tree), [catalog.topic("distributed")], base_name="pypi", log=print, tag_aliases=False)
    try:
        assert [r.status for r in results] == ["reused", "reused", "built"]
        assert [r.layer.tag for r in results[:2]] == [r.layer.tag for r in first[:2]]
        assert results[2].layer.tag != first[2].layer.tag
        proc = engine.run(ContainerSpec(image=results[2].layer.tag, command=("python", "-c", "import tabulate; print(tabulate.__version__)")))
        assert proc.stdout.strip() == "0.9.0", proc.stderr
    finally:
        engine.remove_images([results[2].layer.tag])


def test_dry_run_lists_the_plan_and_builds_nothing(engine, build_topic, kit_tree):
    """`invoke build --dry-run`: for a built topic every layer is reused; after a topic lock
    changes, the topic layer (only) would be built. No image appears either way."""
    from tests.integration.conftest import run_kit

    build_topic("distributed")
    before = {i.id for i in engine.images("org.mlsyskit.kind")}
    proc = run_kit("build", "distributed", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "0 layer(s) to build, 3 to reuse; nothing was built (--dry-run)" in proc.stdout
    lock = kit_tree / "envs/distributed/uv.lock"
    lock.write_text(lock.read_text() + "\n# changed\n")
    changed = run_kit("build", "distributed", "--dry-run", env={"MLSYSKIT_ROOT": str(kit_tree)})
    assert changed.returncode == 0, changed.stderr
    rows = {line.split()[1]: line.split()[4] for line in changed.stdout.splitlines() if line.split()[:1] in (["base"], ["framework"], ["topic"])}
    assert rows == {"pypi": "reuse", "torch-2.11-cu130": "reuse", "distributed": "build"}
    assert {i.id for i in engine.images("org.mlsyskit.kind")} == before


def test_each_command_is_one_straight_pipeline(build_topic):
    """`./kit shell`, `invoke build` and `invoke up` traced through the kit's modules up to the
    engine hand-off (benchmarks/trace_walk.py --edges): each goes options -> context -> image
    -> spec -> engine and comes back to a module it already left at most 3 times (issue 24).
    A stage that calls back into the catalog or the context, or a per-layer engine query
    between plan steps, puts it over."""
    build_topic("distributed")
    proc = subprocess.run([sys.executable, "benchmarks/trace_walk.py", "--edges", "--walk"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {line.split("`")[1]: [cell.strip() for cell in line.split("|")[2:5]] for line in proc.stdout.splitlines() if line.startswith("| `")}
    assert len(rows) == 3, proc.stdout
    for label, (stops, _modules, returns) in rows.items():
        assert int(stops) > 5, f"{label}: {stops} stops, the trace saw no pipeline:\n{proc.stdout}"
        assert int(returns) <= 3, f"{label} returns {returns} times to a module it left:\n{proc.stdout}"
