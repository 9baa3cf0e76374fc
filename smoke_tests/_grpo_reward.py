"""The reward of the verl GRPO smoke test (``reward.custom_reward_function``), loaded by
verl from this file's path, so it imports nothing of the kit.

A random-weight model almost never writes the right sum, and an exact-answer reward would
then be 0 for every sample: GRPO's group advantages would all be 0 and the update a no-op.
This reward is graded so that samples of one prompt differ: 1.0 for the right sum
anywhere in the answer, else the share of the answer's characters that are digits (at
most 0.5).
"""

from __future__ import annotations

import re
from typing import Any


def compute_score(data_source: str, solution_str: str, ground_truth: str, extra_info: Any = None, **kwargs: Any) -> float:
    if re.search(rf"(?<!\d){re.escape(str(ground_truth))}(?!\d)", solution_str):
        return 1.0
    if not solution_str:
        return 0.0
    digits = sum(ch.isdigit() for ch in solution_str)
    return 0.5 * digits / len(solution_str)
