#!/usr/bin/env bash
# One job started detached by the launcher: mount, set up the environment, run the stages.
set -uo pipefail
source {{LIB}}
# The trainer handles these signals itself; the shell waits for it and records how it ended.
trap ':' TERM INT USR1 HUP
set_status running
echo "theseus: starting on $(hostname) at $(date -u +%FT%TZ)"
mount_root || { set_status "failed 3"; echo "theseus: could not mount $ROOT"; exit 3; }
if ! sync_environment; then
  unmount_root
  set_status "failed 4"
  exit 4
fi
run_stages
rc=$?
unmount_root
finish $rc
echo "theseus: finished with exit code $rc at $(date -u +%FT%TZ)"
exit $rc
