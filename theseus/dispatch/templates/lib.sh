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
FRESH={{FRESH}}
# The state of the JuiceFS mounts that the jobs of each host share (see mount_state).
MOUNTS={{MOUNTS}}
USING_MOUNT=0
UNMOUNT_WAIT=15

# What the job needs on PATH, checked before it is started; says which is missing and how to fix it.
require_tools() {
  if ! command -v uv >/dev/null; then
    echo "uv is not installed on $(hostname): install it (pip install uv) or add its folder to PATH in the host's env" >&2
    return 3
  fi
  if [ -n "$META_URL" ] && ! command -v juicefs >/dev/null; then
    echo "juicefs is not installed on $(hostname): install it (https://juicefs.com/docs/community/installation) or add its folder to PATH in the host's env" >&2
    return 3
  fi
}

set_status() {
  printf '%s\n' "$1" >"$JOB_DIR/status.tmp.$$" && mv -f "$JOB_DIR/status.tmp.$$" "$JOB_DIR/status"
}

# The jobs of this host that use a volume theseus mounted at ROOT register in one folder per
# (host, mount point) under the work folder, guarded by its lock; the last to leave unmounts it.
# users/PID holds the process group of the job (the shell that PID is, and what it started): a
# job killed outright leaves a file whose group is gone, and it is counted as left.
mount_state() {
  local key
  key=$(printf '%s' "$ROOT" | sha256sum | cut -c1-16)
  printf '%s/%s/%s\n' "$MOUNTS" "$(hostname)" "$key"
}

lock_mount() {
  exec 9>"$MOUNT_STATE/lock" && flock 9
}

unlock_mount() {
  flock -u 9
  exec 9>&-
}

# The volume at ROOT is the one theseus mounted (not one mounted since by someone else).
mounted_by_theseus() {
  [ -s "$MOUNT_STATE/mounted" ] && [ "$(cat "$MOUNT_STATE/mounted")" = "$(stat -c %d "$ROOT")" ]
}

register_user() {
  local stat
  stat=$(<"/proc/$$/stat")
  set -- ${stat##*) }
  printf '%s\n' "$3" >"$MOUNT_STATE/users/$$"
  USING_MOUNT=1
}

# How many other jobs still use the volume; forgets those whose processes are all gone.
other_users() {
  local file group count=0
  for file in "$MOUNT_STATE"/users/*; do
    [ -f "$file" ] || continue
    group=$(cat "$file" 2>/dev/null)
    if [ -n "$group" ] && kill -0 -- "-$group" 2>/dev/null; then
      count=$((count + 1))
    else
      rm -f "$file"
    fi
  done
  echo "$count"
}

# Mount the cluster's JuiceFS volume at ROOT unless it is mounted already; the metadata password
# comes from META_PASSWORD in the environment, never from the command line. A volume someone else
# mounted is used as it is and never unmounted.
mount_root() {
  [ -n "$META_URL" ] || return 0
  MOUNT_STATE=$(mount_state)
  mkdir -p "$ROOT" "$MOUNT_STATE/users" && lock_mount || return 1
  if ! mountpoint -q "$ROOT"; then
    echo "theseus: mounting JuiceFS at $ROOT"
    rm -f "$MOUNT_STATE/mounted"
    juicefs mount -d "${JUICEFS_MOUNT_OPTIONS[@]}" "$META_URL" "$ROOT" || { unlock_mount; return 1; }
    stat -c %d "$ROOT" >"$MOUNT_STATE/mounted"
    register_user
  elif mounted_by_theseus; then
    echo "theseus: $ROOT is already mounted by theseus; sharing it with the jobs using it"
    register_user
  else
    echo "theseus: $ROOT is already mounted; using it as is"
  fi
  unlock_mount
}

# Leave the volume; the last job using a volume theseus mounted unmounts it, never by force. A
# process the job started can hold a file open for a moment after the job exits, so a busy
# volume is retried for UNMOUNT_WAIT seconds (under the lock, so that no job starts using it
# meanwhile) before it is left mounted for the next job to unmount.
unmount_root() {
  [ "$USING_MOUNT" = 1 ] || return 0
  USING_MOUNT=0
  lock_mount || return 0
  rm -f "$MOUNT_STATE/users/$$"
  local others waited=0 err
  others=$(other_users)
  if [ "$others" -gt 0 ]; then
    echo "theseus: $ROOT is still used by $others other job(s); left mounted"
  elif ! mountpoint -q "$ROOT" || ! mounted_by_theseus; then
    echo "theseus: $ROOT is no longer the volume theseus mounted; left alone"
  else
    until err=$(juicefs umount "$ROOT" 2>&1); do
      if [ "$waited" -ge "$UNMOUNT_WAIT" ]; then
        printf '%s\n' "$err"
        echo "theseus: $ROOT is busy; left mounted"
        unlock_mount
        return 0
      fi
      sleep 1
      waited=$((waited + 1))
    done
    rm -f "$MOUNT_STATE/mounted"
    echo "theseus: unmounted $ROOT"
  fi
  unlock_mount
}

# theseus itself runs from the snapshot folder (python -m), so only its dependencies are installed.
sync_environment() {
  mkdir -p "$(dirname "$VENV")"
  (cd "$SNAPSHOT" && UV_PROJECT_ENVIRONMENT=$VENV flock "$VENV.lock" \
    uv sync --frozen --no-install-project --quiet "${UV_GROUP_ARGS[@]}")
}

# `submit --fresh` starts the run over at the job's first start only: a job SLURM requeued
# (time limit, preemption) resumes what that start began.
run_stages() {
  local args=("${RUN_ARGS[@]}")
  if [ "$FRESH" = 1 ] && [ "${SLURM_RESTART_COUNT:-0}" = 0 ]; then args+=(--fresh); fi
  (cd "$SNAPSHOT" && "$VENV/bin/python" -m theseus.cli run "${args[@]}")
}

# 75 is the trainer's "stopped early, checkpoint saved".
finish() {
  case $1 in
    0) set_status completed ;;
    75) set_status preempted ;;
    *) set_status "failed $1" ;;
  esac
}
