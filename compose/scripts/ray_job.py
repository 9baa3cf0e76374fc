"""A trivial Ray job that proves the cluster works: wait until KIT_NNODES nodes are
alive, run tasks pinned to every node in turn, and check their sum and where they ran.

    python ray_job.py            # the check (the CPU trainer job)
    python ray_job.py --wait     # only wait for the nodes (verl_trainer.py runs it first)
"""

from __future__ import annotations

import os
import socket
import sys
import time

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

NODES = int(os.environ.get("KIT_NNODES", "2"))
WAIT = float(os.environ.get("KIT_NODES_WAIT", "300"))


def wait_for_nodes() -> list[dict]:
    deadline = time.monotonic() + WAIT
    while True:
        alive = [n for n in ray.nodes() if n.get("Alive")]
        if len(alive) >= NODES:
            return alive
        if time.monotonic() > deadline:
            raise SystemExit(f"ray job: {len(alive)} of {NODES} node(s) joined within {WAIT:g} s")
        time.sleep(2)


@ray.remote(num_cpus=1)
def square(x: int) -> tuple[int, str]:
    return x * x, socket.gethostname()


def main() -> int:
    ray.init(address="auto")
    alive = wait_for_nodes()
    print(f"ray job: {len(alive)} node(s) alive: {', '.join(sorted(n['NodeManagerAddress'] for n in alive))}")
    if "--wait" in sys.argv[1:]:
        return 0
    # Pin tasks to each node in turn (SPREAD is best effort: tiny tasks all land on the head).
    nodes = [n["NodeID"] for n in alive]
    n = 8 * len(nodes)
    pinned = [NodeAffinitySchedulingStrategy(nodes[i % len(nodes)], soft=False) for i in range(n)]
    results = ray.get([square.options(scheduling_strategy=pinned[i]).remote(i) for i in range(n)])
    total = sum(value for value, _ in results)
    hosts = sorted({host for _, host in results})
    expected = sum(i * i for i in range(n))
    print(f"ray job: sum of squares 0..{n - 1} = {total} (expected {expected}), tasks ran on {len(hosts)} node(s)")
    if total != expected:
        return 1
    if len(hosts) < NODES:
        print(f"ray job: tasks ran on {len(hosts)} node(s), {NODES} expected", file=sys.stderr)
        return 1
    print("ray job: passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
