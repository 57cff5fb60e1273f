#!/usr/bin/env bash
{{DIRECTIVES}}# Run {{NAME}} by hand, written by `theseus bootstrap` for cluster {{CLUSTER}}: `bash THIS_FILE` on
# one of its hosts runs it here, in the foreground; `sbatch THIS_FILE` on its SLURM login node
# queues it (bash reads the #SBATCH lines above as comments).
# It holds the code and the stage configs.
{{ENVIRONMENT_NOTE}}
set -euo pipefail
SNAPSHOT={{SNAPSHOT}}
JOB_DIR={{JOB_DIR}}
# The code, unpacked once per content: a second run, or a requeued job, finds it there.
if [ ! -e "$SNAPSHOT/.complete" ]; then
  staging="$SNAPSHOT.incoming.$$"
  mkdir -p "$staging"
  base64 -d <<'THESEUS_SNAPSHOT' | tar -xzf - -C "$staging"
{{SNAPSHOT_TARBALL}}
THESEUS_SNAPSHOT
  touch "$staging/.complete"
  mv -T "$staging" "$SNAPSHOT" 2>/dev/null || rm -rf "$staging"
fi
# The job's folder is private: it holds the stage configs.
(umask 077 && mkdir -p "$JOB_DIR")
base64 -d <<'THESEUS_JOB' | tar -xzf - -C "$JOB_DIR"
{{JOB_TARBALL}}
THESEUS_JOB
source "$JOB_DIR/lib.sh"
require_tools || exit 3
# Under SLURM (sbatch, or a shell in an allocation) srun starts one task per process; otherwise
# the one process runs here.
if [ -n "${SLURM_JOB_ID:-}" ]; then exec bash "$JOB_DIR/job.sbatch"; fi
exec bash "$JOB_DIR/run.sh"
