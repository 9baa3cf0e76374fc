"""Two NIXL agents (UCX backend) in one process write 1 MiB from one to the other, as the
prefill side writes KV to the decode side. Run with UCX_PROTO_INFO=y, UCX prints the
protocol table it chose for that remote write; the PD smoke test reads the same tables.
Prints "state DONE equal True" when the bytes arrived. With the argument `cuda`, from GPU 0
to GPU 1 (the GPU machine's check that UCX picks cuda_ipc between them).
"""

import sys
import time

import torch
from nixl._api import nixl_agent, nixl_agent_config

agents = {}
for name in ("a", "b"):
    agents[name] = nixl_agent(name, nixl_agent_config(backends=[], num_threads=0))
    agents[name].create_backend("UCX", {})
a, b = agents["a"], agents["b"]
on_gpu = sys.argv[1:] == ["cuda"]
src = torch.arange(1 << 20, dtype=torch.int32).to(torch.uint8).to("cuda:0" if on_gpu else "cpu")
dst = torch.zeros(1 << 20, dtype=torch.uint8, device="cuda:1" if on_gpu else "cpu")
a.register_memory(src)
b.register_memory(dst)
a.add_remote_agent(b.get_agent_metadata())
handle = a.initialize_xfer("WRITE", a.get_xfer_descs(src), a.get_xfer_descs(dst), "b")
state = a.transfer(handle)
deadline = time.monotonic() + 30
while state != "DONE" and time.monotonic() < deadline:
    state = a.check_xfer_state(handle)
    time.sleep(0.01)
print("state", state, "equal", bool(torch.equal(src.cpu(), dst.cpu())), flush=True)
