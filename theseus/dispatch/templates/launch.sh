#!/usr/bin/env bash
# Start a job on this host. The job's environment (secrets included) arrives on stdin as
# NUL-separated NAME=VALUE pairs, so it is never written to a file of ours or put on a command
# line. (sbatch hands the environment to slurmctld, which keeps it in its root-only state folder
# while the job exists.)
set -euo pipefail
while IFS= read -r -d '' pair; do export "${pair?}"; done
source {{LIB}}
BACKEND={{BACKEND}}
N_GPUS={{N_GPUS}}
GPU_DIR={{GPU_DIR}}
{{PROCESS_FUNCTIONS}}
fail() { echo "$1" >&2; exit 3; }
# The job's log is private like its folder (the job may print what it was given).
(umask 077 && : >>{{LOG}})
require_tools || exit 3
if [ "$BACKEND" = slurm ]; then
  command -v sbatch >/dev/null || fail "sbatch is not on PATH on $(hostname): is this a SLURM login node?"
  cd "$JOB_DIR"
  sbatch --parsable {{SBATCH}}
  exit 0
fi
if [ "$N_GPUS" -gt 0 ]; then
  # Reserve free GPUs under a lock so that two submits never book the same one.
  mkdir -p "$GPU_DIR"
  exec 8>"$GPU_DIR/.lock"
  flock 8
  command -v nvidia-smi >/dev/null || fail "nvidia-smi not found on $(hostname): is this a GPU host?"
  mapfile -t free < <(bash {{FREE_GPUS}} "$GPU_DIR")
  [ "${#free[@]}" -ge "$N_GPUS" ] || fail "$(hostname) has fewer than $N_GPUS free GPUs now"
  chosen=$(IFS=,; echo "${free[*]:0:$N_GPUS}")
  export CUDA_VISIBLE_DEVICES=$chosen
fi
setsid bash {{RUN}} </dev/null >>{{LOG}} 2>&1 &
pid=$!
# with its start time: once it has ended, its id may be given to another process
start=$(started "$pid" || true)
echo "$pid $start" >"$JOB_DIR/pid"
if [ "$N_GPUS" -gt 0 ]; then
  for gpu in ${chosen//,/ }; do echo "$pid $start" >"$GPU_DIR/$gpu"; done
  flock -u 8
fi
echo "$pid"
