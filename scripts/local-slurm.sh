#!/usr/bin/env bash
# A single-node SLURM on this machine, for tests and demos of the cluster sweep.
#
#   scripts/local-slurm.sh start    # install (Debian slurm-wlm + munge) where missing, start
#   scripts/local-slurm.sh status   # exit 0 when the node is up and idle/allocated
#   scripts/local-slurm.sh env      # print `export SLURM_CONF=...` (eval it in a shell)
#   scripts/local-slurm.sh stop     # stop only the daemons this script started (pid files)
#
# Everything lives in $LOCAL_SLURM_DIR (default ${TMPDIR:-/tmp}/dead-directions-slurm):
# slurm.conf, a private munge key and socket, spool/state dirs, logs and pid files. Nothing
# under /etc is written. Clients find the cluster through SLURM_CONF (see `env`) or, where
# no /etc/slurm/slurm.conf exists, through the link /run/slurm/conf -> $LOCAL_SLURM_DIR
# (SLURM 21.08+ clients look there; /run is cleared at boot). The link matters: Snakemake's
# jobstep executor drops SLURM_* variables, SLURM_CONF included, before its inner `srun`.
# Ports default to 16817/16818 so that a system SLURM, if any, is left alone.
#
# The config suits containers: no accounting, proctrack/linuxproc and task/none (no cgroup
# control needed), select/cons_tres over CPUs and memory, MinJobAge 600 s so that
# `squeue --states=all` still shows finished jobs to Snakemake's status checks.
#
# LOCAL_SLURM_CPUS sets the node's CPUs (default nproc; the tests oversubscribe: their jobs
# mostly wait). Needs root (slurmd launches job steps as the submitting user). Exit status:
# 0 ok, 1 failure, 3 cannot run here (not root, no apt-get, or the install failed) -- the
# test suite skips on 3 unless CI is set.
set -euo pipefail

DIR="${LOCAL_SLURM_DIR:-${TMPDIR:-/tmp}/dead-directions-slurm}"
CTLD_PORT="${LOCAL_SLURM_CTLD_PORT:-16817}"
SLURMD_PORT="${LOCAL_SLURM_SLURMD_PORT:-16818}"
WAIT_S="${LOCAL_SLURM_WAIT_S:-60}"
CONF="$DIR/slurm.conf"
MUNGE_SOCKET="$DIR/munge/munge.socket"
export SLURM_CONF="$CONF"

log() { printf 'local-slurm: %s\n' "$*" >&2; }
die() {
    log "$2"
    exit "$1"
}

pid_of() { # daemon name -> pid, when its pid file names a live process of that name
    local f="$DIR/run/$1.pid" pid
    [[ -s $f ]] || return 1
    pid=$(<"$f")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/comm && "$(</proc/"$pid"/comm)" == "$1" ]] || return 1
    printf '%s\n' "$pid"
}

running() { pid_of munged >/dev/null && pid_of slurmctld >/dev/null && pid_of slurmd >/dev/null; }

node_state() { sinfo -h -N -n "$(hostname -s)" -o %T 2>/dev/null | head -n1; }

ensure_installed() {
    local missing=()
    local b
    for b in munged mungekey slurmctld slurmd sbatch srun squeue sinfo scontrol; do
        command -v "$b" >/dev/null || missing+=("$b")
    done
    ((${#missing[@]} == 0)) && return 0
    ((EUID == 0)) || die 3 "missing ${missing[*]} and not root: cannot apt-get install slurm-wlm munge"
    command -v apt-get >/dev/null || die 3 "missing ${missing[*]} and no apt-get on this machine"
    log "installing slurm-wlm and munge with apt-get (missing: ${missing[*]})"
    local t0=$SECONDS
    {
        apt-get update -qq &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
                slurm-wlm munge
    } </dev/null >"${TMPDIR:-/tmp}/local-slurm-apt.log" 2>&1 ||
        die 3 "apt-get install slurm-wlm munge failed; see ${TMPDIR:-/tmp}/local-slurm-apt.log"
    log "installed in $((SECONDS - t0)) s"
}

write_config() {
    local host cpus mem_mb
    host=$(hostname -s)
    cpus="${LOCAL_SLURM_CPUS:-$(nproc)}"
    # RealMemory a little under what free reports, so that slurmd never drains the node for
    # "low RealMemory" (it compares with its own reading of /proc/meminfo).
    mem_mb=$(free -m | awk '/^Mem:/ {print int($2 * 0.95)}')
    mkdir -p "$DIR"/{run,log,ctld,slurmd,munge}
    chmod 0755 "$DIR" "$DIR/munge"
    cat >"$CONF" <<EOF
# Written by scripts/local-slurm.sh: single-node SLURM on $host for tests and demos.
ClusterName=localslurm
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=$(id -un)
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/slurmd
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
ReturnToService=2
# Take CPUs and RealMemory from this file even where they differ from the hardware.
SlurmdParameters=config_overrides
MinJobAge=600
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munged() {
    pid_of munged >/dev/null && return 0
    local key="$DIR/munge/munge.key"
    if [[ ! -s $key ]]; then
        (umask 077 && head -c 1024 /dev/urandom >"$key")
    fi
    chmod 0600 "$key"
    rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
    munged --force --socket="$MUNGE_SOCKET" --key-file="$key" --pid-file="$DIR/run/munged.pid" \
        --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed" </dev/null 9>&- ||
        die 1 "munged did not start; see $DIR/log/munged.log"
    for _ in $(seq 50); do
        munge -n -S "$MUNGE_SOCKET" 2>/dev/null | unmunge -S "$MUNGE_SOCKET" >/dev/null 2>&1 &&
            return 0
        sleep 0.1
    done
    die 1 "munged is not answering on $MUNGE_SOCKET; see $DIR/log/munged.log"
}

wait_idle() {
    local deadline=$((SECONDS + WAIT_S)) state="" resumed=0
    while ((SECONDS < deadline)); do
        state=$(node_state || true)
        case "$state" in
            idle* | mixed* | allocated* | completing*) return 0 ;;
            drain* | down*)
                if ((resumed == 0)); then
                    scontrol update NodeName="$(hostname -s)" State=RESUME >/dev/null 2>&1 || true
                    resumed=1
                fi
                ;;
        esac
        sleep 0.5
    done
    log "node not idle after ${WAIT_S} s (state: ${state:-none}); logs follow"
    tail -n 20 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 2>/dev/null || true
    return 1
}

stop_daemon() {
    local name=$1 pid
    pid=$(pid_of "$name") || {
        rm -f "$DIR/run/$name.pid"
        return 0
    }
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        [[ -e /proc/$pid ]] || break
        sleep 0.1
    done
    if [[ -e /proc/$pid ]]; then
        log "$name ($pid) ignored SIGTERM for 10 s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$DIR/run/$name.pid"
    log "stopped $name ($pid)"
}

link_run_conf() {
    local link=/run/slurm/conf
    if [[ -e /etc/slurm/slurm.conf ]]; then
        log "warning: /etc/slurm/slurm.conf exists; commands without SLURM_CONF (the srun in"
        log "  Snakemake's job steps) will talk to that cluster, not to this one"
    elif [[ -L $link || ! -e $link ]]; then
        mkdir -p /run/slurm
        ln -sfn "$DIR" "$link"
    else
        log "warning: $link exists and is not a link; srun in Snakemake job steps may fail"
    fi
}

unlink_run_conf() {
    local link=/run/slurm/conf
    if [[ -L $link && "$(readlink "$link")" == "$DIR" ]]; then rm -f "$link"; fi
}

cmd_start() {
    local t0=$SECONDS
    ((EUID == 0)) || die 3 "needs root (slurmd runs job steps as the submitting user)"
    ensure_installed
    mkdir -p "$DIR"
    exec 9>"$DIR/lock"
    flock -w 120 9 || die 1 "another local-slurm.sh holds $DIR/lock"
    if running; then
        link_run_conf
        wait_idle || die 1 "daemons are running but the node is not usable"
        log "already running (SLURM_CONF=$CONF)"
        return 0
    fi
    # A partial start (a daemon died): stop what is left, then start all anew.
    stop_daemon slurmd
    stop_daemon slurmctld
    write_config
    link_run_conf
    start_munged
    # -c: a fresh controller; jobs of an earlier, stopped instance are gone with its slurmd.
    slurmctld -c -f "$CONF" </dev/null 9>&- || die 1 "slurmctld did not start; see $DIR/log/slurmctld.log"
    slurmd -f "$CONF" </dev/null 9>&- || die 1 "slurmd did not start; see $DIR/log/slurmd.log"
    for _ in $(seq 50); do
        pid_of slurmctld >/dev/null && pid_of slurmd >/dev/null && break
        sleep 0.1
    done
    wait_idle || die 1 "SLURM did not come up"
    log "started in $((SECONDS - t0)) s: $(sinfo -h -o '%P %D %c CPUs %m MB %T' | head -n1)"
    log "use it with: export SLURM_CONF=$CONF"
}

cmd_stop() {
    [[ -d $DIR ]] || return 0
    exec 9>"$DIR/lock"
    flock -w 120 9 || die 1 "another local-slurm.sh holds $DIR/lock"
    if pid_of slurmctld >/dev/null; then
        # Cancel what is left and let the job steps end, so that no slurmstepd outlives slurmd.
        scancel --quiet --user="$(id -un)" 2>/dev/null || true
        for _ in $(seq 30); do
            [[ -z "$(squeue -h -t PD,R,CG,S -o %i 2>/dev/null)" ]] && break
            sleep 0.5
        done
    fi
    stop_daemon slurmd
    stop_daemon slurmctld
    stop_daemon munged
    unlink_run_conf
}

cmd_status() {
    if running && [[ -n "$(node_state)" ]]; then
        printf 'running: SLURM_CONF=%s\n' "$CONF"
        sinfo -N -o '%N %P %c %m %T'
        return 0
    fi
    local d
    for d in munged slurmctld slurmd; do
        if pid_of "$d" >/dev/null; then printf '%s: up\n' "$d"; else printf '%s: down\n' "$d"; fi
    done
    return 1
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) printf 'export SLURM_CONF=%q\n' "$CONF" ;;
    *)
        printf 'usage: %s start|stop|status|env\n' "$0" >&2
        exit 2
        ;;
esac
