"""Where a server's or trainer's start-up time went, read from the timestamps of its own log.

A start-up is cut into phases at marker lines the software logs itself: a phase ends at its
marker and begins at the previous marker found (or at the process start, a wall-clock time
the test took when it started the child). A marker the log lacks (a feature turned off, an
older release) merges its phase into the next one found; the phases always add up to the
time from the start to the last marker found. Resolution is the log's: whole seconds for
SGLang, milliseconds for verl.

Used for issue 23's question of what a warm kernel cache saves: cold and warm runs of the
same test, phase by phase (``benchmarks/gpu/plot_startup.py``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import datetime

#: (marker, name of the phase that ends there): a marker is a regular expression searched in
#: the log line's message. Phases are cut in the order the markers' times come, so releases
#: that reorder steps (SGLang 0.5.23 captures prefill graphs before decode ones) cut right.
Marks = Sequence[tuple[str, str]]

#: SGLang's server (checked against 0.5.12's logs and 0.5.23's source): `[2026-12-05 18:23:19] ...`
#: or `[2026-12-05 18:23:19 TP0] ...`.
SGLANG_STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)(?: [^\]]*)?\] (.*)$")
SGLANG_MARKS: Marks = (
    (r"Init (torch distributed|parallel) ends", "process start, imports, distributed init"),
    (r"Load weight begin", "model runner set-up"),
    (r"Load weight end", "weights"),
    (r"Memory pool end", "KV cache"),
    (r"Capture (piecewise|\w+ prefill) CUDA graph end", "prefill CUDA graphs (torch.compile, JIT)"),
    (r"Capture (cuda graph|\w+ decode CUDA graph) end", "decode CUDA graphs"),
    (r"Uvicorn running", "HTTP server"),
    (r"The server is fired up", "warm-up request"),
)

#: verl's PPO/GRPO driver (verl/trainer/ppo/v1/trainer_base.py, 0.9.x):
#: `INFO:2026-12-05 18:29:10,177:reward loop manager initialized`, behind Ray's prefix.
VERL_STAMP = re.compile(r"INFO:(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}):(.*)$")
#: The phase whose length is the rollout engine's start (the test reports it on its own):
#: verl builds its SGLang servers between these two log lines (LLMServerManager.create).
VERL_ROLLOUT = "rollout engine (SGLang servers)"
VERL_MARKS: Marks = (
    (r"^train and validate dataloader initialized", "Ray, config, data"),
    (r"^actor and ref model engine initialized", "actor (FSDP) workers and model"),
    (r"^reward loop manager initialized", "reward workers"),
    (r"^checkpoint engine manager initialized", VERL_ROLLOUT),
    (r"^all initialize finished", "replicas to sleep, checkpoint"),
)


def _stamp(text: str) -> float:
    fmt = "%Y-%m-%d %H:%M:%S,%f" if "," in text else "%Y-%m-%d %H:%M:%S"
    # the child runs in our time zone: naive local time on both sides
    return datetime.strptime(text, fmt).timestamp()


def marker_times(lines: Iterable[str], marks: Marks, stamp: re.Pattern[str]) -> dict[str, float]:
    """Each phase's end: its marker's last time in the log (several ranks log the same
    marker: the slowest one counts)."""
    patterns = [(re.compile(marker), name) for marker, name in marks]
    found: dict[str, float] = {}
    for line in lines:
        m = stamp.search(line.rstrip("\n"))
        if not m:
            continue
        for pattern, name in patterns:
            if pattern.search(m.group(2)):
                found[name] = _stamp(m.group(1))
                break
    return found


def phases(lines: Iterable[str], marks: Marks, stamp: re.Pattern[str], started_at: float) -> list[dict[str, float | str]]:
    """The start-up as [{"phase": name, "seconds": s}, ...] from `started_at` (epoch seconds)
    to the last marker found, in time order; [] when the log has none."""
    found = marker_times(lines, marks, stamp)
    order = {name: i for i, (_, name) in enumerate(marks)}
    out: list[dict[str, float | str]] = []
    previous = started_at
    for name, at in sorted(found.items(), key=lambda item: (item[1], order[item[0]])):
        at = max(at, previous)  # a log stamped before the start (clock, rounding) is no negative phase
        out.append({"phase": name, "seconds": round(at - previous, 3)})
        previous = at
    return out


def summary(parts: Sequence[dict[str, float | str]], top: int = 4) -> str:
    """The longest phases in one line: "weights 0.1 s, KV cache 0.0 s, ...", by length."""
    longest = sorted(parts, key=lambda p: -float(p["seconds"]))[:top]
    return ", ".join(f"{p['phase']} {float(p['seconds']):.1f} s" for p in longest)
