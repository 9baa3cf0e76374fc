#!/usr/bin/env bash
# The GPU runbook for the kit's images (issue 20): every topic's smoke tests inside the
# topic's own root filesystem on a GPU machine that has no Docker, with the GPU given as
# the NVIDIA container toolkit gives it (benchmarks/gpu/carry.py says exactly how, and
# what differs from `docker run --gpus all`), once as root and once as UID 1000 with an
# empty HOME (as `invoke shell` runs). Here, first:
#   .venv/bin/python benchmarks/gpu/carry.py pack --out .img mlsyskit/verl:pypi ...   (+ the zstandard wheels)
# Then one device call per piece (carry [".img/pack.part-NNN"]): `bash benchmarks/gpu/images_run.sh stage`,
# and the runs, each stage one call:
#   images_run.sh unpack [PREFIX...]     # /tmp/pieces -> /tmp/roots/<image>, each set up with the GPU
#   images_run.sh one IMAGE TEST UID CACHE [ARGS...]   # one test, waits (CACHE: a kernel-cache key or -)
#   images_run.sh jit                    # cuda_jit in every unpacked image, root and UID 1000, waits
#   images_run.sh lanes                  # the session's plan (below) in the background; log /tmp/lanes.log
#   images_run.sh lanes-sglang           # the second run's plan (sglang image, verl GRPO cold/warm), the same way
#   images_run.sh status                 # what has finished so far
#   images_run.sh collect OUT            # every result and log into OUT/results.tgz
#
# Kernel caches (issue 23): a test given a CACHE key gets the kit's kernel cache for its
# image, GPU architecture and user (python3 -m mlsyskit.runtime.caches), bound at the place
# and with the variables `invoke shell` gives; the same key twice is a warm start.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
KIT=$PWD
R=/tmp/roots
C=(python3 benchmarks/gpu/carry.py)

one() {  # IMAGE TEST UID CACHE [ARGS...]: run one test in the image's root, wait for it
  local image=$1 test=$2 uid=$3 cache=$4; shift 4
  local root="$R/$image" name="$test-${image%-pypi}-$uid" n=2
  [ "$cache" != - ] && name="$name-$cache"
  mkdir -p "$root/tmp/results" && chmod 1777 "$root/tmp/results"
  while [ -e "$root/tmp/results/$name.json" ] || [ -e "$root/tmp/results/$name.log" ]; do name="${name%-run*}-run$n"; n=$((n + 1)); done
  local user=() extra=()
  [ "$uid" != 0 ] && user=(--uid "$uid")
  if [ "$cache" != - ]; then
    # the cache home lives in the root's own filesystem (/kc/KEY), kept from run to run
    local id key=(--topic "${image%-pypi}" --arch sm_90 --uid "$uid")
    id=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['id'])" "$root/.kit-image.json")
    PYTHONPATH=$KIT python3 -m mlsyskit.runtime.caches dir "${key[@]}" --image-id "$id" --root "$root/kc/$cache" --mkdir > /dev/null || return 1
    while IFS= read -r line; do [ -n "$line" ] && extra+=(--env "$line"); done < <(
      PYTHONPATH=$KIT python3 -m mlsyskit.runtime.caches env "${key[@]}" --image-id "$id" --root "/kc/$cache")
  fi
  local start=$SECONDS
  # an empty HOME of its own, as invoke shell gives (a tmpfs there, a fresh folder here)
  "${C[@]}" run "$root" "${user[@]}" "${extra[@]}" --home "/tmp/home-$name-$$" -- \
    python -m "smoke_tests.$test" --require-gpu --json "/tmp/results/$name.json" "$@" > "$root/tmp/results/$name.log" 2>&1
  local rc=$?
  echo "$(date +%T) $name: exit $rc in $((SECONDS - start)) s"
}

kit_copy() {  # background lanes run from a copy of what they read: a later call re-copies the checkout
  rm -rf /tmp/kit && mkdir -p /tmp/kit && cp -r benchmarks mlsyskit smoke_tests envs images /tmp/kit/ || return 1
  echo "bash /tmp/kit/benchmarks/gpu/images_run.sh one"
}

summary() {
  for f in "$R"/*/tmp/results/*.json; do
    [ -e "$f" ] && python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(f\"{sys.argv[1].split('/')[-1]:<46} {d['status']:<8} {d['seconds']:7.1f}s  {d['reason'][:140]}\")" "$f"
  done
}

case ${1:?stage|unpack|one|jit|lanes|lanes-sglang|status|collect} in
  stage)
    mkdir -p /tmp/pieces && cp -n .img*/*.part-* .img*/*.whl /tmp/pieces/ 2>/dev/null; find /tmp/pieces -type f | wc -l; du -sh /tmp/pieces ;;
  unpack)  # PREFIX... (default: pack): each pack in order (a later one reuses the store of earlier ones)
    start=$(date +%s); shift
    for prefix in "${@:-pack}"; do
      "${C[@]}" unpack /tmp/pieces "$R" --prefix "$prefix" || exit 1
      rm -f /tmp/pieces/"$prefix".part-* .img*/"$prefix".part-*  # unpacked: not staged again
    done
    # only the roots this unpack made: set-up remounts /dev, which would pull it from under
    # the tests already running in the others
    for root in "$R"/*/; do [ -e "${root}.ready" ] || { "${C[@]}" setup "${root%/}" && touch "${root}.ready"; } || exit 1; done
    echo "unpacked and set up in $(( $(date +%s) - start )) s"; df -h /tmp | tail -1 ;;
  info)
    nvidia-smi -L; nvidia-smi --query-gpu=driver_version,memory.total,clocks.max.sm --format=csv,noheader
    python3 --version; nproc; free -g | sed -n 2p; df -h /tmp | tail -1 ;;
  one)
    shift; one "$@" ;;
  refresh)  # the checkout's smoke_tests/ into every root again (after an edit)
    for root in "$R"/*/; do rm -rf "${root}opt/mlsyskit/smoke_tests" && cp -r smoke_tests "${root}opt/mlsyskit/smoke_tests"; done; echo refreshed ;;
  lanes)
    # Lane 1 holds SGLang starts (SGLang sizes its memory from what is free when it starts:
    # two starting at once on one GPU starve each other): verl GRPO as root, then as UID
    # 1000, then SGLang serving cold and warm with one kernel cache. Lane 2 waits for lane
    # 1's first server, then vLLM (it asks only that its share be free) and OpenRLHF's
    # trainer, root then UID 1000. Lane 3: the small tests, all at once. GPU health runs
    # last, alone on the GPU (it measures peaks).
    # The lanes outlive this device call: they run from a copy of what they read (this
    # script, carry.py, degrade.py, the kit's catalog for the caches, smoke_tests/), so a
    # checkout copied again by a later call cannot change a script under a running bash.
    S=$(kit_copy)
    D=(python3 /tmp/kit/benchmarks/gpu/carry.py run "$R/distributed-pypi" --bind /tmp/kit/benchmarks/gpu:/opt/mlsyskit/benchmarks
       --bind /tmp/degrade:/out -- python /opt/mlsyskit/benchmarks/degrade.py /out/degrade)
    mkdir -p /tmp/degrade
    setsid nohup bash -c "
      ( $S verl-pypi verl_grpo 0 k; $S verl-pypi verl_grpo 1000 k;
        $S verl-pypi sglang_serve 0 s; $S verl-pypi sglang_serve 0 s ) &
      ( sleep 150; until [ -e $R/openrlhf-pypi/.ready ]; do sleep 5; done; $S openrlhf-pypi vllm_serve 0 -; $S openrlhf-pypi vllm_serve 1000 -;
        $S openrlhf-pypi openrlhf_sft 0 -; $S openrlhf-pypi openrlhf_sft 1000 - ) &
      ( for u in 0 1000; do
          $S quantization-pypi quantize \$u - & $S cuda-graph-pypi memory_saver \$u - &
          $S cuda-graph-pypi cuda_graph \$u - & $S verl-pypi verl_sft \$u - & $S verl-pypi cuda_jit \$u - &
        done; wait ) &
      wait
      ${D[*]} > /tmp/degrade/degrade.log 2>&1; rc=\$?; echo \"\$(date +%T) degrade (gpu_health healthy, then loaded): exit \$rc\"
      $S distributed-pypi gpu_health 1000 -
      echo ALL DONE
    " > /tmp/lanes.log 2>&1 < /dev/null &
    echo "lanes started" ;;
  lanes-sglang)
    # The second image run (issues 20 and 23): the sglang topic's own image and the verl
    # image's GRPO. One lane holds every SGLang start, one after the other, so cold and warm
    # starts see the same idle GPU and cores: SGLang serving as root cold, then warm (the
    # same kernel cache `s`), then cold as UID 1000 (its own cache `u`) while the small
    # tests run beside it (cuda_jit, cuda_graph, root and UID 1000); then verl GRPO cold and
    # warm (cache `g`) once the small tests are done. Each SGLang serving run keeps its
    # server log (--workdir) beside its result. SKIP_VERL=1: the sglang image's runs only.
    S=$(kit_copy)
    W=/tmp/results
    rm -f /tmp/small.done
    setsid nohup bash -c "
      ( $S sglang-pypi sglang_serve 0 s --workdir $W/wd-sglang_serve-0-cold
        $S sglang-pypi sglang_serve 0 s --workdir $W/wd-sglang_serve-0-warm
        ( for u in 0 1000; do $S sglang-pypi cuda_jit \$u - & $S sglang-pypi cuda_graph \$u - & done; wait; touch /tmp/small.done ) &
        $S sglang-pypi sglang_serve 1000 u --workdir $W/wd-sglang_serve-1000-cold
        until [ -e /tmp/small.done ]; do sleep 2; done
        [ -n \"\${SKIP_VERL:-}\" ] || { $S verl-pypi verl_grpo 0 g; $S verl-pypi verl_grpo 0 g; } )
      echo ALL DONE
    " > /tmp/lanes.log 2>&1 < /dev/null &
    echo "lanes-sglang started" ;;
  jit)
    # cuda_jit (every topic's toolchain test) in every unpacked image, root and UID 1000 side
    # by side, in this call (short: a torch extension, and flashinfer/SGLang where installed)
    for root in "$R"/*/; do
      image=$(basename "$root"); for u in 0 1000; do one "$image" cuda_jit "$u" - & done
    done; wait; summary ;;
  status)
    cat /tmp/lanes.log 2>/dev/null; summary
    nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader ;;
  collect)
    out=${2:?OUT}; mkdir -p "$out"
    nvidia-smi > /tmp/nvidia-smi.txt 2>&1; nvidia-smi -q >> /tmp/nvidia-smi.txt 2>&1
    cp /tmp/lanes.log /tmp/unpack.log /tmp/ 2>/dev/null
    mapfile -t folders < <(cd "$R" && find . -mindepth 3 -maxdepth 3 -path './*/tmp/results')
    tar --ignore-failed-read -czf "$out/results.tgz" -C "$R" --transform 's,tmp/results/,,' "${folders[@]}" -C /tmp nvidia-smi.txt lanes.log degrade
    summary; ls -la "$out" ;;
esac
