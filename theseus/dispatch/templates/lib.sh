# Shared by the scripts of one job; every value below was quoted when the script was written.
JOB_DIR={{JOB_DIR}}
SNAPSHOT={{SNAPSHOT}}
ROOT={{ROOT}}
META_URL={{META_URL}}
JUICEFS_MOUNT_OPTIONS=({{JUICEFS_MOUNT_OPTIONS}})
UV_GROUP_ARGS=({{UV_GROUP_ARGS}})
# One environment per (uv.lock, pyproject.toml, groups), shared by every snapshot that has them.
VENV={{VENV}}
RUN_ARGS=({{RUN_ARGS}})
MOUNTED_HERE=0
UNMOUNT_WAIT=15

set_status() {
  printf '%s\n' "$1" >"$JOB_DIR/status.tmp.$$" && mv -f "$JOB_DIR/status.tmp.$$" "$JOB_DIR/status"
}

# Mount the cluster's JuiceFS volume at ROOT unless it is mounted already; the metadata password
# comes from META_PASSWORD in the environment, never from the command line.
mount_root() {
  [ -n "$META_URL" ] || return 0
  mkdir -p "$ROOT"
  exec 9>"$JOB_DIR/.mount.lock"
  flock 9
  if mountpoint -q "$ROOT"; then
    echo "theseus: $ROOT is already mounted; using it as is"
  else
    echo "theseus: mounting JuiceFS at $ROOT"
    juicefs mount -d "${JUICEFS_MOUNT_OPTIONS[@]}" "$META_URL" "$ROOT" || { flock -u 9; return 1; }
    MOUNTED_HERE=1
  fi
  flock -u 9
}

# Unmount only what this job mounted, and never by force: another job may still use it. A
# process the job started can hold a file open for a moment after the job exits, so a busy
# volume is retried for UNMOUNT_WAIT seconds before it is left mounted.
unmount_root() {
  [ "$MOUNTED_HERE" = 1 ] || return 0
  local waited=0 err
  until err=$(juicefs umount "$ROOT" 2>&1); do
    if [ "$waited" -ge "$UNMOUNT_WAIT" ]; then
      printf '%s\n' "$err"
      echo "theseus: $ROOT is busy; left mounted"
      return 0
    fi
    sleep 1
    waited=$((waited + 1))
  done
  echo "theseus: unmounted $ROOT"
}

# theseus itself runs from the snapshot folder (python -m), so only its dependencies are installed.
sync_environment() {
  mkdir -p "$(dirname "$VENV")"
  (cd "$SNAPSHOT" && UV_PROJECT_ENVIRONMENT=$VENV flock "$VENV.lock" \
    uv sync --frozen --no-install-project --quiet "${UV_GROUP_ARGS[@]}")
}

run_stages() {
  (cd "$SNAPSHOT" && "$VENV/bin/python" -m theseus.cli run "${RUN_ARGS[@]}")
}

# 75 is the trainer's "stopped early, checkpoint saved".
finish() {
  case $1 in
    0) set_status completed ;;
    75) set_status preempted ;;
    *) set_status "failed $1" ;;
  esac
}
