#!/usr/bin/env bash
# Stop the one-node test cluster that tests/slurm/setup_cluster.sh started: cancel its jobs, then stop slurmd,
# slurmctld, slurmdbd, MariaDB and munged (each by the pid in its pid file, and only if it runs).
#
#   --purge   also delete what setup made: the accounting database, the SLURM configuration, the
#             controller/node state and the fake GPU devices (the Debian packages stay installed).
set -euo pipefail

PURGE=0
case ${1:-} in
    --purge) PURGE=1 ;;
    "") ;;
    *) echo "usage: $0 [--purge]" >&2; exit 2 ;;
esac

START=$SECONDS
say() { printf '[teardown_cluster %3ds] %s\n' "$((SECONDS - START))" "$*"; }
[[ $(id -u) -eq 0 ]] || { say "ERROR: must run as root" >&2; exit 1; }

# stop_pidfile PIDFILE NAME: SIGTERM the daemon named in PIDFILE and wait up to 30 s for it to exit.
stop_pidfile() {
    local pidfile=$1 name=$2 pid
    if [[ ! -s $pidfile ]] || ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        say "$name is not running"
        return 0
    fi
    pid=$(cat "$pidfile")
    say "stopping $name (pid $pid)"
    kill "$pid"
    for _ in $(seq 60); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.5
    done
    say "ERROR: $name (pid $pid) did not exit after 30 s" >&2
    return 1
}

if command -v scancel >/dev/null && scontrol ping >/dev/null 2>&1; then
    jobs=$(squeue -h -o %A | tr '\n' ' ')
    if [[ -n $jobs ]]; then
        say "cancelling jobs $jobs"
        scancel --full $jobs || true
    fi
fi
stop_pidfile /run/slurm/slurmd.pid slurmd
stop_pidfile /run/slurm/slurmctld.pid slurmctld
stop_pidfile /run/slurm/slurmdbd.pid slurmdbd
if ((PURGE)) && mariadb-admin --silent ping >/dev/null 2>&1; then
    say "dropping the accounting database"
    mariadb -e 'DROP DATABASE IF EXISTS slurm_acct_db'
fi
stop_pidfile /run/mysqld/mysqld.pid MariaDB
stop_pidfile /run/munge/munged.pid munged

if ((PURGE)); then
    say "deleting the SLURM configuration, controller and node state, fake GPU devices"
    rm -f /etc/slurm/slurm.conf /etc/slurm/gres.conf /etc/slurm/cgroup.conf /etc/slurm/slurmdbd.conf
    rm -rf /var/lib/slurm/slurmctld/* /var/lib/slurm/slurmd/*
    rm -f /dev/fakegpu[0-9]*
fi
say "done"
