#!/usr/bin/env bash
# Stop what up.sh started, by pid file (checking the process name first), and unmount any
# JuiceFS mount of the test volume. PURGE=1 also deletes state and logs (keys are kept).
LAB=${LAB:-/tmp/theseus-testcluster}
export SLURM_CONF=$LAB/etc/slurm.conf
running() { [ -r "/proc/$1/stat" ] && [ "$(cut -d' ' -f3 "/proc/$1/stat")" != Z ]; }
stop() {   # $1 pid file, $2 expected /proc/PID/comm
  [ -s "$1" ] || return 0
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
grep ' fuse.juicefs ' /proc/mounts | while read -r source target _; do
  [ "$source" = "JuiceFS:theseuslab" ] && { "$LAB/juicefs/bin/juicefs" umount "$target" || umount -l "$target"; }
done
stop "$LAB/ssh/sshd.pid" sshd
stop "$LAB/slurm/slurmd.pid" slurmd
stop "$LAB/slurm/slurmctld.pid" slurmctld
stop "$LAB/redis/redis.pid" redis-server
stop "$LAB/munge/munged.pid" munged
if [ "${PURGE:-0}" = 1 ]; then
  rm -rf "$LAB/slurm" "$LAB/etc" "$LAB/env.sh" "$LAB/redis" "$LAB/juicefs-bucket" "$LAB"/munge/munged.{log,seed} "$LAB/ssh/sshd.log"
fi
"$(dirname "$0")/nodes-down.sh"
exit 0
