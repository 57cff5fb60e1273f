#!/usr/bin/env bash
# A real two-node SLURM cluster on this machine (run as root on Debian; idempotent), beside the
# one-node cluster of up.sh: each node is a network + UTS + mount namespace with its own address
# (a veth on a private bridge, not linked to any outside interface), hostname and /etc/hosts, and
# its own slurmd; slurmctld and munged stay in the root namespace. Filesystems are shared, so jobs
# see the same /tmp, /work and venvs as this machine. Writes $NODES_LAB/env.sh (SLURM_CONF).
# Env: NODES_LAB (/tmp/theseus-testcluster-nodes)  NET (10.213.79: bridge .1, node1 .11, node2 .12)
#      NNODES (2)  CTLD_PORT (6927)  SLURMD_PORT (6928): chosen to clash with no default cluster.
set -euo pipefail
LAB=${NODES_LAB:-/tmp/theseus-testcluster-nodes}
NET=${NET:-10.213.79}
NNODES=${NNODES:-2}
CTLD_PORT=${CTLD_PORT:-6927}
SLURMD_PORT=${SLURMD_PORT:-6928}
BR=thn-br
CTL=$(hostname -s)
CTL_IP=$NET.1
SOCK=$LAB/munge/munge.socket
export SLURM_CONF=$LAB/etc/slurm.conf

alive() { local p; p=$(cat "$1" 2>/dev/null) && [ -r "/proc/$p/stat" ] && [ "$(cut -d' ' -f3 "/proc/$p/stat")" != Z ]; }
nodes=()
for ((i = 1; i <= NNODES; i++)); do nodes+=("node$i"); done
ip_of() { echo "$NET.$((10 + ${1#node}))"; }

# 1. packages (policy-rc.d keeps the postinst scripts from starting system-wide daemons)
pkgs=(slurmctld slurmd slurm-client munge iproute2 util-linux)
if ! dpkg -s "${pkgs[@]}" >/dev/null 2>&1; then
  own_policy=
  [ -e /usr/sbin/policy-rc.d ] || { printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; own_policy=1; }
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
  [ -z "$own_policy" ] || rm -f /usr/sbin/policy-rc.d
fi
mkdir -p "$LAB"/munge "$LAB"/etc "$LAB"/bin "$LAB"/slurm/{state,log}
for n in "${nodes[@]}"; do mkdir -p "$LAB/slurm/spool/$n"; done
chmod 711 "$LAB/munge"   # munge clients in every namespace reach the socket by its path

# 2. network: bridge $BR ($CTL_IP) in the root namespace; per node a namespace thn-nodeN whose
# eth0 is the peer of a veth on the bridge.
ip link show "$BR" >/dev/null 2>&1 || ip link add "$BR" type bridge
# (not `ip ... | grep -q`: under pipefail, grep quitting early fails the pipe with SIGPIPE)
[[ $(ip addr show dev "$BR") == *"inet $CTL_IP/"* ]] || ip addr add "$CTL_IP/24" dev "$BR"
ip link set "$BR" up
for n in "${nodes[@]}"; do
  ns=thn-$n v=thn-v${n#node}
  [ -e "/run/netns/$ns" ] || ip netns add "$ns"
  if ! ip link show "$v" >/dev/null 2>&1; then
    ip netns exec "$ns" ip link del eth0 2>/dev/null || true
    ip link add "$v" type veth peer name eth0 netns "$ns"
  fi
  ip link set "$v" master "$BR" up
  ip netns exec "$ns" sh -c "ip link set lo up; ip addr show dev eth0 | grep -q 'inet $(ip_of "$n")/' || ip addr add $(ip_of "$n")/24 dev eth0; ip link set eth0 up"
done
# Bind-mounted over /etc/hosts inside every node: gloo binds to what the node's own hostname
# resolves to (with the machine's hosts file, the loopback), and JAX's SLURM detection and our
# job script name the first node as the coordinator.
{ echo "127.0.0.1 localhost"; echo "$CTL_IP $CTL"; for n in "${nodes[@]}"; do echo "$(ip_of "$n") $n"; done; } >"$LAB/etc/hosts"

# 3. munge: its own daemon and key; a path socket works across network namespaces.
[ -s "$LAB/munge/munge.key" ] || mungekey -c -k "$LAB/munge/munge.key"
chmod 600 "$LAB/munge/munge.key"
alive "$LAB/munge/munged.pid" || munged --key-file="$LAB/munge/munge.key" --socket="$SOCK" \
  --pid-file="$LAB/munge/munged.pid" --log-file="$LAB/munge/munged.log" --seed-file="$LAB/munge/munged.seed"
munge -S "$SOCK" -n | unmunge -S "$SOCK" >/dev/null

# 4. slurm.conf: slurmctld must be named by this machine's short hostname (it checks), reached by
# the nodes at the bridge address; per-node slurmd files through %n; cred_expire=10 makes a
# requeued job start again in about 11 s; OverSubscribe lets the tests' jobs share the two
# nodes' cores (each advertises this machine's) instead of queueing behind each other.
hw=$(slurmd -C | head -1 | sed 's/^NodeName=[^ ]* //')
cat >"$SLURM_CONF.new" <<CONF
ClusterName=theseusnodes
SlurmctldHost=${CTL}($CTL_IP)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCK,cred_expire=10
StateSaveLocation=$LAB/slurm/state
SlurmdSpoolDir=$LAB/slurm/spool/%n
SlurmctldPidFile=$LAB/slurm/slurmctld.pid
SlurmdPidFile=$LAB/slurm/slurmd-%n.pid
SlurmctldLogFile=$LAB/slurm/log/slurmctld.log
SlurmdLogFile=$LAB/slurm/log/slurmd-%n.log
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
$(for n in "${nodes[@]}"; do echo "NodeName=$n NodeAddr=$(ip_of "$n") $hw State=UNKNOWN"; done)
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
if ! cmp -s "$SLURM_CONF.new" "$SLURM_CONF"; then   # config changed: restart our daemons
  mv "$SLURM_CONF.new" "$SLURM_CONF"
  for p in "$LAB"/slurm/slurmd-*.pid "$LAB/slurm/slurmctld.pid"; do
    alive "$p" || continue
    kill "$(cat "$p")"
    for _ in $(seq 100); do alive "$p" || break; sleep 0.1; done
  done
else
  rm -f "$SLURM_CONF.new"
fi

# 5. daemons. Not `ip netns exec` for slurmd: it mounts a fresh /sys that hides the cgroup
# filesystem, and slurmd refuses to start; nsenter + unshare leave /sys as it is.
alive "$LAB/slurm/slurmctld.pid" || slurmctld -f "$SLURM_CONF"
for n in "${nodes[@]}"; do
  alive "$LAB/slurm/slurmd-$n.pid" || nsenter --net="/run/netns/thn-$n" unshare --uts --mount --propagation private \
    sh -c "hostname $n && mount --bind $LAB/etc/hosts /etc/hosts && exec slurmd -f $SLURM_CONF -N $n"
done
# `$LAB/bin/on NODE CMD...` runs a command inside a node's namespaces.
cat >"$LAB/bin/on" <<ON
#!/bin/sh
n=\$1; shift; exec nsenter -t \$(cat $LAB/slurm/slurmd-\$n.pid) -n -u -m "\$@"
ON
chmod +x "$LAB/bin/on"
st=
for _ in $(seq 150); do
  st=$(sinfo -h -o '%T %D' 2>/dev/null | tr '\n' ' ' || true)
  [[ $st == "idle $NNODES " || $st == *mixed* || $st == *alloc* ]] && break
  [[ $st == *down* || $st == *drain* ]] && { scontrol update NodeName="$(IFS=,; echo "${nodes[*]}")" State=RESUME 2>/dev/null || true; }
  sleep 0.2
done
[[ $st == "idle $NNODES " || $st == *mixed* || $st == *alloc* ]] || { echo "slurm node states: '$st'" >&2; sinfo -N >&2 || true; exit 1; }
cat >"$LAB/env.sh" <<ENV
export SLURM_CONF=$SLURM_CONF
export THESEUS_TESTCLUSTER_NODES=$LAB
ENV
echo "two-node test cluster up: ${nodes[*]} ($st); source $LAB/env.sh; $LAB/bin/on node1 CMD"
