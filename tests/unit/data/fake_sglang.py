"""A stand-in for an SGLang server and for `sglang.bench_serving`, to test the SGLang smoke
test's harness on a CPU (tests/unit/test_smoke_sglang.py). Standard library only.

    fake_sglang.py serve --port P [--mode ok|never|crash|differ] [--ready-after S] [--pid-file F] [--ignore-term]
                         [--transport cuda_ipc/cuda] [--requests-file F] [SGLang's PD flags, recorded]
    fake_sglang.py bench --base-url URL --output-file F --num-prompts N [--output-len N] [--mode ok|fail|hang|short]
    fake_sglang.py router --port P --prefill URL [BOOTSTRAP_PORT] --decode URL

`serve` answers /health with 503 until --ready-after seconds have passed (then 200; never
with --mode never; --mode crash exits 3 at that time instead), and /generate, /v1/models,
/v1/chat/completions and /model_info in SGLang's shapes. It starts a grandchild (`sleep`)
in its own process group and writes both PIDs to --pid-file, so a test can check that the
whole group was stopped. `bench` sends /generate requests and appends one JSON line with
bench_serving's result keys to --output-file.

For prefill/decode disaggregation (the sglang_pd harness, and the real router in PD mode):
`serve` accepts SGLang's --disaggregation-* and --base-gpu-id/--nccl-port flags, answers
/generate with a text made from the prompt (--mode differ: another one on the decode side), appends every
/generate body (with the bootstrap fields the router adds) to --requests-file, and prints a
line as UCX_PROTO_INFO would for --transport. `router` stands in for the PD router: /health
when both servers are healthy, /generate sent to both, the decode server's answer returned.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def serve(args: argparse.Namespace) -> int:
    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    grandchild = subprocess.Popen(["sleep", "1000"])  # same process group as this server
    # Listening before the pid file says we are up: a test that reads it may connect at once.
    server = ThreadingHTTPServer(("127.0.0.1", args.port), BaseHTTPRequestHandler)  # Handler is set below
    if args.pid_file:
        with open(args.pid_file + ".tmp", "w") as out:
            json.dump({"server": os.getpid(), "grandchild": grandchild.pid}, out)
        os.replace(args.pid_file + ".tmp", args.pid_file)
    started = time.monotonic()
    print(f"fake sglang: serving {args.model} on port {args.port}, mode {args.mode}, {args.disaggregation_mode or 'plain'}", flush=True)
    if args.transport:  # the KV write's table and a notification's, in UCX_PROTO_INFO's layout
        prefix = f"[1764500000.000000] [fake:{os.getpid()}:0]  "
        for title, chosen in (
            ("remote memory write by ucp_put* from cuda memory to cuda", args.transport),
            ("active message by ucp_am_send* from host memory", "tcp/lo"),
        ):
            rows = ["+--------+-------------+----+", "| fake intra-node cfg#1 |", f"| {title} |", "+--------+-------------+----+"]
            rows += [
                "| Range  | Description | Config |",
                "+--------+-------------+----+",
                f"| 0..inf | zero-copy | {chosen} |",
                "+--------+-------------+----+",
            ]
            print("\n".join(f"{prefix} {row}" for row in rows), flush=True)

    def ready() -> bool:
        return args.mode in ("ok", "differ") and time.monotonic() - started >= args.ready_after

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a: object) -> None:  # quiet
            pass

        def reply(self, code: int, body: object = None) -> None:
            data = b"" if body is None else json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path in ("/health", "/health_generate"):
                self.reply(200 if ready() else 503)
            elif self.path == "/v1/models":
                self.reply(200, {"object": "list", "data": [{"id": args.model, "object": "model"}]})
            elif self.path == "/model_info":
                self.reply(200, {"model_path": args.model, "tokenizer_path": args.model, "is_generation": True})
            else:
                self.reply(404, {"error": self.path})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            if not ready():
                self.reply(503)
            elif self.path == "/generate":
                if args.requests_file:
                    with open(args.requests_file, "a") as out:
                        out.write(json.dumps({"port": args.port, "mode": args.disaggregation_mode, "body": body}) + "\n")
                n = body.get("sampling_params", {}).get("max_new_tokens", 16)
                time.sleep(0.005)
                differ = args.mode == "differ" and args.disaggregation_mode == "decode"
                word = " z" if differ else f" {len(str(body.get('text', '')))}"
                self.reply(200, {"text": word * n, "meta_info": {"prompt_tokens": 7, "completion_tokens": n, "finish_reason": {"type": "length", "length": n}}})
            elif self.path == "/v1/chat/completions":
                n = body.get("max_tokens", 16)
                message = {"role": "assistant", "content": " y" * n}
                usage = {"prompt_tokens": 12, "completion_tokens": n, "total_tokens": 12 + n}
                self.reply(
                    200,
                    {
                        "id": "1",
                        "object": "chat.completion",
                        "model": body.get("model"),
                        "choices": [{"index": 0, "message": message, "finish_reason": "length"}],
                        "usage": usage,
                    },
                )
            else:
                self.reply(404, {"error": self.path})

    server.RequestHandlerClass = Handler
    threading.Thread(target=server.serve_forever, daemon=True).start()
    while True:
        time.sleep(0.1)
        if args.mode == "crash" and time.monotonic() - started >= args.ready_after:
            print("fake sglang: fake crash: CUDA out of memory", flush=True)
            return 3


def bench(args: argparse.Namespace) -> int:
    if args.mode == "fail":
        print("fake bench: cannot reach the server", flush=True)
        return 2
    if args.mode == "hang":
        print("fake bench: hanging", flush=True)
        time.sleep(1000)
    start = time.monotonic()
    latencies = []
    completed = args.num_prompts - (1 if args.mode == "short" else 0)
    output_lens = []
    for i in range(completed):
        t0 = time.monotonic()
        req = urllib.request.Request(
            args.base_url + "/generate",
            data=json.dumps({"text": "hi", "sampling_params": {"max_new_tokens": args.output_len}}).encode(),
            headers={"Content-Type": "application/json"},
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(req, timeout=10) as resp:
            answer = json.loads(resp.read())
        # --mode early: the last request stops one token short (as if EOS had not been ignored)
        stopped_early = args.mode == "early" and i == completed - 1
        output_lens.append(answer["meta_info"]["completion_tokens"] - (1 if stopped_early else 0))
        latencies.append((time.monotonic() - t0) * 1000)
    duration = time.monotonic() - start
    result = {
        "backend": "sglang", "dataset_name": "random-ids", "duration": duration, "completed": completed,
        "total_input_tokens": completed * 8, "total_output_tokens": sum(output_lens), "output_lens": output_lens,
        "request_throughput": completed / duration, "input_throughput": completed * 8 / duration,
        "output_throughput": completed * args.output_len / duration,
        "total_throughput": completed * (8 + args.output_len) / duration,
        "mean_ttft_ms": statistics.mean(latencies), "median_ttft_ms": statistics.median(latencies),
        "p99_ttft_ms": max(latencies), "mean_tpot_ms": 0.1, "median_tpot_ms": 0.1, "mean_itl_ms": 0.1,
        "mean_e2e_latency_ms": statistics.mean(latencies),
    }  # fmt: skip
    with open(args.output_file, "a") as out:
        out.write(json.dumps(result) + "\n")
    print(f"fake bench: {completed} requests in {duration:.2f} s", flush=True)
    return 0


def router(args: argparse.Namespace) -> int:
    prefill, decode = args.prefill[0], args.decode
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def call(url: str, body: object = None) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        try:
            with opener.open(urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}), timeout=30) as resp:
                return resp.status, resp.read()
        except Exception:
            return 503, b""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a: object) -> None:
            pass

        def reply(self, code: int, data: bytes = b"") -> None:
            self.send_response(code)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            ok = self.path == "/health" and all(call(u + "/health")[0] == 200 for u in (prefill, decode))
            self.reply(200 if ok else 503)

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            call(prefill + self.path, body)
            code, data = call(decode + self.path, body)
            self.reply(code, data)

    print(f"fake router: prefill {prefill}, decode {decode}", flush=True)
    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--model", default="fake-model")
    s.add_argument("--mode", choices=["ok", "never", "crash", "differ"], default="ok")
    s.add_argument("--ready-after", type=float, default=1.0)
    s.add_argument("--pid-file")
    s.add_argument("--ignore-term", action="store_true")
    s.add_argument("--transport", default="")
    s.add_argument("--requests-file", default="")
    for flag in ("--disaggregation-mode", "--disaggregation-transfer-backend", "--disaggregation-bootstrap-port", "--base-gpu-id", "--nccl-port"):
        s.add_argument(flag, default="")
    b = sub.add_parser("bench")
    b.add_argument("--base-url", required=True)
    b.add_argument("--output-file", required=True)
    b.add_argument("--num-prompts", type=int, default=4)
    b.add_argument("--output-len", type=int, default=4)
    b.add_argument("--mode", choices=["ok", "fail", "hang", "short", "early"], default="ok")
    r = sub.add_parser("router")
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--prefill", nargs="+", required=True)
    r.add_argument("--decode", required=True)
    args = parser.parse_args()
    return {"serve": serve, "bench": bench, "router": router}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
