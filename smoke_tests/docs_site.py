"""Docs smoke test: MkDocs Material builds a site from a Markdown page and a notebook,
offline, and the HTML holds what the sources say.

    python -m smoke_tests.docs_site [--json docs_site.json] [--keep DIR]

The site is written here: ``mkdocs.yml`` (theme ``material``, the ``search`` plugin and
``mkdocs-jupyter`` with ``execute: true``), ``docs/index.md`` (a heading, a table and an
admonition from pymdown-extensions) and ``docs/notebook.ipynb`` whose one code cell
computes a number the test does not write anywhere: the kernel (ipykernel) must run it for
the number to appear in the page. ``mkdocs build --strict`` must succeed with no network
(any warning, e.g. a broken link, fails a strict build), and the built HTML is checked:
the Markdown page's heading, table cell and admonition, the notebook page with the
executed cell's output, the theme's assets and the search index listing both pages.
No GPU is involved: the test passes on any machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from smoke_tests._result import Fail, Report, SmokeTest, run_command, run_main, test_parser

TEST = "docs_site"
#: What the notebook's cell prints: computed only when the cell runs (sum of squares below 2026).
EXPECTED_OUTPUT = str(sum(i * i for i in range(2026)))

MKDOCS_YML = """\
site_name: Kit docs smoke test
theme:
  name: material
plugins:
  - search
  - mkdocs-jupyter:
      execute: true
      allow_errors: false
markdown_extensions:
  - admonition
  - tables
  - pymdownx.superfences
nav:
  - Home: index.md
  - Notebook: notebook.ipynb
"""

INDEX_MD = """\
# Reproducible kernels

| layer | holds |
|-------|-------|
| framework | torch-and-cuda-wheels |

!!! note "Kept in the image"
    The lock decides every byte.
"""


def notebook() -> dict[str, Any]:
    return {
        "cells": [
            {"cell_type": "markdown", "metadata": {}, "source": ["# A notebook page\n"]},
            {
                "cell_type": "code",
                "execution_count": None,
                "metadata": {},
                "outputs": [],
                "source": ["print(sum(i * i for i in range(2026)))\n"],
            },
        ],
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def write_site(root: Path) -> None:
    (root / "docs").mkdir(parents=True, exist_ok=True)
    (root / "mkdocs.yml").write_text(MKDOCS_YML)
    (root / "docs" / "index.md").write_text(INDEX_MD)
    (root / "docs" / "notebook.ipynb").write_text(json.dumps(notebook(), indent=1))


def check_site(site: Path) -> dict[str, Any]:
    """What the built site must hold; raises Fail naming the first thing missing."""
    checks = {
        "index.html": ["Reproducible kernels", "torch-and-cuda-wheels", "admonition", "The lock decides every byte."],
        "notebook/index.html": ["A notebook page", EXPECTED_OUTPUT],
    }
    found: dict[str, Any] = {}
    for page, needles in checks.items():
        path = site / page
        if not path.is_file():
            raise Fail(f"the build wrote no {page}")
        html = path.read_text(errors="replace")
        for needle in needles:
            if needle not in html:
                what = "the notebook's executed output" if needle == EXPECTED_OUTPUT else repr(needle)
                raise Fail(f"{page} lacks {what}")
        found[page] = len(html)
    assets = list((site / "assets").rglob("*.css"))
    if not assets:
        raise Fail("the theme's stylesheets are missing from assets/")
    index = site / "search" / "search_index.json"
    if not index.is_file():
        raise Fail("the search plugin wrote no search/search_index.json")
    docs = json.loads(index.read_text()).get("docs", [])
    locations = {d.get("location", "").split("#")[0] for d in docs}
    if not {"", "notebook/"} <= locations:
        raise Fail(f"the search index lists {sorted(locations)}, not both pages")
    found.update(stylesheets=len(assets), search_entries=len(docs))
    return found


def key_figure(figures: Mapping[str, Any]) -> str:
    if "pages" in figures:
        return f"{figures['pages']} pages built in {figures.get('build_seconds', 0):.1f} s, notebook executed"
    return "-"


SMOKE = SmokeTest(TEST, timeout=300, key_figure=key_figure)


def body_for(args: argparse.Namespace) -> Any:
    def body(report: Report) -> None:
        root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="smoke-docs-"))
        try:
            write_site(root)
            env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
            cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(root / "site")]
            # past the test's own limit: the time limit is the watchdog's to report ("timed out after N s")
            result = run_command(cmd, cwd=root, env=env, timeout=args.timeout + 30)
            report.figures["build_seconds"] = round(result.seconds, 1)
            if result.returncode != 0:
                tail = "; ".join(result.output.strip().splitlines()[-3:])
                raise Fail(f"mkdocs build --strict failed (exit {result.returncode}): {tail}")
            found = check_site(root / "site")
            report.verdict("site", True, f"{len(found)} files checked", "both pages, the theme and the search index")
            report.figures.update(found, pages=2)
            report.table(["page", "bytes"], [[k, str(v)] for k, v in found.items() if k.endswith(".html")])
        finally:
            if not args.keep:
                shutil.rmtree(root, ignore_errors=True)

    return body


def main(argv: Iterable[str] | None = None) -> int:
    parser = test_parser(__doc__, timeout=SMOKE.timeout)
    parser.add_argument("--keep", default="", help="build in this folder and keep it")
    return run_main(TEST, parser, argv, body_for)


if __name__ == "__main__":
    sys.exit(main())
