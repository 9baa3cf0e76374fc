"""The integration suite runs framework group by framework group, so that CI's disk holds one group's
images at a time (tests/integration/conftest.py). A test that builds a topic of another group
without saying so would run in the first group and keep that topic's images on disk with it."""

from __future__ import annotations

import ast
import subprocess
import sys

from mlsyskit import REPO_ROOT
from mlsyskit.data.catalog import load_catalog

INTEGRATION = REPO_ROOT / "tests" / "integration"
# The calls through which an integration test gets a topic's image or container.
GETS_A_TOPIC = {"build_topic", "hosts", "topic_container", "topic_alias", "smoke"}


def topics_named_in_calls(function: ast.FunctionDef, topics: set[str]) -> set[str]:
    named = set()
    for call in ast.walk(function):
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id in GETS_A_TOPIC:
            named |= {a.value for a in call.args if isinstance(a, ast.Constant) and a.value in topics}
    return named


def says_its_topic(function: ast.FunctionDef) -> bool:
    for decorator in function.decorator_list:
        text = ast.unparse(decorator)
        if text.startswith("pytest.mark.topic(") or ("parametrize" in text and "'topic'" in text):
            return True
    return False


def test_every_integration_test_that_builds_another_groups_topic_names_it():
    catalog = load_catalog()
    first = catalog.topic("distributed").framework
    elsewhere = {name for name, topic in catalog.topics.items() if topic.framework and topic.framework != first}
    assert elsewhere, "the catalog has one framework group: nothing to check"
    unnamed = []
    for path in sorted(INTEGRATION.glob("test_*.py")):
        for node in ast.parse(path.read_text()).body:
            named = isinstance(node, ast.FunctionDef) and node.name.startswith("test_") and not says_its_topic(node) and topics_named_in_calls(node, elsewhere)
            if named:
                unnamed.append(f"{path.name}::{node.name}")
    assert not unnamed, "add @pytest.mark.topic(name) to: " + ", ".join(unnamed)


COLLECT = """
import sys, pytest
class Show:
    def pytest_collection_finish(self, session):
        from tests.integration.conftest import topic_of
        for item in session.items:
            print("ITEM", item.nodeid, topic_of(item) or "-")
sys.exit(pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", sys.argv[1]], plugins=[Show()]))
"""


def test_collection_runs_each_framework_group_in_one_piece():
    """The real collection order (collecting needs no engine): the framework group of the topic
    each integration test builds never goes back to an earlier group, and the marked tests
    (openrlhf's, sglang's) run after every test of the first group."""
    proc = subprocess.run([sys.executable, "-c", COLLECT, str(INTEGRATION)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = [line[len("ITEM ") :].rsplit(" ", 1) for line in proc.stdout.splitlines() if line.startswith("ITEM ")]
    catalog = load_catalog()
    first = catalog.topic("distributed").framework
    order = [first, *sorted({t.framework for t in catalog.topics.values() if t.framework} - {first})]
    groups = [order.index(catalog.topic(topic).framework or first) if topic != "-" else 0 for _, topic in rows]
    assert len(rows) > 100 and groups == sorted(groups), "a framework group comes back after the next one started"
    assert set(groups) == set(range(len(order))), "a framework group has no test"
    topic_of = dict(rows)
    assert topic_of["tests/integration/test_topics.py::test_sglang_server_and_router_answer_help"] == "sglang"
    assert topic_of["tests/integration/test_main_jobs.py::test_openrlhf_checks_vllm_and_its_trainer_on_cpu"] == "openrlhf"
