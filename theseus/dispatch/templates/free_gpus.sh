#!/usr/bin/env bash
# Print the indices of GPUs that run no compute process and are not reserved by a live job.
# $1: the folder of reservations (one file per GPU index holding the job's process id).
set -euo pipefail
{{PROCESS_FUNCTIONS}}
command -v nvidia-smi >/dev/null || { echo "nvidia-smi not found on $(hostname)" >&2; exit 3; }
busy=$(nvidia-smi --query-compute-apps=gpu_uuid --format=csv,noheader 2>/dev/null || true)
nvidia-smi --query-gpu=index,uuid --format=csv,noheader | while IFS=', ' read -r index uuid; do
  if printf '%s\n' "$busy" | grep -qxF "$uuid"; then continue; fi
  if [ -s "$1/$index" ] && ours "$1/$index"; then continue; fi
  echo "$index"
done
