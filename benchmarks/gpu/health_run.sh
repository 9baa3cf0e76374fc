#!/usr/bin/env bash
# The health tests (issue 13) on a GPU machine, natively with the distributed topic's torch and
# NCCL (no Docker there), each beside its reference in the same call:
#   gpu_health (2 GPUs, then 1)   <-> benchmarks/gpu/health_reference.py (plain loops)
#   smoke_tests.nccl, 4 collectives <-> nccl-tests' *_perf (built against torch's NCCL wheel)
#   --expect-transport P2P with NCCL_P2P_DISABLE=1 must fail (a forced fallback)
#   doctor's passive GPU checks on the real nvidia-smi
#
#   bash benchmarks/gpu/health_run.sh OUTDIR NCCL_TESTS_BIN_DIR
set -uo pipefail
out=${1:?output folder}
bin=${2:?folder with all_reduce_perf, all_gather_perf, reduce_scatter_perf, alltoall_perf}
mkdir -p "$out"
export NCCL_NVLS_ENABLE=0 PYTHONPATH=$PWD
step() { echo; echo "== $(date -u +%T) $*"; }

nccl_lib=$(python3 - <<'PY'
import glob, site
for d in site.getsitepackages():
    for hit in glob.glob(f"{d}/nvidia/nccl/lib/libnccl.so.2"):
        print(hit.rsplit("/", 1)[0]); raise SystemExit
PY
)

step "the machine"
nvidia-smi -L
nvidia-smi topo -m | tee "$out/topo.txt"
fields=$(python3 -c 'from mlsyskit.checks.gpu_state import FIELDS; print(",".join(FIELDS))')
nvidia-smi --query-gpu="$fields" --format=csv,noheader,nounits | tee "$out/gpu_state.csv"
python3 -c 'import torch; print("torch", torch.__version__, "NCCL", torch.cuda.nccl.version())'

step "doctor's passive GPU checks"
python3 - <<'PY'
import subprocess
from mlsyskit.checks import gpu_state
def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    return p.stdout if p.returncode == 0 else None
for f in gpu_state.findings(run):
    print(f"{f.status:5} {f.name}: {f.detail}" + (f" (fix: {f.fix})" if f.fix else ""))
PY

step "gpu_health, 2 GPUs"
python3 -m smoke_tests.gpu_health --json "$out/gpu_health_2gpu.json"
step "gpu_health, 1 GPU"
CUDA_VISIBLE_DEVICES=0 python3 -m smoke_tests.gpu_health --json "$out/gpu_health_1gpu.json"
step "reference loops"
python3 benchmarks/gpu/health_reference.py "$out/health_reference.json"

step "smoke_tests.nccl, 4 collectives, 1 MiB to 4 GiB, expecting P2P"
python3 -m smoke_tests.nccl --max-bytes 4G --expect-transport P2P --json "$out/nccl_collectives.json"
step "nccl-tests, same sizes"
for t in all_reduce all_gather reduce_scatter alltoall; do
  LD_LIBRARY_PATH=$nccl_lib "$bin/${t}_perf" -b 1M -e 4G -f 4 -g 2 -w 5 -n 20 -c 1 | tee "$out/nccl_tests_$t.txt"
done

step "a forced fallback: NCCL_P2P_DISABLE=1 with --expect-transport P2P must fail"
NCCL_P2P_DISABLE=1 python3 -m smoke_tests.nccl --collectives all_reduce --max-bytes 64M --expect-transport P2P --json "$out/nccl_p2p_disabled.json"
echo "exit $? (1 expected)"
step "done"
