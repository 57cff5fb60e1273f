#!/usr/bin/env bash
# Stop what nodes-up.sh started: its jobs, each slurmd, slurmctld and munged (by pid file, checking
# the process name first), whatever is left in its namespaces, then the namespaces thn-node*, the
# veths thn-v* and the bridge thn-br. PURGE=1 also deletes state and logs (the munge key is kept).
LAB=${NODES_LAB:-/tmp/theseus-testcluster-nodes}
export SLURM_CONF=$LAB/etc/slurm.conf
running() { [ -r "/proc/$1/stat" ] && [ "$(cut -d' ' -f3 "/proc/$1/stat")" != Z ]; }
stop() {   # $1 pid file, $2 expected /proc/PID/comm
  [ -s "$1" ] || { rm -f "$1"; return 0; }
  local p; p=$(cat "$1")
  if [ "$(cat "/proc/$p/comm" 2>/dev/null)" = "$2" ]; then
    kill -TERM "$p"
    for _ in $(seq 150); do running "$p" || break; sleep 0.1; done
    running "$p" && kill -KILL "$p"
  fi
  rm -f "$1"
}
if [ -s "$LAB/slurm/slurmctld.pid" ] && scancel -u root 2>/dev/null; then   # let slurmstepd finish
  for _ in $(seq 100); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.2; done
fi
for f in "$LAB"/slurm/slurmd-*.pid; do [ -e "$f" ] && stop "$f" slurmd; done
stop "$LAB/slurm/slurmctld.pid" slurmctld
stop "$LAB/munge/munged.pid" munged
for nsf in /run/netns/thn-node*; do
  [ -e "$nsf" ] || continue
  ns=${nsf##*/}
  # only processes inside our own namespaces (job steps left over)
  for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
  ip netns del "$ns"
done
for l in $(ip -o link show 2>/dev/null | grep -oE ' thn-v[0-9]+'); do ip link del "$l" 2>/dev/null || true; done
ip link show thn-br >/dev/null 2>&1 && ip link del thn-br
if [ "${PURGE:-0}" = 1 ]; then
  rm -rf "$LAB/slurm" "$LAB/etc" "$LAB/bin" "$LAB/env.sh" "$LAB"/munge/munged.{log,seed}
fi
exit 0
