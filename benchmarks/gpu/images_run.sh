#!/usr/bin/env bash
# The GPU runbook for the kit's images (issue 20): every topic's smoke tests inside the
# topic's own root filesystem on a GPU machine that has no Docker, with the GPU given as
# the NVIDIA container toolkit gives it (benchmarks/gpu/carry.py says exactly how, and
# what differs from `docker run --gpus all`), once as root and once as UID 1000 with an
# empty HOME (as `invoke shell` runs). Here, first:
#   .venv/bin/python benchmarks/gpu/carry.py pack --out .img mlsyskit/verl:pypi ...   (+ zstandard wheels in .img/)
# Then one device call per piece (carry [".img/pack.part-NNN"]): `bash benchmarks/gpu/images_run.sh stage`,
# and the runs, each stage one call (their output under $OUT):
#   images_run.sh unpack [PREFIX...]     # /tmp/pieces -> /tmp/roots/<image>, each set up with the GPU
#   images_run.sh tests OUT NAME...      # NAME = image:test[:uid]; all of them at once, then wait
#   images_run.sh bg WAVE NAME...        # `tests` in the background (it outlives the device call); log /tmp/wave-WAVE.log
#   images_run.sh status                 # what the waves have finished so far
#   images_run.sh collect OUT            # every result and log of the roots into OUT/results.tgz
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
R=/tmp/roots
C=(python3 benchmarks/gpu/carry.py)

case ${1:?stage|unpack|tests|collect} in
  stage)
    mkdir -p /tmp/pieces && cp -n .img*/*.part-* .img*/*.whl /tmp/pieces/ 2>/dev/null; find /tmp/pieces -type f | wc -l; du -sh /tmp/pieces ;;
  unpack)  # PREFIX... (default: pack): each pack in order (a later one reuses the store of earlier ones)
    start=$(date +%s); shift
    for prefix in "${@:-pack}"; do "${C[@]}" unpack /tmp/pieces "$R" --prefix "$prefix" || exit 1; done
    for root in "$R"/*/; do "${C[@]}" setup "${root%/}" || exit 1; done
    rm -rf /tmp/pieces
    echo "unpacked and set up in $(( $(date +%s) - start )) s"; df -h /tmp | tail -1 ;;
  tests)
    out=${2:?OUT}; shift 2
    mkdir -p "$out"
    pids=()
    for spec in "$@"; do
      IFS=: read -r image test uid args <<<"$spec"
      name="$test-${image%-pypi}-${uid:-0}"
      root="$R/$image"
      mkdir -p "$root/tmp/results" && chmod 1777 "$root/tmp/results"
      user=(); [ -n "${uid:-}" ] && [ "$uid" != 0 ] && user=(--uid "$uid")
      # an empty HOME of its own, as invoke shell gives (a tmpfs there, a fresh folder here)
      home="/tmp/home-$name-$$"
      # shellcheck disable=SC2086 # args: extra words for the test, split on purpose
      ( "${C[@]}" run "$root" "${user[@]}" --home "$home" -- \
          python -m "smoke_tests.$test" --require-gpu --json "/tmp/results/$name.json" ${args//,/ } \
          > "$root/tmp/results/$name.log" 2>&1
        echo "$name: exit $? after $SECONDS s" ) &
      pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid"; done
    for root in "$R"/*/; do
      for f in "$root"tmp/results/*.json; do
        [ -e "$f" ] && python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(f\"{sys.argv[1].split('/')[-1]:<40} {d['status']:<8} {d['seconds']:7.1f}s  {d['reason'][:150]}\")" "$f"
      done
    done ;;
  bg)
    wave=${2:?WAVE}; shift 2
    setsid nohup bash "$0" tests /tmp/out "$@" > "/tmp/wave-$wave.log" 2>&1 < /dev/null &
    echo "wave $wave started: $*" ;;
  status)
    for log in /tmp/wave-*.log; do [ -e "$log" ] && { echo "== $log"; grep -E "exit|passed|failed|skipped" "$log" | tail -30; }; done
    nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader
    pgrep -fa "smoke_tests\." | grep -v pgrep | cut -c1-160 | head -20 ;;
  collect)
    out=${2:?OUT}; mkdir -p "$out"
    nvidia-smi > /tmp/nvidia-smi.txt 2>&1; nvidia-smi -q >> /tmp/nvidia-smi.txt 2>&1
    mapfile -t folders < <(cd "$R" && find . -mindepth 3 -maxdepth 3 -path './*/tmp/results')
    tar -czf "$out/results.tgz" -C "$R" --transform 's,tmp/results/,,' "${folders[@]}" -C /tmp nvidia-smi.txt
    ls -la "$out" ;;
esac
