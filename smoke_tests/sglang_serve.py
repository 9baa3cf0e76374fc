"""SGLang serving smoke test: start a server, wait for /health, check /generate and the
OpenAI-compatible /v1/chat/completions, run a short ``sglang.bench_serving`` load and
report throughput and time to first token. The server is always stopped (its whole
process group), also on failure, at the time limit, on Ctrl-C and on SIGTERM.

    python -m smoke_tests.sglang_serve [--json sglang.json] [--model ORG/NAME|PATH] [--tp 1]
    python -m smoke_tests.sglang_serve --cpu     # writes the tiny model, checks it; skipped

Without ``--model`` the server loads a tiny random-weight Qwen2 (``smoke_tests.tiny_model``,
``serve`` preset: head_dim 64) written here with its tokenizer and chat template, so no
hub access is needed; ``--model`` names a model in the mounted Hugging Face cache (the hub
is not asked: HF_HUB_OFFLINE=1 unless set) or a local folder. The answers of a
random-weight model are gibberish: the test checks that every endpoint answers in the
right shape with the number of tokens asked for, not what the text says.

The load is ``python -m sglang.bench_serving --backend sglang --dataset-name random-ids``
(token ids drawn from the vocabulary, so nothing is downloaded), ``--num-prompts`` requests
of exactly ``--input-len`` / ``--output-len`` tokens (``--random-range-ratio 1``), at most
``--concurrency`` in flight; its ``--output-file`` JSON line gives the figures.

Without a GPU (or with ``--cpu``) the test writes and loads the tiny model, then reports
skipped, never passed. ``--server-cmd`` and ``--bench-cmd`` replace the SGLang commands
(words with ``{python} {model} {host} {port}``, and ``{python} {base_url} {model}
{tokenizer} {output} {num_prompts} {input_len} {output_len} {concurrency}``): the kit's
CPU tests run this harness against a fake server that way; a result then records
``"server": "custom"``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shlex
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smoke_tests import _startup as startup
from smoke_tests import tiny_model
from smoke_tests._result import (
    Fail,
    Report,
    SmokeTest,
    fmt,
    gpu_unavailable,
    run_command,
    run_test,
    start_child,
    stop_child,
    tail_text,
    test_parser,
    too_few_gpus,
    work_folder,
)

TEST = "sglang_serve"
HOST = "127.0.0.1"
PROMPT = "What is 12 + 30?"

SERVER_CMD = (
    "{python} -m sglang.launch_server --model-path {model} --host {host} --port {port} --tp-size {tp} --mem-fraction-static {mem_fraction} --random-seed 0"
)
# `sglang.bench_serving` is the documented entry point; in 0.5.23 it forwards to
# sglang.benchmark.serving (with a FutureWarning). Flags as defined in its cli_main().
BENCH_CMD = (
    "{python} -m sglang.bench_serving --backend sglang --base-url {base_url} --model {model} "
    "--tokenizer {tokenizer} --dataset-name random-ids --num-prompts {num_prompts} "
    "--random-input-len {input_len} --random-output-len {output_len} --random-range-ratio 1.0 "
    "--request-rate inf --max-concurrency {concurrency} --warmup-requests 1 --seed 0 "
    "--ready-check-timeout-sec 60 --disable-tqdm --output-file {output} --output-details"
)
#: Each flag of BENCH_CMD; the integration tests check them against `--help` of the
#: bench_serving installed in the sglang and verl images.
BENCH_FLAGS = tuple(word for word in BENCH_CMD.split() if word.startswith("--"))
#: bench_serving's result keys reported (all of them are in its --output-file line).
BENCH_KEYS = (
    "completed", "duration", "request_throughput", "input_throughput", "output_throughput", "total_throughput",
    "mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "median_tpot_ms", "mean_itl_ms",
    "mean_e2e_latency_ms", "total_input_tokens", "total_output_tokens",
)  # fmt: skip


# ---------------------------------------------------------------------------- pure logic


def command_words(template: str, values: Mapping[str, Any]) -> list[str]:
    """Split a command template like a shell, then fill each word: a value with spaces in
    it (a model path) stays one word."""
    return [word.format(**values) for word in shlex.split(template)]


#: SGLang 0.5.12 derives a gRPC port of --port + 10000 and refuses to start when that passes
#: 65535 (seen on the H200: "SGLANG_GRPC_PORT (69205) must be between 1 and 65535"). The
#: kernel's ephemeral ports reach 60999, so a port it picks fails about one run in five.
MAX_SERVER_PORT = 65535 - 10000
PORT_RANGE = (20000, MAX_SERVER_PORT)


def free_port(host: str = HOST, port_range: tuple[int, int] = PORT_RANGE, rng: random.Random | None = None) -> int:
    """A port nobody listens on, within ``port_range`` (both ends included)."""
    rng = rng or random.Random()
    low, high = port_range
    for _ in range(200):
        port = rng.randint(low, high)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise Fail(f"no free port between {low} and {high} on {host}")


def parse_bench_output(text: str) -> dict[str, Any]:
    """The last JSON line bench_serving appended to its --output-file."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError("bench_serving wrote no result line")
    try:
        data = json.loads(lines[-1])
    except json.JSONDecodeError as exc:
        raise ValueError(f"bench_serving's result line is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("bench_serving's result line is not a JSON object")
    return data


def judge_bench(data: Mapping[str, Any], num_prompts: int, output_len: int) -> tuple[dict[str, Any], str | None]:
    """(the figures kept, why the load failed or None). Every request must have completed
    with exactly ``output_len`` tokens (EOS is ignored): a server that stops early serves
    fewer tokens than the throughput figure claims to measure."""
    figures = {k: data.get(k) for k in BENCH_KEYS if k in data}
    completed = data.get("completed")
    if not isinstance(completed, int):
        return figures, "bench_serving reported no completed count"
    if completed < num_prompts:
        return figures, f"bench_serving completed {completed} of {num_prompts} requests"
    lens = data.get("output_lens")  # per request, with --output-details
    if isinstance(lens, list):
        figures["output_lens"] = {"min": min(lens, default=None), "max": max(lens, default=None), "count": len(lens)}
        off = [n for n in lens if n != output_len]
        if len(lens) != num_prompts or off:
            return figures, (
                f"bench_serving: {len(off)} of {len(lens)} requests returned other than the {output_len} tokens asked for (e.g. {off[0] if off else '-'})"
            )
    total = data.get("total_output_tokens")
    if total != num_prompts * output_len:
        return figures, f"bench_serving returned {total} output tokens in all, {num_prompts} x {output_len} asked for"
    for key in ("output_throughput", "median_ttft_ms"):
        value = data.get(key)
        if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
            return figures, f"bench_serving reported {key} = {value!r}"
    return figures, None


def key_figure(figures: Mapping[str, Any]) -> str:
    """One line for a summary table: output throughput and median TTFT; on the CPU, that
    the tiny model loads."""
    bench = figures.get("bench") or {}
    if bench.get("output_throughput"):
        return f"{bench['output_throughput']:.0f} tok/s out, TTFT median {bench.get('median_ttft_ms', math.nan):.1f} ms"
    if figures.get("cpu_check"):
        return f"tiny model loads, chat prompt {figures['cpu_check'].get('chat_prompt_tokens')} tokens"
    return "-"


SMOKE = SmokeTest(TEST, timeout=900, key_figure=key_figure)


# ---------------------------------------------------------------------------- talking to the server


@dataclass
class Answer:
    status: int | None  # None: no HTTP answer (refused, reset, timed out)
    body: bytes = b""
    error: str = ""

    def describe(self) -> str:
        return f"HTTP {self.status}" if self.status is not None else (self.error or "no answer")

    def json(self) -> Any:
        return json.loads(self.body or b"null")


def request(url: str, body: Mapping[str, Any] | None = None, timeout: float = 60) -> Answer:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    # The server is local: a proxy from the environment must not be asked for it.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as resp:
            return Answer(resp.status, resp.read())
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, exc.read() or b"")
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return Answer(None, error=f"{type(reason).__name__}: {reason}" if not isinstance(reason, str) else reason)


def wait_healthy(base_url: str, deadline_s: float, alive: Any, interval: float = 1.0) -> float:
    """Poll GET /health until it answers 200; seconds it took. SGLang answers 503 while it
    loads. Fails at once when ``alive()`` says the server process is gone, and after
    ``deadline_s`` with the last answer."""
    start = time.monotonic()
    last = Answer(None, error="not polled yet")
    while True:
        code = alive()
        if code is not None:
            raise Fail(f"the server exited with code {code} before /health answered 200 (last: {last.describe()})")
        last = request(base_url + "/health", timeout=5)
        if last.status == 200:
            return time.monotonic() - start
        waited = time.monotonic() - start
        if waited >= deadline_s:
            raise Fail(f"the server was not healthy after {deadline_s:g} s (last /health: {last.describe()})")
        time.sleep(min(interval, max(0.0, deadline_s - waited)))


def check_generate(base_url: str, max_new_tokens: int = 8) -> dict[str, Any]:
    """SGLang's native /generate: text back, exactly ``max_new_tokens`` tokens (EOS ignored)."""
    start = time.monotonic()
    answer = request(
        base_url + "/generate",
        {"text": PROMPT, "sampling_params": {"max_new_tokens": max_new_tokens, "temperature": 0, "ignore_eos": True}},
    )
    seconds = time.monotonic() - start
    if answer.status != 200:
        raise Fail(f"/generate answered {answer.describe()}: {answer.body[:200]!r}")
    data = answer.json()
    text = data.get("text") if isinstance(data, dict) else None
    meta = (data.get("meta_info") or {}) if isinstance(data, dict) else {}
    if not isinstance(text, str):
        raise Fail(f"/generate returned no text: {str(data)[:200]}")
    tokens = meta.get("completion_tokens")
    if tokens != max_new_tokens:
        raise Fail(f"/generate made {tokens} tokens, {max_new_tokens} asked for (EOS ignored)")
    return {"completion_tokens": tokens, "prompt_tokens": meta.get("prompt_tokens"), "seconds": seconds, "text": text[:80]}


def served_model(base_url: str) -> str:
    answer = request(base_url + "/v1/models")
    if answer.status != 200:
        raise Fail(f"/v1/models answered {answer.describe()}")
    models = (answer.json() or {}).get("data") or []
    if not models or not isinstance(models[0].get("id"), str):
        raise Fail(f"/v1/models lists no model: {answer.body[:200]!r}")
    return str(models[0]["id"])


def check_chat(base_url: str, model: str, max_tokens: int = 8) -> dict[str, Any]:
    """The OpenAI-compatible chat endpoint: one assistant message, the usage it reports."""
    start = time.monotonic()
    body = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,  # an SGLang extension of the request: exact length
    }
    answer = request(base_url + "/v1/chat/completions", body)
    seconds = time.monotonic() - start
    if answer.status != 200:
        raise Fail(f"/v1/chat/completions answered {answer.describe()}: {answer.body[:200]!r}")
    data = answer.json() or {}
    choices = data.get("choices") or []
    message = (choices[0].get("message") or {}) if choices else {}
    if message.get("role") != "assistant" or not isinstance(message.get("content"), str):
        raise Fail(f"/v1/chat/completions returned no assistant message: {str(data)[:200]}")
    usage = data.get("usage") or {}
    if usage.get("completion_tokens") != max_tokens:
        raise Fail(f"/v1/chat/completions made {usage.get('completion_tokens')} tokens, {max_tokens} asked for")
    return {
        "completion_tokens": usage.get("completion_tokens"),
        "prompt_tokens": usage.get("prompt_tokens"),
        "finish_reason": choices[0].get("finish_reason"),
        "seconds": seconds,
        "text": message["content"][:80],
    }


# ---------------------------------------------------------------------------- the test


def sglang_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sglang")
    except PackageNotFoundError:
        return None


def gpu_count() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def prepare_model(args: argparse.Namespace, workdir: Path, report: Report) -> tuple[str, str]:
    """(model for the server, tokenizer path or id for the load generator)."""
    if args.model:
        report.figures["model"] = args.model
        return args.model, args.model
    info = tiny_model.build(workdir / "tiny", rows=64, seed=args.seed, cfg=tiny_model.SERVE_CONFIG)
    report.figures["model"] = "tiny"
    report.figures["tiny_model"] = {k: info[k] for k in ("vocab_size", "hidden_size", "layers", "heads", "context", "dtype")}
    return info["model"], info["model"]


def check_tiny_model(model: str, report: Report) -> None:
    """What the server will read, read here on the CPU: config, weights, tokenizer, template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    ids = tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True, tokenize=True, return_dict=True)
    lm = AutoModelForCausalLM.from_pretrained(model)
    with torch.no_grad():
        logits = lm(torch.tensor([ids["input_ids"]])).logits
    if not torch.isfinite(logits).all():
        raise Fail("the tiny model's logits are not finite")
    report.figures["cpu_check"] = {"chat_prompt_tokens": len(ids["input_ids"]), "eos_token": tok.eos_token}


def body_for(args: argparse.Namespace) -> Any:
    def body(report: Report) -> None:
        custom = bool(args.server_cmd)
        report.figures["server"] = "custom" if custom else "sglang"
        gpus = gpu_count()
        with work_folder(args.workdir, "smoke-sglang-") as workdir:
            if not custom:
                installed = sglang_version()
                if installed is None:
                    raise Fail("sglang is not installed in this environment")
                report.environment["sglang"] = installed
            model, tokenizer = prepare_model(args, workdir, report)
            if not custom and (args.cpu or gpus == 0):
                if not args.model:
                    check_tiny_model(model, report)
                done = "the tiny model was written and loaded on the CPU" if not args.model else "nothing was started"
                what = f"an SGLang server needs a GPU ({done})"
                raise gpu_unavailable(args, what)
            if not custom and gpus < args.tp:
                raise too_few_gpus("--tp", args.tp, gpus)
            serve(args, report, workdir, model, tokenizer)

    return body


def serve(args: argparse.Namespace, report: Report, workdir: Path, model: str, tokenizer: str) -> None:
    port = args.port or free_port()
    base_url = f"http://{HOST}:{port}"
    values = {"python": sys.executable, "model": model, "host": HOST, "port": port, "tp": args.tp, "mem_fraction": args.mem_fraction}
    cmd = command_words(args.server_cmd or SERVER_CMD, values) + list(args.server_arg)
    report.figures["server_command"] = shlex.join(cmd)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.setdefault("HF_HUB_OFFLINE", "1")  # the model comes from the mounted cache, not the hub
    rows: list[list[str]] = []
    # Shared, not copied: a failure half-way still prints the checks that passed.
    report.table_headers, report.table_rows = ["check", "result", "figure"], rows
    started_at = time.time()  # wall clock: the server log's stamps are wall-clock times
    with server_process(cmd, workdir / "server.log", env, report, args.stop_grace) as (server, start):
        ready = wait_healthy(base_url, args.startup_timeout, server.poll)
        report.figures["ready_seconds"] = ready
        rows.append(["/health", "200", f"ready after {ready:.1f} s"])
        report.verdict("/health", True, f"200 after {ready:.1f} s", "200 within --startup-timeout")

        generate = check_generate(base_url, args.check_tokens)
        report.figures["generate"] = generate
        rows.append(["/generate", "ok", f"{generate['completion_tokens']} tokens in {generate['seconds'] * 1000:.0f} ms"])
        report.verdict("/generate", True, f"{generate['completion_tokens']} tokens", f"{args.check_tokens} tokens of text")

        name = served_model(base_url)
        chat = check_chat(base_url, name, args.check_tokens)
        report.figures["chat"] = {**chat, "model": name}
        rows.append(["/v1/chat/completions", "ok", f"{chat['completion_tokens']} tokens, prompt {chat['prompt_tokens']}"])
        report.verdict("/v1/chat/completions", True, f"{chat['completion_tokens']} tokens", f"{args.check_tokens} tokens, an assistant message")

        left = args.timeout - (time.monotonic() - start) - 30  # keep time to stop the server and report
        figures, verdict, bench_cmd = run_bench(args, base_url, model, tokenizer, workdir / "bench.jsonl", env, left)
        report.figures["bench_command"] = shlex.join(bench_cmd)
        report.figures["bench"] = figures
        report.figures["bench"].update(num_prompts=args.num_prompts, input_len=args.input_len, output_len=args.output_len, concurrency=args.concurrency)
        judge_load(report, "bench_serving", figures, verdict, args.num_prompts, f"every request with {args.output_len} tokens")
    # where the start-up went (weights, KV cache, graph capture and its JIT, warm-up), from the
    # server's own log, complete now that it stopped
    with open(workdir / "server.log", errors="replace") as log:
        parts = startup.phases(log, startup.SGLANG_MARKS, startup.SGLANG_STAMP, started_at)
    report.figures["startup"] = parts
    if parts:
        report.notes.append(f"start-up ({ready:.1f} s to healthy), longest phases: {startup.summary(parts)}")


@contextmanager
def server_process(cmd: list[str], log_path: Path, env: Mapping[str, str], report: Report, grace: float) -> Iterator[tuple[subprocess.Popen[str], float]]:
    """The server (this test's, vllm_serve's) as a child writing `log_path`: (the process, its
    start). Stopped however the test ends, its exit code and lifetime in the figures; a
    failure adds the log's last lines to the report."""
    print("+", shlex.join(cmd), f"> {log_path}", flush=True)
    start = time.monotonic()
    server = start_child(cmd, log_path=log_path, env=env)
    try:
        yield server, start
    except Fail:
        tail = tail_text(log_path, 15)
        if tail:
            report.notes.append(f"server log ({log_path}), last lines:\n{tail}")
        raise
    finally:
        report.figures["server_exit"] = stop_child(server, grace=grace)
        report.figures["server_seconds"] = time.monotonic() - start


def judge_load(report: Report, what: str, figures: Mapping[str, Any], verdict: str | None, num_prompts: int, expected: str) -> None:
    """A load's row in the test's table and its verdict (`judge_bench`'s); Fail when it failed."""
    report.table_rows.append([
        what, "ok" if verdict is None else "FAILED",
        f"{figures.get('completed')}/{num_prompts} req, {fmt(figures.get('output_throughput'), 1)} tok/s out, "
        f"TTFT median {fmt(figures.get('median_ttft_ms'), 1)} ms",
    ])  # fmt: skip
    report.verdict(what, verdict is None, f"{figures.get('completed')}/{num_prompts} requests", expected, verdict or "")
    if verdict:
        raise Fail(verdict)


def run_bench(
    args: argparse.Namespace, base_url: str, model: str, tokenizer: str, output: Path, env: Mapping[str, str], left: float
) -> tuple[dict[str, Any], str | None, list[str]]:
    """One ``bench_serving`` load against ``base_url`` (``args``: its sizes, ``--bench-cmd``,
    ``--bench-timeout``; ``left``: seconds the test may still spend): (figures, verdict, the
    command). A load that did not run to its end raises Fail; a verdict says what it got wrong."""
    values = {
        "python": sys.executable, "base_url": base_url, "model": model, "tokenizer": tokenizer, "output": str(output),
        "num_prompts": args.num_prompts, "input_len": args.input_len, "output_len": args.output_len, "concurrency": args.concurrency,
    }  # fmt: skip
    cmd = command_words(args.bench_cmd or BENCH_CMD, values)
    print("+", shlex.join(cmd), flush=True)
    run = run_command(cmd, timeout=max(10.0, min(args.bench_timeout, left)), env=dict(env), cwd=str(output.parent))
    if run.timed_out:
        raise Fail(f"bench_serving ran past {run.seconds:.0f} s and was killed")
    if run.returncode != 0:
        last = [line for line in run.output.splitlines() if line.strip()][-1:] or ["no output"]
        raise Fail(f"bench_serving exited with {run.returncode}: {last[0][:300]}")
    try:
        data = parse_bench_output(output.read_text() if output.exists() else "")
    except ValueError as exc:
        raise Fail(str(exc)) from None
    figures, verdict = judge_bench(data, args.num_prompts, args.output_len)
    return figures, verdict, cmd


def add_load_args(parser: argparse.ArgumentParser, *, input_len: int, servers: str = "the server") -> None:
    """The options of the load a serving test puts on its servers (this test, sglang_pd, vllm_serve)."""
    parser.add_argument("--bench-timeout", type=float, default=300, help="seconds for each load")
    parser.add_argument("--stop-grace", type=float, default=15, help=f"seconds between SIGTERM and SIGKILL when stopping {servers}")
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--input-len", type=int, default=input_len)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)


def check_load_args(parser: argparse.ArgumentParser, args: argparse.Namespace, *, startup_share: float) -> None:
    """--startup-timeout (default: this share of --timeout, at most 600 s; always shorter than
    --timeout) and, for the tiny model, a load that fits its context."""
    if args.startup_timeout is None:
        args.startup_timeout = min(600.0, startup_share * args.timeout)
    elif args.startup_timeout >= args.timeout:
        parser.error("--startup-timeout must be shorter than --timeout")
    context = tiny_model.SERVE_CONFIG.max_position_embeddings
    if args.input_len + args.output_len > context and not args.model:
        parser.error(f"the tiny model holds {context} positions: --input-len + --output-len must fit")


def build_parser() -> argparse.ArgumentParser:
    parser = test_parser(__doc__, timeout=SMOKE.timeout)
    parser.add_argument("--model", help="Hugging Face model id (from the mounted cache) or folder; default: a tiny random model")
    parser.add_argument("--tp", type=int, default=1, help="tensor parallel size (GPUs)")
    parser.add_argument("--port", type=int, help="server port (default: a free one)")
    parser.add_argument("--mem-fraction", type=float, default=0.5, help="--mem-fraction-static for the server")
    parser.add_argument("--startup-timeout", type=float, help="seconds for /health to answer 200 (default: 600, within --timeout)")
    add_load_args(parser, input_len=128)
    parser.add_argument("--check-tokens", type=int, default=8, help="tokens asked of /generate and the chat endpoint")
    parser.add_argument("--workdir", help="keep the model, server log and bench output here (default: a temp dir, removed)")
    parser.add_argument("--server-arg", action="append", default=[], metavar="ARG", help="extra launch_server argument (repeatable)")
    parser.add_argument("--server-cmd", help="replace the server command (tests); see the module doc")
    parser.add_argument("--bench-cmd", help="replace the bench_serving command (tests); see the module doc")
    return parser


def main(argv: Iterable[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    check_load_args(parser, args, startup_share=0.8)
    if args.port is not None and not 1 <= args.port <= MAX_SERVER_PORT:
        parser.error(f"--port {args.port}: SGLang takes ports up to {MAX_SERVER_PORT} (it adds 10000 for its gRPC port)")
    return run_test(TEST, body_for(args), json_path=args.json, timeout=args.timeout)


if __name__ == "__main__":
    sys.exit(main())
