"""Two processes, as SGLang's prefill and decode servers use NIXL: the target registers a
buffer and waits for a notification (its agent made with num_threads=0, as SGLang's decode
side), the initiator (num_threads=8, as the prefill side) writes into it with a notification
attached. Says whether the bytes and the notification arrived (`...: PASS`). With
UCX_PROTO_INFO=y, UCX prints the protocol table of that remote write, which the PD smoke test
reads: CI runs it in the sglang image on host memory, the GPU runbook (benchmarks/gpu/
h200_run.sh pair) from GPU 0 to GPU 1.

    python tests/integration/data/nixl_probe.py run [--memory vram|dram] [--target-threads N]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch
from nixl._api import nixl_agent, nixl_agent_config

SIZE = 4 << 20


def make_agent(name, threads):
    agent = nixl_agent(name, nixl_agent_config(backends=[], num_threads=threads))
    agent.create_backend("UCX", {"num_threads": str(threads)} if threads else {})
    return agent


def buffer(memory, gpu, fill):
    device = f"cuda:{gpu}" if memory == "vram" else "cpu"
    return torch.full((SIZE,), fill, dtype=torch.uint8, device=device)


def target(args):
    agent = make_agent("decode", args.target_threads)
    buf = buffer(args.memory, 1, 0)
    agent.register_memory(buf)
    info = {"meta": agent.get_agent_metadata().hex(), "ptr": buf.data_ptr(), "dev": 1 if args.memory == "vram" else 0}
    with open(args.exchange + ".tmp", "w") as out:
        json.dump(info, out)
    os.replace(args.exchange + ".tmp", args.exchange)
    deadline, notes = time.monotonic() + args.wait, {}
    while time.monotonic() < deadline and not notes:
        notes = {k: v for k, v in agent.get_new_notifs().items() if v}
        time.sleep(0.001)
    ok = bool((buf == 7).all().item())
    print(f"target: notifications {notes}; bytes arrived {ok}", flush=True)
    return 0 if notes and ok else 1


def initiator(args):
    while not os.path.exists(args.exchange):
        time.sleep(0.05)
    with open(args.exchange) as exchange:
        info = json.load(exchange)
    agent = make_agent("prefill", 8)
    src = buffer(args.memory, 0, 7)
    agent.register_memory(src)
    peer = agent.add_remote_agent(bytes.fromhex(info["meta"]))
    kind = "VRAM" if args.memory == "vram" else "DRAM"
    remote = agent.get_xfer_descs([(info["ptr"], SIZE, info["dev"])], kind)
    handle = agent.initialize_xfer("WRITE", agent.get_xfer_descs(src), remote, peer, b"42_kv_0_1_0")
    state, start = agent.transfer(handle), time.monotonic()
    while state not in ("DONE", "ERR") and time.monotonic() - start < 20:
        state = agent.check_xfer_state(handle)
    print(f"initiator: transfer {state} in {time.monotonic() - start:.3f} s", flush=True)
    time.sleep(args.linger)  # keep the sender alive while the target polls
    return 0 if state == "DONE" else 1


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=("run", "target", "initiator"))
    parser.add_argument("--memory", choices=("vram", "dram"), default="vram")
    parser.add_argument("--target-threads", type=int, default=0)
    parser.add_argument("--exchange")
    parser.add_argument("--wait", type=float, default=20)
    parser.add_argument("--linger", type=float, default=10)
    args = parser.parse_args()
    if args.role == "target":
        return target(args)
    if args.role == "initiator":
        return initiator(args)
    exchange = os.path.join(tempfile.mkdtemp(), "target.json")
    common = [
        "--memory",
        args.memory,
        "--target-threads",
        str(args.target_threads),
        "--exchange",
        exchange,
        "--wait",
        str(args.wait),
        "--linger",
        str(args.linger),
    ]
    t = subprocess.Popen([sys.executable, __file__, "target", *common])
    i = subprocess.Popen([sys.executable, __file__, "initiator", *common])
    try:
        rc_t, rc_i = t.wait(timeout=90), i.wait(timeout=90)
    except subprocess.TimeoutExpired:
        rc_t = rc_i = 1
    finally:  # neither side outlives the probe (an initiator whose target died waits for ever)
        for child in (t, i):
            child.kill()
            child.wait()
    print(
        f"probe memory={args.memory} target_threads={args.target_threads} UCX_TLS={os.environ.get('UCX_TLS', '')}: {'PASS' if rc_t == rc_i == 0 else 'FAIL'}",
        flush=True,
    )
    return rc_t or rc_i


if __name__ == "__main__":
    sys.exit(main())
