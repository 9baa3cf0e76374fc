#!/usr/bin/env bash
# A real two-node Slurm cluster on this one machine, for the tests (Debian's slurm-wlm 22.05
# and munge): slurmctld and two slurmd, each node in its own network namespace with its own
# address, so that what crosses "the network" between nodes really does.
#
#   tests/slurm/cluster.sh up DIR     # start it; DIR holds its config, state, logs, sockets
#   tests/slurm/cluster.sh down DIR   # stop what `up` started and what its jobs left, remove the namespaces
#
# Layout (10.77.0.0/24): a bridge in the namespace kitslurm-br (10.77.0.1, slurmctld there),
# nodes n1 (10.77.0.11) and n2 (10.77.0.12) in kitslurm-n1/-n2 with a veth named eth0 on the
# bridge, and the host itself on it as 10.77.0.254 (veth kitslurm-host), so that sbatch and
# squeue run from the host unchanged. The bridge sits in its own namespace because Docker
# leaves the host's FORWARD chain at DROP. slurmd is started with `nsenter --net=`, not `ip
# netns exec`, which remounts /sys. Every command needs SLURM_CONF=DIR/slurm.conf.
set -euo pipefail

action=${1:?up or down}
dir=${2:?the cluster folder}
PREFIX=kitslurm
NODES=(n1 n2)
ADDR=(10.77.0.11 10.77.0.12)
CTL=10.77.0.1
HOST_ADDR=10.77.0.254

netns() { echo "/run/netns/$PREFIX-$1"; }

# stop_daemon PIDFILE NAME: stop the daemon a pidfile names, only while that PID is still
# NAME of this cluster (its command line names $dir): a stale pidfile whose PID now belongs to
# another process is left alone.
stop_daemon() {
  local pidfile=$1 name=$2 pid cmdline
  [ -s "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  rm -f "$pidfile"
  [[ $pid =~ ^[0-9]+$ ]] || return 0
  cmdline=$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null || true)
  case "$cmdline" in *"$name"*"$dir/"*) ;; *) return 0 ;; esac
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}

# stop_namespace NS: every process in the network namespace NS: slurmd or slurmctld and, on
# a node, whatever its jobs left running (slurmstepd and the steps' programs outlive slurmd).
stop_namespace() {
  local ns=$1 pids
  [ -e "$(netns "$ns")" ] || return 0
  pids=$(ip netns pids "$PREFIX-$ns" 2>/dev/null || true)
  [ -n "$pids" ] || return 0
  # shellcheck disable=SC2086 # one PID per word
  kill $pids 2>/dev/null || true
  for _ in $(seq 50); do
    pids=$(ip netns pids "$PREFIX-$ns" 2>/dev/null || true)
    [ -n "$pids" ] || return 0
    sleep 0.1
  done
  # shellcheck disable=SC2086
  kill -9 $pids 2>/dev/null || true
  for _ in $(seq 50); do [ -z "$(ip netns pids "$PREFIX-$ns" 2>/dev/null || true)" ] && return 0; sleep 0.1; done
  echo "warning: processes left in $PREFIX-$ns: $(ip netns pids "$PREFIX-$ns" 2>/dev/null | tr '\n' ' ')" >&2
}

down() {
  for node in "${NODES[@]}"; do stop_namespace "$node"; done
  stop_namespace br
  for node in "${NODES[@]}"; do stop_daemon "$dir/run/slurmd-$node.pid" slurmd; done
  stop_daemon "$dir/run/slurmctld.pid" slurmctld
  stop_daemon "$dir/munge/munged.pid" munged
  ip link del "$PREFIX-host" 2>/dev/null || true
  rm -rf "$dir/roots"  # the apptainer stand-in's scratch roots (unmounted already)
  for ns in br "${NODES[@]}"; do ip netns del "$PREFIX-$ns" 2>/dev/null || true; done
}

up() {
  down  # a cluster left by an interrupted run
  mkdir -p "$dir"/{state,log,run,munge,dev} "${NODES[@]/#/$dir/spool/}"
  chmod 755 "$dir" "$dir/munge"  # munge's clients must reach its socket
  # The apptainer stand-in's roots and node /tmp folders (KIT_STANDIN_ROOTS): private to root,
  # so that nobody can plant a link where it creates and chmods as root.
  mkdir -m 700 "$dir/roots"
  : > "$dir/dev/gpu0"            # what gres.conf's File= names: GPUs slurmd can see
  if [ ! -s "$dir/munge/munge.key" ]; then
    head -c 1024 /dev/urandom > "$dir/munge/munge.key"
    chmod 400 "$dir/munge/munge.key"
  fi
  munged --force --socket="$dir/munge/munge.socket" --key-file="$dir/munge/munge.key" \
    --pid-file="$dir/munge/munged.pid" --log-file="$dir/log/munged.log" --seed-file="$dir/munge/seed"

  ip netns add "$PREFIX-br"
  ip -n "$PREFIX-br" link set lo up
  ip -n "$PREFIX-br" link add br0 type bridge
  ip -n "$PREFIX-br" addr add "$CTL/24" dev br0
  ip -n "$PREFIX-br" link set br0 up
  for i in "${!NODES[@]}"; do
    node=${NODES[$i]}
    ip netns add "$PREFIX-$node"
    ip -n "$PREFIX-$node" link set lo up
    ip -n "$PREFIX-br" link add "p-$node" type veth peer name eth0 netns "$PREFIX-$node"
    ip -n "$PREFIX-br" link set "p-$node" master br0 up
    ip -n "$PREFIX-$node" addr add "${ADDR[$i]}/24" dev eth0
    ip -n "$PREFIX-$node" link set eth0 up
    # A default route, as real nodes have: Ray finds its own address by routing towards 8.8.8.8.
    ip -n "$PREFIX-$node" route add default via "$CTL"
    # ...but nothing is forwarded beyond the bridge: make DNS fail at once, not after timeouts.
    awk '$1 == "nameserver" && $2 !~ /:/ {print $2}' /etc/resolv.conf | while read -r server; do
      ip -n "$PREFIX-$node" route add unreachable "$server/32" 2>/dev/null || true
    done
  done
  ip link add "$PREFIX-host" type veth peer name p-host netns "$PREFIX-br"
  ip -n "$PREFIX-br" link set p-host master br0 up
  ip addr add "$HOST_ADDR/24" dev "$PREFIX-host"
  ip link set "$PREFIX-host" up

  local host cpus mem
  host=$(hostname -s)
  cpus=$(nproc)
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 4 ))
  cat > "$dir/slurm.conf" <<EOF
ClusterName=kit
SlurmctldHost=$host($CTL)
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
CryptoType=crypto/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd-%n.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd-%n.log
ProctrackType=proctrack/pgid
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
ReturnToService=2
MpiDefault=none
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
MinJobAge=300
NodeName=n1 NodeAddr=${ADDR[0]} CPUs=$cpus RealMemory=$mem Gres=gpu:1 State=UNKNOWN
NodeName=n2 NodeAddr=${ADDR[1]} CPUs=$cpus RealMemory=$mem Gres=gpu:1 State=UNKNOWN
PartitionName=kit Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
  cat > "$dir/gres.conf" <<EOF
NodeName=n[1-2] Name=gpu File=$dir/dev/gpu0
EOF
  export SLURM_CONF=$dir/slurm.conf
  nsenter --net="$(netns br)" slurmctld -f "$SLURM_CONF"
  for node in "${NODES[@]}"; do
    # Its own hostname too (a UTS namespace), so that a job step knows which node it is on.
    # shellcheck disable=SC2016 # $1 and $SLURM_CONF expand in the inner shell
    nsenter --net="$(netns "$node")" unshare --uts sh -c 'hostname "$1"; exec slurmd -f "$SLURM_CONF" -N "$1"' - "$node"
  done
  for _ in $(seq 60); do
    if [ "$(sinfo -h -N -o '%T' 2>/dev/null | grep -c idle)" = "${#NODES[@]}" ]; then
      echo "slurm cluster up: ${NODES[*]} idle (SLURM_CONF=$SLURM_CONF)"
      return 0
    fi
    sleep 1
  done
  echo "the slurm cluster did not come up:" >&2
  sinfo -N -l >&2 || true
  tail -n 20 "$dir"/log/*.log >&2 || true
  return 1
}

case "$action" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down DIR" >&2; exit 2 ;;
esac
