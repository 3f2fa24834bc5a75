#!/usr/bin/env bash
# Start a one-node SLURM cluster on this machine (munged, slurmctld, slurmd on localhost) for
# the tests in tests/slurm/. Needs root and Debian's slurm-wlm and munge packages
# (.ci/run installs them). Idempotent: daemons already running are left alone, and a
# slurm.conf that this script did not write is never replaced.
#
#   bash tests/slurm/start_slurm.sh        # start (or check) the cluster; prints sinfo
#   SLURM_CPUS=16 bash tests/slurm/start_slurm.sh
#
# The node claims SLURM_CPUS CPUs (default 16) whatever the machine has
# (SlurmdParameters=config_overrides), so 9-rank jobs fit on a 2-core CI runner.
set -euo pipefail

CPUS="${SLURM_CPUS:-16}"
CONF=/etc/slurm/slurm.conf
MARK="# written by fednas-mpi tests/slurm/start_slurm.sh"
NODE="$(hostname -s)"

for bin in munged slurmctld slurmd sbatch; do
    command -v "$bin" >/dev/null || [ -x "/usr/sbin/$bin" ] || {
        echo "start_slurm: $bin not found; install it: apt-get install -y slurm-wlm munge" >&2
        exit 1
    }
done
[ "$(id -u)" = 0 ] || { echo "start_slurm: needs root (starts system daemons)" >&2; exit 1; }

# ---- munge: the authentication daemon every SLURM message goes through
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
install -d -o munge -g munge -m 0755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 50); do munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
fi

# ---- slurm.conf: one node, one partition, everything as root, no cgroups or accounting
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
if [ ! -f "$CONF" ] || head -1 "$CONF" | grep -qF "$MARK"; then
    cat > "$CONF.new" <<CONFEOF
$MARK
ClusterName=fednas
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
JobRequeue=1
MinJobAge=3600
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONFEOF
    if ! cmp -s "$CONF.new" "$CONF"; then
        mv "$CONF.new" "$CONF"
        changed=1
    else
        rm -f "$CONF.new"
    fi
fi

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
if [ "${changed:-0}" = 1 ] && alive /run/slurmctld.pid; then
    scontrol reconfigure || true
fi
alive /run/slurmctld.pid || /usr/sbin/slurmctld
alive /run/slurmd.pid || /usr/sbin/slurmd -N "$NODE"

# wait until the node takes jobs
for _ in $(seq 60); do
    state="$(sinfo -h -n "$NODE" -o %T 2>/dev/null || true)"
    case "$state" in
        idle*|mixed*|allocated*|completing*) break ;;
        down*|drain*) scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true ;;
    esac
    sleep 0.5
done
sinfo
case "$(sinfo -h -n "$NODE" -o %T)" in
    idle*|mixed*|allocated*|completing*) exit 0 ;;
    *) echo "start_slurm: node $NODE is not ready; see /var/log/slurm/" >&2; exit 1 ;;
esac
