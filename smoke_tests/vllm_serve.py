"""vLLM serving smoke test (the openrlhf topic's rollout engine): start vLLM's OpenAI server
on a tiny random model, wait for /health, check /v1/completions and /v1/chat/completions,
run ``vllm bench serve`` with exact token counts, and stop the server whatever happens.

    python -m smoke_tests.vllm_serve [--json vllm.json] [--model ORG/NAME|PATH]
    python -m smoke_tests.vllm_serve --cpu    # writes the tiny model, checks the flags; skipped

The harness is ``sglang_serve``'s (the same model, health polling, chat check, load judged
the same way): every request of the load must complete with exactly ``--output-len`` tokens
(``--ignore-eos``), and the figures are vLLM's own (``--save-result --save-detailed``).
Without a GPU the tiny model is written and loaded on the CPU and the server's and the
load's flags are checked against their ``--help``; vLLM's CUDA build serves nothing there.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from smoke_tests import sglang_serve as harness
from smoke_tests._result import Fail, Report, SmokeTest, gpu_unavailable, run_command, run_test, test_parser, too_few_gpus, work_folder

TEST = "vllm_serve"
# `vllm serve` (vllm.entrypoints.openai.api_server is deprecated in 0.29).
SERVER_CMD = (
    "{python} -m vllm.entrypoints.cli.main serve {model} --host {host} --port {port} "
    "--tensor-parallel-size {tp} --gpu-memory-utilization {mem_fraction} --seed 0 --max-model-len 4096"
)
#: The server's options, read from vLLM's own dataclasses: building its parser needs a
#: device (on a CPU it raises "Failed to infer device type"), reading the fields does not.
SERVER_OPTIONS_SCRIPT = """
import dataclasses, json
from vllm.engine.arg_utils import AsyncEngineArgs
names = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
from vllm.entrypoints.launchers import cli_args
for value in vars(cli_args).values():
    if dataclasses.is_dataclass(value) and isinstance(value, type):
        names |= {f.name for f in dataclasses.fields(value)}
print(json.dumps(sorted("--" + n.replace("_", "-") for n in names)))
"""
BENCH_CMD = (
    "{python} -m vllm.entrypoints.cli.main bench serve --backend vllm --base-url {base_url} --model {model} "
    "--tokenizer {tokenizer} --dataset-name random --num-prompts {num_prompts} --random-input-len {input_len} "
    "--random-output-len {output_len} --random-range-ratio 0 --ignore-eos --request-rate inf "
    "--max-concurrency {concurrency} --seed 0 --disable-tqdm --save-result --save-detailed "
    "--result-dir {result_dir} --result-filename {result_name}"
)


def flags(template: str) -> list[str]:
    return [w for w in template.split() if w.startswith("--")]


def unknown_flags(help_text: str, wanted: Iterable[str]) -> list[str]:
    listed = set(re.findall(r"--[\w\-]+", help_text))
    return [f for f in wanted if f not in listed]


def key_figure(figures: Mapping[str, Any]) -> str:
    bench = figures.get("bench") or {}
    if bench.get("output_throughput"):
        return f"{bench['output_throughput']:.0f} tok/s out, TTFT median {bench.get('median_ttft_ms', float('nan')):.1f} ms"
    if figures.get("flags_checked"):
        return f"tiny model loads, {figures['flags_checked']} server/bench flags checked"
    return "-"


SMOKE = SmokeTest(TEST, timeout=900, key_figure=key_figure)


def check_completion(base_url: str, model: str, max_tokens: int) -> dict[str, Any]:
    """/v1/completions: text back and exactly ``max_tokens`` tokens (EOS ignored)."""
    start = time.monotonic()
    body = {"model": model, "prompt": harness.PROMPT, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}
    answer = harness.request(base_url + "/v1/completions", body)
    if answer.status != 200:
        raise Fail(f"/v1/completions answered {answer.describe()}: {answer.body[:200]!r}")
    data = answer.json() or {}
    choices = data.get("choices") or []
    if not choices or not isinstance(choices[0].get("text"), str):
        raise Fail(f"/v1/completions returned no text: {str(data)[:200]}")
    tokens = (data.get("usage") or {}).get("completion_tokens")
    if tokens != max_tokens:
        raise Fail(f"/v1/completions made {tokens} tokens, {max_tokens} asked for (EOS ignored)")
    return {"completion_tokens": tokens, "seconds": time.monotonic() - start, "text": choices[0]["text"][:80]}


def check_flags(python: str) -> int:
    """The server's and the load's flags against what this vLLM takes: a renamed flag fails
    on CPU. The load's from `vllm bench serve --help=all`, the server's from its dataclasses."""
    checks = (
        (SERVER_CMD, [python, "-c", SERVER_OPTIONS_SCRIPT], "vllm serve"),
        (BENCH_CMD, [python, "-m", "vllm.entrypoints.cli.main", "bench", "serve", "--help=all"], "vllm bench serve"),
    )
    checked = 0
    for template, cmd, what in checks:
        run = run_command(cmd, timeout=300, echo=False)
        if run.returncode != 0:
            raise Fail(f"reading {what}'s options exited {run.returncode}: {run.output.strip().splitlines()[-1:]}")
        unknown = unknown_flags(run.output, flags(template))
        if unknown:
            raise Fail(f"{what} does not take {', '.join(unknown)}")
        checked += len(flags(template))
    return checked


def body_for(args: argparse.Namespace) -> Any:
    def body(report: Report) -> None:
        from importlib.metadata import version

        report.environment["vllm"] = version("vllm")
        with work_folder(args.workdir, "smoke-vllm-") as workdir:
            model, tokenizer = harness.prepare_model(args, workdir, report)
            report.figures["flags_checked"] = check_flags(sys.executable)
            if args.cpu or harness.gpu_count() == 0:
                if not args.model:
                    harness.check_tiny_model(model, report)
                what = "vLLM's CUDA build needs a GPU to serve (the tiny model loads on the CPU, the flags check out)"
                raise gpu_unavailable(args, what)
            if harness.gpu_count() < args.tp:
                raise too_few_gpus("--tp", args.tp, harness.gpu_count())
            serve(args, report, workdir, model, tokenizer)

    return body


def serve(args: argparse.Namespace, report: Report, workdir: Path, model: str, tokenizer: str) -> None:
    port = args.port or harness.free_port()
    base_url = f"http://{harness.HOST}:{port}"
    values = {"python": sys.executable, "model": model, "host": harness.HOST, "port": port, "tp": args.tp, "mem_fraction": args.mem_fraction}
    cmd = harness.command_words(SERVER_CMD, values) + list(args.server_arg)
    report.figures["server_command"] = shlex.join(cmd)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    env.setdefault("HF_HUB_OFFLINE", "1")
    rows: list[list[str]] = []
    report.table_headers, report.table_rows = ["check", "result", "figure"], rows
    with harness.server_process(cmd, workdir / "server.log", env, report, args.stop_grace) as (server, start):
        ready = harness.wait_healthy(base_url, args.startup_timeout, server.poll)
        report.figures["ready_seconds"] = ready
        rows.append(["/health", "200", f"ready after {ready:.1f} s"])
        report.verdict("/health", True, f"200 after {ready:.1f} s", "200 within --startup-timeout")
        name = harness.served_model(base_url)
        completion = check_completion(base_url, name, args.check_tokens)
        report.figures["completion"] = completion
        rows.append(["/v1/completions", "ok", f"{completion['completion_tokens']} tokens in {completion['seconds'] * 1000:.0f} ms"])
        chat = harness.check_chat(base_url, name, args.check_tokens)
        report.figures["chat"] = {**chat, "model": name}
        rows.append(["/v1/chat/completions", "ok", f"{chat['completion_tokens']} tokens, prompt {chat['prompt_tokens']}"])

        result = workdir / "bench.json"
        bench_values = {
            "python": sys.executable, "base_url": base_url, "model": name, "tokenizer": tokenizer,
            "num_prompts": args.num_prompts, "input_len": args.input_len, "output_len": args.output_len,
            "concurrency": args.concurrency, "result_dir": str(workdir), "result_name": result.name,
        }  # fmt: skip
        bench_cmd = harness.command_words(BENCH_CMD, bench_values)
        report.figures["bench_command"] = shlex.join(bench_cmd)
        left = args.timeout - (time.monotonic() - start) - 30
        run = run_command(bench_cmd, timeout=max(10.0, min(args.bench_timeout, left)), env=env, cwd=str(workdir))
        if run.timed_out or run.returncode != 0:
            last = [line for line in run.output.splitlines() if line.strip()][-1:] or ["no output"]
            raise Fail(f"vllm bench serve {'ran past its time' if run.timed_out else f'exited {run.returncode}'}: {last[0][:300]}")
        try:
            data = json.loads(result.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise Fail(f"vllm bench serve wrote no readable result: {exc}") from None
        figures, verdict = harness.judge_bench(data, args.num_prompts, args.output_len)
        sizes = {"num_prompts": args.num_prompts, "input_len": args.input_len, "output_len": args.output_len, "concurrency": args.concurrency}
        report.figures["bench"] = {**figures, **sizes}
        harness.judge_load(report, "vllm bench serve", figures, verdict, args.num_prompts, "every request complete")


def main(argv: Iterable[str] | None = None) -> int:
    parser = test_parser(__doc__, timeout=SMOKE.timeout)
    parser.add_argument("--model", help="Hugging Face model id (from the mounted cache) or folder; default: a tiny random model")
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--port", type=int)
    parser.add_argument("--mem-fraction", type=float, default=0.4, help="--gpu-memory-utilization for the server")
    parser.add_argument("--startup-timeout", type=float, help="seconds for /health to answer 200 (default: 600, within --timeout)")
    harness.add_load_args(parser, input_len=128)
    parser.add_argument("--check-tokens", type=int, default=8)
    parser.add_argument("--workdir", help="keep the model, server log and bench output here")
    parser.add_argument("--server-arg", action="append", default=[], metavar="ARG", help="extra server argument (repeatable)")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    harness.check_load_args(parser, args, startup_share=0.8)
    return run_test(TEST, body_for(args), json_path=args.json, timeout=args.timeout)


if __name__ == "__main__":
    sys.exit(main())
