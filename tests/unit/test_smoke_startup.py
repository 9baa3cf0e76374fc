"""Start-up phases read from real logs: SGLang 0.5.12's server on an H200 (2026-11-30) and
verl 0.9.1's GRPO driver in the verl image on an H100 (2026-12-05), and SGLang 0.5.23's
wording and order (prefill graphs first) as its source writes them."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from smoke_tests import _startup as startup

GPU = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu"
SGLANG_LOG = GPU / "2026-11-30-h200x2" / "sglang_serve.server.log"
VERL_LOG = GPU / "2026-12-05-h100-images" / "verl-pypi" / "verl_grpo-verl-0-k-run2.log"


def at(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").timestamp()


def by_name(parts: list[dict[str, float | str]]) -> dict[str, float]:
    return {str(p["phase"]): float(p["seconds"]) for p in parts}


def test_sglang_0512_log_cut_at_its_own_markers() -> None:
    start = at("2026-11-30 06:07:40")  # six seconds before the first marker
    with SGLANG_LOG.open(errors="replace") as log:
        parts = startup.phases(log, startup.SGLANG_MARKS, startup.SGLANG_STAMP, start)
    got = by_name(parts)
    names = [p["phase"] for p in parts]  # 0.5.12 captures decode graphs first
    assert sorted(names) == sorted(name for _, name in startup.SGLANG_MARKS)
    assert names.index("decode CUDA graphs") < names.index("prefill CUDA graphs (torch.compile, JIT)")
    assert got["process start, imports, distributed init"] == 6.0
    assert got["decode CUDA graphs"] == 49.0  # 06:07:48 -> 06:08:37: the log's own 48.41 s, whole seconds
    assert got["prefill CUDA graphs (torch.compile, JIT)"] == 2.0
    assert got["warm-up request"] == 15.0
    # the phases add up to the start -> "fired up" span
    assert sum(got.values()) == at("2026-11-30 06:08:54") - start
    assert startup.summary(parts, top=1) == "decode CUDA graphs 49.0 s"


def test_sglang_0523_prefill_before_decode_and_rank_prefix() -> None:
    log = [
        "[2026-12-06 10:00:05 TP0] Init parallel ends. elapsed=0.20 s\n",
        "[2026-12-06 10:00:07 TP0] Load weight begin. avail mem=79.1 GB\n",
        "[2026-12-06 10:00:08 TP0] Load weight end. elapsed=0.9 s\n",
        "[2026-12-06 10:00:09 TP0] Memory pool end. avail mem=39 GB\n",
        "[2026-12-06 10:00:09 TP0] Capture target prefill CUDA graph begin. backend=x\n",
        "[2026-12-06 10:00:50 TP0] Capture target prefill CUDA graph end. elapsed=41 s\n",
        "[2026-12-06 10:01:00 TP0] Capture target decode CUDA graph end. elapsed=10 s\n",
        "[2026-12-06 10:01:01] Uvicorn running on 127.0.0.1:30000\n",
        "[2026-12-06 10:01:03] The server is fired up and ready to roll!\n",
        "Capture cuda graph end. (no stamp: not a log line of the server's)\n",
    ]
    parts = startup.phases(log, startup.SGLANG_MARKS, startup.SGLANG_STAMP, at("2026-12-06 10:00:00"))
    names = [p["phase"] for p in parts]
    assert names.index("prefill CUDA graphs (torch.compile, JIT)") < names.index("decode CUDA graphs")
    got = by_name(parts)
    assert got["prefill CUDA graphs (torch.compile, JIT)"] == 41.0
    assert got["decode CUDA graphs"] == 10.0
    assert sum(got.values()) == 63.0


def test_missing_markers_merge_into_the_next_phase_and_no_log_gives_nothing() -> None:
    log = ["[2026-12-06 10:00:30] Load weight end. elapsed=1 s\n", "[2026-12-06 10:00:40] The server is fired up\n"]
    parts = startup.phases(log, startup.SGLANG_MARKS, startup.SGLANG_STAMP, at("2026-12-06 10:00:00"))
    assert by_name(parts) == {"weights": 30.0, "warm-up request": 10.0}
    assert startup.phases(["no stamps at all\n"], startup.SGLANG_MARKS, startup.SGLANG_STAMP, 0.0) == []
    # a stamp before the start (whole seconds, other clock) gives 0, never a negative phase
    early = startup.phases(log[:1], startup.SGLANG_MARKS, startup.SGLANG_STAMP, at("2026-12-06 10:00:31"))
    assert by_name(early) == {"weights": 0.0}


def test_verl_grpo_driver_log_gives_the_rollout_engine_start() -> None:
    lines = VERL_LOG.read_text(errors="replace").splitlines()
    start = datetime.strptime("2026-12-05 18:28:40,000", "%Y-%m-%d %H:%M:%S,%f").timestamp()
    got = by_name(startup.phases(lines, startup.VERL_MARKS, startup.VERL_STAMP, start))
    assert list(got) == [name for _, name in startup.VERL_MARKS]
    # 18:29:10,207 reward loop manager -> 18:30:35,292 checkpoint engine manager
    assert abs(got[startup.VERL_ROLLOUT] - 85.085) < 1e-6
    assert abs(got["Ray, config, data"] - 15.396) < 1e-6


def test_sglang_0523_server_log_from_the_sglang_image() -> None:
    # the sglang image's first start on an H100 (2026-12-06): SGLang says elapsed=25.93 s for
    # the prefill capture; whole-second stamps give 26
    log = GPU / "2026-12-06-h100-sglang-image" / "sglang-pypi" / "sglang_serve-0-cold.server.log"
    with log.open(errors="replace") as lines:
        parts = startup.phases(lines, startup.SGLANG_MARKS, startup.SGLANG_STAMP, at("2026-12-06 00:52:26"))
    got = by_name(parts)
    names = list(got)
    assert names.index("prefill CUDA graphs (torch.compile, JIT)") < names.index("decode CUDA graphs")
    assert got["process start, imports, distributed init"] == 16.0
    assert got["prefill CUDA graphs (torch.compile, JIT)"] == 26.0
    assert got["warm-up request"] == 8.0
    assert sum(got.values()) == at("2026-12-06 00:53:20") - at("2026-12-06 00:52:26")
