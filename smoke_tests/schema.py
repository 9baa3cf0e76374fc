"""What the kit reads of the smoke tests (mlsyskit/checks/smoke.py): the declaration a test
module makes (``SMOKE``), the values its gates take, and the schema of the result it writes.

The kit imports these names from here and nothing from the private modules behind them
(pyproject's import-linter contracts keep it so), which stay free to change. This module is
not a test and not needed inside the containers: nothing in them imports it."""

from __future__ import annotations

from smoke_tests._gates import Value
from smoke_tests._result import FAILED, PASSED, SKIPPED, SmokeTest, validate_result

__all__ = ["FAILED", "PASSED", "SKIPPED", "SmokeTest", "Value", "validate_result"]
