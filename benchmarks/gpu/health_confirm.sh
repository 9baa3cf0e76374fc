#!/usr/bin/env bash
# Second, short call of issue 13's run: the forced-fallback gate with SHM's log lines
# (NCCL_P2P_DISABLE=1, --expect-transport P2P must fail naming SHM), and bf16 GEMM at n=8192
# alternated with the plain loop (smoke, reference, smoke, reference) on one GPU.
#   bash benchmarks/gpu/health_confirm.sh OUTDIR
set -uo pipefail
out=${1:?output folder}
mkdir -p "$out"
export NCCL_NVLS_ENABLE=0 PYTHONPATH=$PWD
NCCL_P2P_DISABLE=1 python3 -m smoke_tests.nccl --collectives all_reduce --max-bytes 16M --expect-transport P2P --json "$out/nccl_p2p_disabled.json"
echo "exit $? (1 expected)"
for round in 1 2; do
  CUDA_VISIBLE_DEVICES=0 python3 -m smoke_tests.gpu_health --gemm bf16 --gemm-sizes 8192 --json "$out/gemm8192_smoke_$round.json" | grep "GEMM n="
  CUDA_VISIBLE_DEVICES=0 python3 benchmarks/gpu/health_reference.py "$out/gemm8192_ref_$round.json" --sizes 8192 | head -1
done
