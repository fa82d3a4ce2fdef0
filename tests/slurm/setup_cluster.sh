#!/usr/bin/env bash
# Stand up a one-node SLURM cluster on this machine, for the SLURM tests (tests/test_slurm.py).
#
# What runs: munged (authentication), MariaDB + slurmdbd (the accounting that the Snakemake SLURM executor
# plugin's `sacct` status queries need), slurmctld (controller) and slurmd (the only compute node), all from
# Debian's packages, all talking over 127.0.0.1: slurmctld, slurmd and MariaDB listen on loopback only; slurmdbd
# (22.05 has no option to bind it) listens on every address of port 6819 and answers only munge-authenticated
# requests, whose key exists only on this machine. Must run as root on a Debian bookworm machine; works without
# systemd (the daemons are started directly).
#
# The node gets this host's real CPU count and memory (from `slurmd -C`) and a `gpu` GRES backed by fake
# device files (/dev/fakegpu<i>, character devices equal to /dev/null: slurmd drops GPUs without a File), so
# jobs that request GPUs (`--gpus=N`, `--gres=gpu:N`, or `--gpus=<type>:N` for the type in
# $MOIR_SLURM_GPU_TYPE) are scheduled and run on the CPU.
#
# Idempotent: a second run rewrites the configuration, restarts only the daemons whose configuration changed
# and leaves running ones alone. Tear down with tests/slurm/teardown_cluster.sh.
#
# Environment (all optional):
#   MOIR_SLURM_CLUSTER    cluster name           (default: moir)
#   MOIR_SLURM_PARTITION  the one partition      (default: debug)
#   MOIR_SLURM_ACCOUNT    account for root's jobs (default: moir)
#   MOIR_SLURM_GPU_TYPE   GRES type of the fake GPUs (default: fake)
#   MOIR_SLURM_GPUS       number of fake GPUs on the node (default: the CPU count)
#   MOIR_SLURM_SKIP_APT=1 do not run apt-get (the packages are known to be installed)
set -euo pipefail

CLUSTER=${MOIR_SLURM_CLUSTER:-moir}
PARTITION=${MOIR_SLURM_PARTITION:-debug}
ACCOUNT=${MOIR_SLURM_ACCOUNT:-moir}
GPU_TYPE=${MOIR_SLURM_GPU_TYPE:-fake}

SLURM_ETC=/etc/slurm
RUN_DIR=/run/slurm
LOG_DIR=/var/log/slurm
STATE_DIR=/var/lib/slurm
PACKAGES=(munge mariadb-server slurmdbd slurmctld slurmd slurm-client)

START=$SECONDS
say() { printf '[setup_cluster %3ds] %s\n' "$((SECONDS - START))" "$*"; }
die() { say "ERROR: $*" >&2; exit 1; }

# wait_for SECONDS COMMAND...: poll COMMAND every 0.5 s until it succeeds; fails after SECONDS.
wait_for() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.5
    done
}

# pid_alive PIDFILE: the process named in PIDFILE exists.
pid_alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# write_file PATH MODE OWNER CONTENT: write CONTENT to PATH; succeeds only when the content changed.
write_file() {
    local path=$1 mode=$2 owner=$3 content=$4
    if [[ -f $path ]] && [[ "$(cat "$path")" == "$content" ]]; then
        return 1
    fi
    local tmp
    tmp=$(mktemp "${path}.XXXXXX")
    printf '%s\n' "$content" >"$tmp"
    chmod "$mode" "$tmp"
    chown "$owner" "$tmp"
    mv -f "$tmp" "$path"
    say "wrote $path"
}

# stop_pidfile PIDFILE NAME: stop the daemon named in PIDFILE and wait until it has exited.
stop_pidfile() {
    local pidfile=$1 name=$2
    pid_alive "$pidfile" || return 0
    local pid
    pid=$(cat "$pidfile")
    say "stopping $name (pid $pid)"
    kill "$pid"
    wait_for 30 bash -c "! kill -0 $pid" || die "timed out after 30s waiting for $name to exit"
}

[[ $(id -u) -eq 0 ]] || die "must run as root"

# --- packages ---------------------------------------------------------------------------------------
if [[ ${MOIR_SLURM_SKIP_APT:-0} != 1 ]]; then
    say "apt-get update"
    apt-get update -qq
    say "apt-get install ${PACKAGES[*]}"
    DEBIAN_FRONTEND=noninteractive DEBCONF_NOWARNINGS=yes \
        apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
fi
for binary in munged mariadbd slurmdbd slurmctld slurmd sbatch sacct sacctmgr; do
    command -v "$binary" >/dev/null || die "$binary not found: install ${PACKAGES[*]}"
done
say "$(slurmctld -V), $(munged -V 2>&1 | head -n1), $(mariadbd --version | cut -d' ' -f1-4)"

# --- this host --------------------------------------------------------------------------------------
HOST=$(hostname -s)
# slurmd -C prints the node line for the hardware it detects, e.g.
# "NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24105".
NODE_HARDWARE=$(slurmd -C | head -n1 | sed -e "s/^NodeName=[^ ]* //")
CPUS=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$NODE_HARDWARE")
GPUS=${MOIR_SLURM_GPUS:-$CPUS}
[[ $GPUS =~ ^[1-9][0-9]*$ ]] || die "MOIR_SLURM_GPUS must be a positive integer, got '$GPUS'"
say "node $HOST: $NODE_HARDWARE, $GPUS fake GPUs of type $GPU_TYPE"
grep -qE "^127\.[0-9.]+[[:space:]].*\b${HOST}\b" /etc/hosts || die "$HOST does not resolve to loopback in /etc/hosts"

install -d -o slurm -g slurm -m 0755 "$RUN_DIR" "$LOG_DIR" "$STATE_DIR/slurmctld" "$STATE_DIR/slurmd"
install -d -m 0755 "$SLURM_ETC"

# --- configuration ----------------------------------------------------------------------------------
CHANGED_SLURM=0
CHANGED_DBD=0

write_file "$SLURM_ETC/slurm.conf" 0644 root:root "# Written by tests/slurm/setup_cluster.sh: a one-node test cluster.
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
# A requeued job waits cred_expire seconds before it starts again (default 120 s; 10 s keeps the tests short).
AuthInfo=cred_expire=10
# Daemons and clients bind to the address this host resolves to (loopback, checked above), not to every address.
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$STATE_DIR/slurmctld
SlurmdSpoolDir=$STATE_DIR/slurmd
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
ProctrackType=proctrack/cgroup
TaskPlugin=task/cgroup,task/affinity
SchedulerType=sched/backfill
# Look at pending jobs every 2 s (defaults: 60 s and 30 s), so a requeued job starts once it is eligible.
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Memory of a job that requests none (without it, such a job would take the whole node's memory).
DefMemPerCPU=1000
GresTypes=gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
AccountingStorageTRES=gres/gpu
AccountingStorageEnforce=associations
# Keep the job comment (the executor plugin writes rule and wildcards there) in sacct.
AccountingStoreFlags=job_comment
JobAcctGatherType=jobacct_gather/cgroup
JobCompType=jobcomp/none
# Requeued and preempted batch jobs run again (the preemption test requeues a training job).
JobRequeue=1
# Seconds between SIGTERM and SIGKILL when a job is cancelled, requeued or preempted (default 30).
KillWait=5
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
MinJobAge=300
NodeName=$HOST NodeAddr=127.0.0.1 $NODE_HARDWARE Gres=gpu:$GPU_TYPE:$GPUS State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP" && CHANGED_SLURM=1

# Fake GPU devices: character devices with /dev/null's numbers (1, 3).
for ((i = 0; i < GPUS; i++)); do
    [[ -c /dev/fakegpu$i ]] || mknod -m 0666 "/dev/fakegpu$i" c 1 3
done
write_file "$SLURM_ETC/gres.conf" 0644 root:root "# Fake GPUs (/dev/null-like devices): GPU jobs run on the CPU.
NodeName=$HOST Name=gpu Type=$GPU_TYPE File=/dev/fakegpu[0-$((GPUS - 1))]" && CHANGED_SLURM=1

write_file "$SLURM_ETC/cgroup.conf" 0644 root:root "# Jobs are confined to their cores and memory.
CgroupPlugin=cgroup/v1
ConstrainCores=yes
ConstrainRAMSpace=yes
ConstrainSwapSpace=no
ConstrainDevices=no" && CHANGED_SLURM=1

# slurmdbd connects to MariaDB through its Unix socket as the `slurm` database user, authenticated by the
# unix_socket plugin (the OS user), so no database password exists anywhere.
write_file "$SLURM_ETC/slurmdbd.conf" 0600 slurm:slurm "# Written by tests/slurm/setup_cluster.sh.
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=slurm
PidFile=$RUN_DIR/slurmdbd.pid
LogFile=$LOG_DIR/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StorageLoc=slurm_acct_db" && CHANGED_DBD=1

# --- munge ------------------------------------------------------------------------------------------
if [[ ! -s /etc/munge/munge.key ]]; then
    say "creating the munge key"
    mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
fi
install -d -o munge -g munge -m 0755 /run/munge
if pid_alive /run/munge/munged.pid; then
    say "munged already running"
else
    say "starting munged"
    runuser -u munge -- /usr/sbin/munged
fi
wait_for 20 bash -c "munge -n | unmunge" || die "timed out after 20s waiting for munge to decode a credential"

# --- MariaDB ----------------------------------------------------------------------------------------
install -d -o mysql -g mysql -m 0755 /run/mysqld
if [[ ! -d /var/lib/mysql/mysql ]]; then
    say "initialising the MariaDB data directory"
    mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
fi
if mariadb-admin --silent ping >/dev/null 2>&1; then
    say "MariaDB already running"
else
    say "starting MariaDB on 127.0.0.1"
    setsid /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 --pid-file=/run/mysqld/mysqld.pid \
        >>/var/log/mysql-moir-test.log 2>&1 </dev/null &
    wait_for 60 mariadb-admin --silent ping || die "timed out after 60s waiting for MariaDB to answer"
fi
mariadb <<'SQL'
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED VIA unix_socket;
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
SQL

# --- slurmdbd ---------------------------------------------------------------------------------------
if ((CHANGED_DBD)); then stop_pidfile "$RUN_DIR/slurmdbd.pid" slurmdbd; fi
if pid_alive "$RUN_DIR/slurmdbd.pid"; then
    say "slurmdbd already running"
else
    say "starting slurmdbd"
    /usr/sbin/slurmdbd
fi
wait_for 60 sacctmgr -n list cluster || die "timed out after 60s waiting for slurmdbd to answer sacctmgr"

# --- accounting: cluster, account, root in the account ----------------------------------------------
if [[ -z $(sacctmgr -n -P list cluster "$CLUSTER" format=cluster) ]]; then
    say "registering cluster $CLUSTER"
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
fi
if [[ -z $(sacctmgr -n -P list account "$ACCOUNT" format=account) ]]; then
    say "adding account $ACCOUNT"
    sacctmgr -i add account "$ACCOUNT" cluster="$CLUSTER" description="MoIR tests" organization=moir >/dev/null
fi
if [[ -z $(sacctmgr -n -P list assoc cluster="$CLUSTER" account="$ACCOUNT" user=root format=user) ]]; then
    say "adding user root to account $ACCOUNT (default account)"
    sacctmgr -i add user root account="$ACCOUNT" cluster="$CLUSTER" >/dev/null
    sacctmgr -i modify user root set defaultaccount="$ACCOUNT" >/dev/null
fi

# --- slurmctld and slurmd ---------------------------------------------------------------------------
if ((CHANGED_SLURM)); then
    stop_pidfile "$RUN_DIR/slurmd.pid" slurmd
    stop_pidfile "$RUN_DIR/slurmctld.pid" slurmctld
fi
if pid_alive "$RUN_DIR/slurmctld.pid"; then
    say "slurmctld already running"
else
    say "starting slurmctld"
    /usr/sbin/slurmctld
fi
wait_for 60 scontrol ping || die "timed out after 60s waiting for slurmctld to answer"
if pid_alive "$RUN_DIR/slurmd.pid"; then
    say "slurmd already running"
else
    say "starting slurmd"
    /usr/sbin/slurmd
fi

# Wait for the node to register. A node that an earlier run left drained or down is resumed; a node whose
# registration was rejected (INVAL: the configuration does not match the hardware) is an error.
deadline=$((SECONDS + 60))
resumed=0
while :; do
    state=$(sinfo -h -n "$HOST" -o %T)
    case $state in
        idle | mixed | allocated | completing) break ;;
        inval*) die "slurmctld rejected node $HOST: $(scontrol show node "$HOST" | grep -o 'Reason=.*')" ;;
        drain* | down*)
            if ((!resumed)); then
                say "node $HOST is $state (left by an earlier run): resuming it"
                scontrol update nodename="$HOST" state=resume
                resumed=1
            fi
            ;;
    esac
    ((SECONDS < deadline)) || die "node $HOST is still '$state' after 60s; see $LOG_DIR/slurmd.log"
    sleep 0.5
done
sinfo
say "cluster $CLUSTER is up: partition $PARTITION, account $ACCOUNT, GRES gpu:$GPU_TYPE:$GPUS"
