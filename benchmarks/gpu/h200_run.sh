#!/usr/bin/env bash
# Every smoke test, natively, on a GPU machine that has torch 2.11.0+cu130 but no Docker and
# no network (the 2 x H200 verification machine), with the verl topic's locked wheels:
#
#   benchmarks/gpu/h200_run.sh setup PIECES_DIR               # join and unpack (see GPU.md)
#   benchmarks/gpu/h200_run.sh base|serve|cause|grpo|pd|pair OUTDIR  # a group of tests, results in OUTDIR
#
# PIECES_DIR holds closure.tar.zst split in pieces (closure.part-*), which travel one per
# call, a zstandard wheel for machines without the zstd tool, and any other wheels to add (for
# the PD stage: nixl 1.5.1, nixl-cu13 1.5.1 and sglang-router 0.3.2, the sglang topic's). The archive holds `site/` (the verl lock's packages that machine lacks, installed with
# `pip install --no-deps --target`, plus transformers/tokenizers at the lock's versions) and
# `cudasite/` (nvcc, cccl, crt, nvvm and the runtime: the framework lock's CUDA toolkit wheels).
# The CUDA toolkit JIT compilers see is the one those wheels make (images/scripts/link_cuda.py,
# as in the images), not the machine's own /usr/local/cuda. NVLink multicast stays off.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit
ROOT=/tmp/kitgpu
stage=${1:?setup, base, serve, cause, grpo, pd or pair}

export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONPATH="$ROOT/site:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export CUDA_HOME="$ROOT/cuda" PATH="$ROOT/site/bin:$ROOT/cuda/bin:$PATH"

if [ "$stage" = setup ]; then
  pieces=${2:?PIECES_DIR}
  rm -rf "$ROOT" && mkdir -p "$ROOT"
  if command -v zstd >/dev/null; then
    cat "$pieces"/closure.part-* | zstd -dc --long=27 | tar -C "$ROOT" -xf -
  else  # the zstandard wheel travels with the first piece
    python3 -m pip install -q --no-index --no-deps --target /tmp/zstandard "$pieces"/zstandard-*.whl
    cat "$pieces"/closure.part-* | PYTHONPATH=/tmp/zstandard python3 -c "import sys, tarfile, zstandard; tarfile.open(fileobj=zstandard.ZstdDecompressor(max_window_size=2**27).stream_reader(sys.stdin.buffer), mode='r|').extractall(sys.argv[1])" "$ROOT"
  fi
  extra=()
  for wheel in "$pieces"/*.whl; do [[ -e $wheel && $wheel != */zstandard-* ]] && extra+=("$wheel"); done
  [ ${#extra[@]} -eq 0 ] || python3 -m pip install -q --no-index --no-deps --no-compile --target "$ROOT/site" "${extra[@]}" || exit
  # In an image every CUDA wheel unpacks into one site-packages/nvidia/cu13; here torch's
  # (cublas, cusparse, ...) sit in the machine's venv. Their headers and libraries join the
  # carried toolkit's folder as links, so the JIT sees what it sees in an image (flashinfer's
  # norm kernel includes cublasLt.h: without this, SGLang's start failed in its JIT).
  machine=$(python3 -c "import nvidia, os; print(os.path.join(nvidia.__path__[0], 'cu13'))")
  for sub in include lib; do cp -rs --update=none "$machine/$sub/." "$ROOT/cudasite/nvidia/cu13/$sub/"; done
  PYTHONPATH="$ROOT/cudasite" python3 images/scripts/link_cuda.py "$ROOT/cuda"
  du -sh "$ROOT"/* && "$ROOT/cuda/bin/nvcc" --version | tail -2
  exit
fi

out=${2:?OUTDIR}
mkdir -p "$out"
run() {  # NAME CMD...: the test's log and exit code, whatever it does
  local name=$1; shift
  echo "+ $*" | tee "$out/$name.log"
  "$@" 2>&1 | tee -a "$out/$name.log"
  echo "rc $name ${PIPESTATUS[0]}" | tee -a "$out/rc.txt"
}

case "$stage" in
  base)
    { nvidia-smi; nvidia-smi topo -m; python3 -c "import torch, transformers; print('torch', torch.__version__, 'nccl', torch.cuda.nccl.version(), 'transformers', transformers.__version__)"; } > "$out/nvidia-smi.txt" 2>&1
    run cuda_jit python3 -m smoke_tests.cuda_jit --require-gpu --json "$out/cuda_jit.json"
    run nccl python3 -m smoke_tests.nccl --require-gpu --json "$out/nccl.json"
    run cuda_graph python3 -m smoke_tests.cuda_graph --require-gpu --json "$out/cuda_graph.json"
    run verl_sft python3 -m smoke_tests.verl_sft --require-gpu --json "$out/verl_sft.json"
    run verl_sft_2gpu python3 -m smoke_tests.verl_sft --require-gpu --nproc 2 --json "$out/verl_sft_2gpu.json"
    ;;
  serve)
    run sglang_serve python3 -m smoke_tests.sglang_serve --require-gpu --workdir "$out/serve1" --json "$out/sglang_serve.json"
    run sglang_serve_tp2 python3 -m smoke_tests.sglang_serve --require-gpu --tp 2 --workdir "$out/serve2" --json "$out/sglang_serve_tp2.json"
    ;;
  cause)
    # The old tiny model (512 positions, float32) with SGLang's piecewise CUDA-graph capture
    # kept within its context: if this serves, the capture past the context was the cause.
    python3 - "$out/old" <<'PY'
import dataclasses, sys
from smoke_tests import tiny_model
old = dataclasses.replace(tiny_model.SERVE_CONFIG, max_position_embeddings=512, dtype="float32")
print(tiny_model.build(sys.argv[1], cfg=old))
PY
    run old_model_capped python3 -m smoke_tests.sglang_serve --require-gpu --model "$out/old/model" --num-prompts 16 \
      --server-arg=--piecewise-cuda-graph-max-tokens --server-arg=512 --workdir "$out/serve_old" --json "$out/old_model_capped.json"
    # ... and with SGLang's defaults (capture up to 8192 tokens on an H200) it dies in cuBLAS.
    run old_model_default python3 -m smoke_tests.sglang_serve --require-gpu --model "$out/old/model" --num-prompts 16 \
      --timeout 400 --workdir "$out/serve_old_default" --json "$out/old_model_default.json"
    ;;
  pd)
    # Prefill on GPU 0, decode on GPU 1, SGLang's router in PD mode, NIXL (UCX) moving the KV;
    # the servers' logs hold UCX's protocol tables (UCX_PROTO_INFO=y), the test reads them.
    nvidia-smi topo -m > "$out/nvidia-smi.txt" 2>&1
    if [ "${KIT_NIXL_TRACE:-0}" = 1 ]; then
      api=$(python3 -c "import nixl_cu13, os; print(os.path.join(os.path.dirname(nixl_cu13.__file__), '_api.py'))") || exit
      grep -q kit-nixl-trace "$api" || cat benchmarks/gpu/nixl_trace.py >> "$api"
    fi
    # SGLang 0.5.12's NIXL backend hangs every request of a dense model (sgl-project/sglang#25698):
    # the prefill side writes the aux data (the first output token, which the decode side waits
    # for) only for models with extra state, and the decode side waits for state whenever it
    # was given a list, even an empty one. KIT_SGLANG_NIXL_FIX=1 applies the two changes of the
    # fix (#25699, in the sglang topic's 0.5.23) to the carried 0.5.12; smoke_tests.sglang_pd
    # refuses an install that has either defect.
    if [ "${KIT_SGLANG_NIXL_FIX:-0}" = 1 ]; then
      python3 - "$ROOT/site/sglang/srt/disaggregation/nixl/conn.py" <<'PY' || exit
import sys
path = sys.argv[1]
text = open(path).read()
fixes = [
    ("if kv_chunk.is_last and kv_chunk.state_indices:\n                        dst_info = self.decode_kv_args_table[req.agent_name]\n                        state_xfer_handles = self.maybe_send_extra(",
     "if kv_chunk.is_last:\n                        dst_info = self.decode_kv_args_table[req.agent_name]\n                        state_xfer_handles = [] if not kv_chunk.state_indices else self.maybe_send_extra("),
    ("if state_indices is not None:\n            self.kv_mgr.transfer_statuses[self.bootstrap_room].expects_state = True",
     "if state_indices:\n            self.kv_mgr.transfer_statuses[self.bootstrap_room].expects_state = True"),
]
for old, new in fixes:
    if old in text:
        text = text.replace(old, new, 1)
    elif new not in text:
        sys.exit("not found in " + path + ": " + old.splitlines()[0])
open(path, "w").write(text)
print("sgl-project/sglang#25699 applied to", path)
PY
    fi
    run sglang_pd python3 -m smoke_tests.sglang_pd --require-gpu --expect-transport cuda_ipc --timeout 400 --startup-timeout 200 \
      --workdir "$ROOT/pd" --json "$out/sglang_pd.json"
    for log in single prefill decode router; do cp "$ROOT/pd/$log.log" "$out/pd_$log.log" 2>/dev/null; done
    ;;
  pair)
    # NIXL between two processes as SGLang's pair uses it (tests/integration/data/nixl_probe.py):
    # GPU 0 writes into GPU 1 with a notification; then variants that isolate a failure.
    run pair_vram env UCX_PROTO_INFO=y timeout 60 python3 tests/integration/data/nixl_probe.py run --memory vram
    run pair_vram_threads timeout 60 python3 tests/integration/data/nixl_probe.py run --memory vram --target-threads 8
    run pair_vram_no_ipc env UCX_TLS=^cuda_ipc timeout 60 python3 tests/integration/data/nixl_probe.py run --memory vram
    run pair_dram timeout 60 python3 tests/integration/data/nixl_probe.py run --memory dram
    ;;
  grpo)
    run verl_grpo python3 -m smoke_tests.verl_grpo --require-gpu --workdir "$out/grpo" --json "$out/verl_grpo.json"
    ;;
esac
