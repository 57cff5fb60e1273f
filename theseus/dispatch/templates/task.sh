#!/usr/bin/env bash
# One task of a SLURM job: a JAX process that joins the others through THESEUS_COORDINATOR.
set -uo pipefail
source {{LIB}}
trap ':' TERM INT USR1 HUP
export THESEUS_PROCESS_ID=$SLURM_PROCID
mount_root || { echo "theseus: could not mount $ROOT on $(hostname)"; exit 3; }
run_stages
rc=$?
unmount_root
exit $rc
