"""Prefill/decode disaggregation smoke test: the same greedy prompts through a plain SGLang
server and through a prefill server + decode server behind the SGLang router in PD mode
must give the same text; the transport that carried the KV is named from the transfer
backend's own log; a short ``bench_serving`` load runs through both, side by side.

    python -m smoke_tests.sglang_pd [--json pd.json] [--model ORG/NAME|PATH] [--transfer-backend nixl]
                                    [--expect-transport cuda_ipc|rdma|tcp]

Two GPUs at least: the plain server and the prefill server on the first, the decode server
on the second (``--base-gpu-id``; every process sees both GPUs, which CUDA IPC between them
needs). The plain server runs first and is stopped before the pair starts. Both pair
servers get ``UCX_PROTO_INFO=y``, so UCX (under NIXL) prints a table of the protocol it chose
for each kind of transfer; the prefill side writes the KV into the decode side's GPU memory, and
the test reads the transports of those remote writes (``cuda_ipc/cuda``, ``tcp/eth0``,
``rc_mlx5/mlx5_0:1``...) from the prefill server's log. With ``--expect-transport`` it fails
when the KV did not move over that kind of link (``cuda_ipc``: GPU to GPU within the host; ``rdma``: InfiniBand/RoCE;
``tcp``: sockets); by default (the ``kv_link`` gate, ``named``) a pair whose log names no
transport fails: a KV link nobody can name is not a pass. Without a GPU (or with ``--cpu``) the test writes and checks the tiny model,
then reports skipped (failed with ``--require-gpu``), never passed.

``--server-cmd``, ``--router-cmd`` and ``--bench-cmd`` replace the SGLang commands (words with
``{python} {model} {host} {port}``; ``{python} {host} {port} {prefill_url} {bootstrap_port}
{decode_url}``; as in sglang_serve): the kit's CPU tests run the harness against stand-ins,
and the real router against stand-in servers, that way. A result then records
``"server": "custom"``.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from smoke_tests import sglang_serve
from smoke_tests._gates import Gate, add_gate_args, from_args, judge_switch
from smoke_tests._result import (
    Fail,
    Report,
    Skip,
    SmokeTest,
    fmt,
    gpu_unavailable,
    run_test,
    start_child,
    stop_child,
    tail_text,
    test_parser,
    work_folder,
)
from smoke_tests.sglang_serve import HOST, command_words, free_port, request, wait_healthy

TEST = "sglang_pd"
#: The transfer backends this test knows how to read; the sglang topic locks NIXL.
BACKENDS = ("nixl", "mooncake")
#: Greedy prompts of different lengths (the tiny model's tokenizer is byte-level).
PROMPTS = (
    "What is 12 + 30?",
    "Prefill reads the whole prompt at once; decode writes one token at a time.",
    "The KV cache of a long prompt is moved from the prefill GPU to the decode GPU. " * 4,
    "a",
)

#: Known defects of a transfer backend in installed SGLang releases, found by the code the
#: installed module holds (not by version number: a fixed or patched install passes):
#: backend -> (module file in the sglang distribution, lines any one of which is the defect, why).
KNOWN_DEFECTS = {
    "nixl": (
        "sglang/srt/disaggregation/nixl/conn.py",
        (
            "if kv_chunk.is_last and kv_chunk.state_indices:",  # the sender: aux only with extra state
            "if state_indices is not None:\n            self.kv_mgr.transfer_statuses[self.bootstrap_room].expects_state = True",  # the receiver
        ),
        "its NIXL backend hangs every request of a dense model (no Mamba/SWA/NSA state): the prefill side never sends the aux data "
        "and the decode side waits for state that never comes (sgl-project/sglang#25698, fixed by #25699); "
        "use a release with the fix, such as the sglang topic's",
    ),
}


def known_defect(backend: str, source: str | None) -> str | None:
    """Why the installed SGLang cannot run the pair over ``backend``, given the source of the
    module KNOWN_DEFECTS names (None when it is not installed), or None."""
    entry = KNOWN_DEFECTS.get(backend)
    if entry is None or source is None:
        return None
    _, lines, why = entry
    return why if any(line in source for line in lines) else None


def installed_source(backend: str) -> str | None:
    """The installed sglang's source of the module KNOWN_DEFECTS names for ``backend``, read
    without importing it (None when there is none)."""
    from importlib.metadata import PackageNotFoundError, distribution

    entry = KNOWN_DEFECTS.get(backend)
    if entry is None:
        return None
    try:
        path = Path(str(distribution("sglang").locate_file(entry[0])))
        return path.read_text()
    except (PackageNotFoundError, OSError):
        return None


SERVER_CMD = (
    "{python} -m sglang.launch_server --model-path {model} --host {host} --port {port} --tp-size 1 --mem-fraction-static {mem_fraction} --random-seed 0"
)
ROUTER_CMD = (
    "{python} -m sglang_router.launch_router --host {host} --port {port} --pd-disaggregation --prefill {prefill_url} {bootstrap_port} --decode {decode_url}"
)
#: The flags each server of the pair gets on top of SERVER_CMD; the integration tests check
#: every one against `launch_server --help` of the image's SGLang.
PD_FLAGS = ("--disaggregation-mode", "--disaggregation-transfer-backend", "--disaggregation-bootstrap-port", "--base-gpu-id", "--nccl-port")


def pair_args(role: str, backend: str, gpu: int, bootstrap_port: int, nccl_port: int) -> list[str]:
    """The launch_server arguments that make a server one half of the pair."""
    args = ["--disaggregation-mode", role, "--disaggregation-transfer-backend", backend, "--base-gpu-id", str(gpu), "--nccl-port", str(nccl_port)]
    if role == "prefill":
        args += ["--disaggregation-bootstrap-port", str(bootstrap_port)]
    return args


# ---------------------------------------------------------------------------- transports

#: A UCX transport/device pair as UCX_PROTO_INFO prints it ("cuda_ipc/cuda", "tcp/eth0",
#: "rc_mlx5/mlx5_0:1"), or a mooncake engine line naming its protocol.
_UCX_TRANSPORT = re.compile(r"(?<![\w/.-])(cuda_ipc|cuda_copy|gdr_copy|rc_mlx5|rc_verbs|dc_mlx5|ud_mlx5|ud_verbs|tcp|sysv|posix|cma|xpmem)/[\w.:-]+")
_MOONCAKE_PROTOCOL = re.compile(r"\b[Pp]rotocol[:= ]+\"?(rdma|tcp|nvlink)\b")
#: One row of a UCX_PROTO_INFO table: "[time] [host:pid:thread]   | cell | cell |".
_UCX_TABLE_ROW = re.compile(r"^\[[\d.]+\]\s+\[([^\]]+)\]\s+\|(.*)\|\s*$")
#: What each transport is, for --expect-transport.
KIND = {
    "cuda_ipc": "cuda_ipc", "nvlink": "cuda_ipc",
    "rc_mlx5": "rdma", "rc_verbs": "rdma", "dc_mlx5": "rdma", "ud_mlx5": "rdma", "ud_verbs": "rdma", "rdma": "rdma", "gdr_copy": "rdma",
    "tcp": "tcp",
    "sysv": "host memory", "posix": "host memory", "cma": "host memory", "xpmem": "host memory", "cuda_copy": "host memory",
}  # fmt: skip
EXPECT = ("cuda_ipc", "rdma", "tcp")


def ucx_protocols(text: str) -> list[tuple[str, set[str]]]:
    """Each protocol table UCX_PROTO_INFO=y printed: its title ("a intra-node cfg#1 / remote
    memory write by ucp_put* from cuda memory to cuda") and the transports its rows chose.
    A table is a border, one-cell title rows, a header row ("Range | Description | Config")
    and one row per message-size range; lines of different processes/threads may interleave."""
    tables: list[tuple[list[str], set[str]]] = []
    open_tables: dict[str, tuple[list[str], set[str], list[bool]]] = {}  # per [host:pid:thread]
    for line in text.splitlines():
        match = _UCX_TABLE_ROW.match(line.strip())
        if not match:
            continue
        key, cells = match[1], [cell.strip() for cell in match[2].split("|")]
        current = open_tables.get(key)
        if len(cells) == 1:  # a title row; after the header row it starts the next table
            if current is None or current[2][0]:
                current = open_tables[key] = ([], set(), [False])
                tables.append((current[0], current[1]))
            current[0].append(cells[0])
        elif current is not None:  # the header row, or a row of ranges (a table may have none)
            current[2][0] = True
            if cells[0] != "Range":
                current[1].update(m[1] for m in _UCX_TRANSPORT.finditer(cells[-1]))
    return [(" / ".join(title), names) for title, names in tables]


def kv_tables(text: str) -> list[tuple[str, set[str]]]:
    """The tables of the KV's remote writes/reads: between two agents (not an agent to itself),
    from GPU memory where any is (the KV cache lives there; the aux data is in host memory)."""
    rma = [(title, chosen) for title, chosen in ucx_protocols(text) if "remote memory" in title and " self cfg#" not in f" {title}"]
    from_gpu = [(title, chosen) for title, chosen in rma if " from cuda" in title]
    return from_gpu or rma


def transports(text: str) -> dict[str, int]:
    """The transports that carried KV, each with how many protocol tables chose it. For NIXL:
    those UCX chose for remote memory writes and reads (the KV copies; active messages, which
    carry NIXL's notifications and metadata, are not the KV). For Mooncake: its protocol lines."""
    found: dict[str, int] = {}
    names = [name for title, chosen in kv_tables(text) for name in chosen]
    names += [m[1].lower() for m in _MOONCAKE_PROTOCOL.finditer(text)]
    for name in names:
        found[name] = found.get(name, 0) + 1
    return found


def kv_protocols(text: str) -> list[str]:
    """The remote-memory protocol tables, one line each ("remote memory write by ucp_put* from
    cuda memory to cuda: cuda_ipc"), for the report."""
    rows = {f"{title.split(' / ')[-1]}: {', '.join(sorted(chosen))}" for title, chosen in kv_tables(text)}
    return sorted(rows)


def kv_link(found: Mapping[str, int]) -> str:
    """The fastest kind of link among the transports found: what carried the KV."""
    kinds = {KIND.get(name, name) for name in found}
    for kind in ("cuda_ipc", "rdma", "tcp", "host memory"):
        if kind in kinds:
            return kind
    return "unknown"


# ---------------------------------------------------------------------------- outputs


def greedy_outputs(base_url: str, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
    """Each prompt's greedy continuation (temperature 0, EOS ignored), in order."""
    texts = []
    for prompt in prompts:
        body = {"text": prompt, "sampling_params": {"max_new_tokens": max_new_tokens, "temperature": 0, "ignore_eos": True}}
        answer = request(base_url + "/generate", body, timeout=120)
        if answer.status != 200:
            raise Fail(f"/generate at {base_url} answered {answer.describe()}: {answer.body[:200]!r}")
        data = answer.json()
        text = data.get("text") if isinstance(data, dict) else None
        if not isinstance(text, str):
            raise Fail(f"/generate at {base_url} returned no text: {str(data)[:200]}")
        texts.append(text)
    return texts


def first_difference(expected: Sequence[str], got: Sequence[str]) -> str | None:
    for i, (a, b) in enumerate(zip(expected, got, strict=True)):
        if a != b:
            return f"prompt {i}: the plain server said {a[:60]!r}, prefill/decode said {b[:60]!r}"
    return None


def key_figure(figures: Mapping[str, Any]) -> str:
    pd, single = figures.get("pd_bench") or {}, figures.get("single_bench") or {}
    if not pd:
        return "-"
    text = f"{fmt(pd.get('output_throughput'), 0)} tok/s out via PD ({fmt(single.get('output_throughput'), 0)} single)"
    return text + f", KV over {figures.get('kv_link', '?')}"


GATES = (
    Gate(
        "kv_link",
        "words",
        ("named",),
        "the link the KV moved over, from the prefill server's UCX log: named (any known link) or the one expected (cuda_ipc, rdma, tcp)",
        basis="2 x H200 (2026-11-30): NIXL over UCX named cuda_ipc for every remote KV write once UCX_PROTO_INFO=y was set",
        pattern=r"named|cuda_ipc|rdma|tcp",
    ),
)
SMOKE = SmokeTest(TEST, timeout=1500, key_figure=key_figure, gates=GATES)


# ---------------------------------------------------------------------------- the test


class Servers:
    """The processes of one phase, stopped together (each its whole process group)."""

    def __init__(self, stop_grace: float) -> None:
        self.children: list[tuple[str, Any, Path]] = []
        self.stop_grace = stop_grace

    def start(self, name: str, cmd: list[str], log_path: Path, env: Mapping[str, str]) -> Any:
        print("+", shlex.join(cmd), f"> {log_path}", flush=True)
        child = start_child(cmd, log_path=log_path, env=dict(env))
        self.children.append((name, child, log_path))
        return child

    def stop(self) -> dict[str, int | None]:
        return {name: stop_child(child, grace=self.stop_grace) for name, child, _ in reversed(self.children)}

    def tails(self, lines: int = 12) -> list[str]:
        return [f"{name} log ({path}), last lines:\n{tail}" for name, _, path in self.children if (tail := tail_text(path, lines))]


def bench(args: argparse.Namespace, base_url: str, model: str, tokenizer: str, output: Path, env: Mapping[str, str], left: float) -> dict[str, Any]:
    figures, verdict, _ = sglang_serve.run_bench(args, base_url, model, tokenizer, output, env, left)
    if verdict:
        raise Fail(f"through {base_url}: {verdict}")
    return figures


def run_phases(args: argparse.Namespace, report: Report, workdir: Path, model: str, tokenizer: str) -> None:
    start = time.monotonic()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.setdefault("HF_HUB_OFFLINE", "1")
    pair_env = {**env, "UCX_PROTO_INFO": "y"}
    prompts = list(PROMPTS[: args.prompts])
    rows: list[list[str]] = []
    report.table_headers, report.table_rows = ["step", "result", "figure"], rows
    values = {"python": sys.executable, "model": model, "host": HOST, "mem_fraction": args.mem_fraction}

    def left() -> float:
        return float(args.timeout - (time.monotonic() - start) - 40)  # time to stop everything and report

    # 1. the plain server: the reference outputs and the single-server load
    single = Servers(args.stop_grace)
    try:
        port = free_port()
        url = f"http://{HOST}:{port}"
        child = single.start(
            "single", command_words(args.server_cmd or SERVER_CMD, {**values, "port": port}) + ["--base-gpu-id", "0"], workdir / "single.log", env
        )
        ready = wait_healthy(url, min(args.startup_timeout, left()), child.poll)
        rows.append(["plain server /health", "200", f"ready after {ready:.1f} s"])
        reference = greedy_outputs(url, prompts, args.max_new_tokens)
        report.figures["single_bench"] = bench(args, url, model, tokenizer, workdir / "single-bench.jsonl", env, left())
        rows.append(["plain server load", "ok", sglang_serve.key_figure({"bench": report.figures["single_bench"]})])
    except Fail:
        report.notes += single.tails()
        raise
    finally:
        report.figures["single_exit"] = single.stop()

    # 2. the pair behind the router: the same outputs, the load, the transport
    pair = Servers(args.stop_grace)
    try:
        ports = {name: free_port() for name in ("prefill", "decode", "router", "bootstrap", "nccl_prefill", "nccl_decode")}
        if args.bootstrap_port:
            ports["bootstrap"] = args.bootstrap_port
        urls = {name: f"http://{HOST}:{ports[name]}" for name in ("prefill", "decode", "router")}
        children, commands = {}, {}
        for role, gpu in (("prefill", 0), ("decode", 1)):
            cmd = command_words(args.server_cmd or SERVER_CMD, {**values, "port": ports[role]})
            cmd += pair_args(role, args.transfer_backend, gpu, ports["bootstrap"], ports[f"nccl_{role}"]) + list(args.server_arg)
            commands[role] = shlex.join(cmd)
            children[role] = pair.start(role, cmd, workdir / f"{role}.log", pair_env)
        report.figures["pair_commands"] = commands
        for role in ("prefill", "decode"):
            ready = wait_healthy(urls[role], min(args.startup_timeout, left()), children[role].poll)
            rows.append([f"{role} server /health", "200", f"ready after {ready:.1f} s"])
        router_values = {
            "python": sys.executable, "host": HOST, "port": ports["router"], "prefill_url": urls["prefill"],
            "bootstrap_port": ports["bootstrap"], "decode_url": urls["decode"],
        }  # fmt: skip
        router_cmd = command_words(args.router_cmd or ROUTER_CMD, router_values)
        report.figures["router_command"] = shlex.join(router_cmd)
        router = pair.start("router", router_cmd, workdir / "router.log", env)
        ready = wait_healthy(urls["router"], min(120.0, left()), router.poll)
        rows.append(["router (PD mode) /health", "200", f"ready after {ready:.1f} s"])

        got = greedy_outputs(urls["router"], prompts, args.max_new_tokens)
        difference = first_difference(reference, got)
        report.figures["greedy"] = {"prompts": len(prompts), "max_new_tokens": args.max_new_tokens, "identical": difference is None}
        rows.append(["greedy outputs", "identical" if difference is None else "DIFFER", f"{len(prompts)} prompts x {args.max_new_tokens} tokens"])
        report.verdict(
            "greedy outputs", difference is None, f"{len(prompts)} prompts x {args.max_new_tokens} tokens " + ("identical" if difference is None else "differ"),
            "the plain server's text through prefill/decode", difference or "",
        )  # fmt: skip
        if difference:
            raise Fail(f"prefill/decode changed the greedy output: {difference}")

        report.figures["pd_bench"] = bench(args, urls["router"], model, tokenizer, workdir / "pd-bench.jsonl", env, left())
        pd, one = report.figures["pd_bench"], report.figures["single_bench"]
        ratios = {
            key: pd[key] / one[key]
            for key in ("output_throughput", "median_ttft_ms", "median_tpot_ms")
            if isinstance(pd.get(key), (int, float)) and one.get(key)
        }
        report.figures["pd_vs_single"] = ratios
        rows.append([
            "PD load via router", "ok",
            f"{sglang_serve.key_figure({'bench': pd})}; "
            f"x{fmt(ratios.get('output_throughput'), 2)} tok/s, x{fmt(ratios.get('median_ttft_ms'), 2)} TTFT of one server",
        ])  # fmt: skip

        link, named = record_transport(report, workdir)
        rows.append(["KV transport", link, named])
        gates = from_args(args, GATES, {"kv_link": (args.expect_transport,)} if args.expect_transport else None)
        wanted = gates["kv_link"]
        if link == "unknown":
            ok, why = None, f"{args.transfer_backend} named no transport in the prefill server's log (UCX_PROTO_INFO=y was set)"
        elif isinstance(wanted, tuple) and "named" not in wanted:
            ok, why = link in wanted, f"the KV moved over {link} ({named}), kv_link {' or '.join(wanted)} expected"
        else:
            ok, why = True, ""
        verdict = judge_switch(report, gates, "kv_link", ok, f"{link} ({named})", why)
        if verdict.ok is False:
            raise Fail(why if ok is not None else f"{why}: the kv_link gate wants a named link (--gate kv_link=off accepts none)")
    except Fail:
        if "kv_link" not in report.figures and (workdir / "prefill.log").exists():
            link, named = record_transport(report, workdir)  # a pair that hangs may still have moved KV
            report.notes.append(f"the KV writes the prefill server chose before it failed: {link} ({named})")
        report.notes += pair.tails()
        raise
    finally:
        report.figures["pair_exit"] = pair.stop()


def record_transport(report: Report, workdir: Path) -> tuple[str, str]:
    """The link the KV moved over, from the prefill server's log (it writes the KV into the
    decode side's memory), into the report's figures; with the transports named, for a line."""
    log = tail_text(workdir / "prefill.log", 100_000) or ""
    found = transports(log)
    link = kv_link(found)
    report.figures["transports"], report.figures["kv_link"], report.figures["kv_protocols"] = found, link, kv_protocols(log)
    return link, ", ".join(f"{k} ({v})" for k, v in sorted(found.items(), key=lambda kv: -kv[1])) or "none named in the prefill server's log"


def port_taken(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return True
    return False


def body_for(args: argparse.Namespace) -> Any:
    def body(report: Report) -> None:
        custom = bool(args.server_cmd)
        report.figures["server"] = "custom" if custom else "sglang"
        report.figures["transfer_backend"] = args.transfer_backend
        gpus = sglang_serve.gpu_count()
        with work_folder(args.workdir, "smoke-sglang-pd-") as workdir:
            if not custom:
                installed = sglang_serve.sglang_version()
                if installed is None:
                    raise Fail("sglang is not installed in this environment")
                report.environment["sglang"] = installed
            model, tokenizer = sglang_serve.prepare_model(args, workdir, report)
            if not custom and (args.cpu or gpus == 0):
                if not args.model:
                    sglang_serve.check_tiny_model(model, report)
                what = "prefill/decode disaggregation needs two GPUs (the tiny model was written and loaded on the CPU)"
                raise gpu_unavailable(args, what)
            if not custom and gpus < 2:
                raise Skip(f"prefill and decode need a GPU each; {gpus} visible")
            defect = None if custom else known_defect(args.transfer_backend, installed_source(args.transfer_backend))
            if defect:
                raise Fail(f"SGLang {report.environment.get('sglang')}: {defect}")
            # a taken bootstrap port shows only as a decode server that never gets its KV: say it first
            if args.bootstrap_port and port_taken(args.bootstrap_port):
                raise Fail(f"--bootstrap-port {args.bootstrap_port} is already in use on this host: pick a free one or leave it out")
            run_phases(args, report, workdir, model, tokenizer)

    return body


def build_parser() -> argparse.ArgumentParser:
    parser = test_parser(__doc__, timeout=SMOKE.timeout)
    parser.add_argument("--model", help="Hugging Face model id (from the mounted cache) or folder; default: a tiny random model")
    parser.add_argument("--transfer-backend", default="nixl", choices=BACKENDS, help="SGLang's --disaggregation-transfer-backend")
    parser.add_argument("--expect-transport", choices=EXPECT, help="the kv_link gate set to this: fail unless the KV moved over this kind of link")
    parser.add_argument("--bootstrap-port", type=int, help="the prefill server's bootstrap port (default: a free one)")
    parser.add_argument("--prompts", type=int, default=len(PROMPTS), choices=range(1, len(PROMPTS) + 1), metavar=f"1..{len(PROMPTS)}")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="tokens of each greedy output compared")
    parser.add_argument("--mem-fraction", type=float, default=0.35, help="--mem-fraction-static of each server (two share GPU 0 in turn)")
    parser.add_argument("--startup-timeout", type=float, help="seconds for each server's /health to answer 200 (default: 600, within --timeout)")
    sglang_serve.add_load_args(parser, input_len=256, servers="a server")
    parser.add_argument("--workdir", help="keep the model, logs and bench output here (default: a temp dir, removed)")
    parser.add_argument("--server-arg", action="append", default=[], metavar="ARG", help="extra launch_server argument for the pair (repeatable)")
    parser.add_argument("--server-cmd", help="replace the server command (tests); see the module doc")
    parser.add_argument("--router-cmd", help="replace the router command (tests); see the module doc")
    parser.add_argument("--bench-cmd", help="replace the bench_serving command (tests); see the module doc")
    add_gate_args(parser, GATES)
    return parser


def main(argv: Iterable[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    sglang_serve.check_load_args(parser, args, startup_share=0.4)  # two starts (the plain server, then the pair) fit
    if args.bootstrap_port is not None and not 1 <= args.bootstrap_port <= 65535:
        parser.error(f"--bootstrap-port {args.bootstrap_port}: not a port")
    return run_test(TEST, body_for(args), json_path=args.json, timeout=args.timeout)


if __name__ == "__main__":
    sys.exit(main())
