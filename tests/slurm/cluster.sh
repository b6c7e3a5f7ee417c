#!/usr/bin/env bash
# A throwaway SLURM cluster on this machine, for tests/slurm/test_slurm.py and for trying the slurm/
# scripts by hand: munge with a generated key, slurmctld, and two slurmd processes acting as two
# one-CPU nodes (n1, n2) on 127.0.0.1. All state lives under one directory; nothing in /etc.
#
#   tests/slurm/cluster.sh up       # start (idempotent), wait until both nodes are idle
#   eval "$(tests/slurm/cluster.sh env)"   # export SLURM_CONF for sbatch/squeue/scontrol
#   tests/slurm/cluster.sh down     # stop every daemon it started, delete the directory
#
# Needs the Debian packages slurmctld, slurmd, slurm-client and munge (.ci/slurm.sh installs
# them) and root, because slurmd must run job steps as the submitting user.
# Settings: WIKIART_SLURM_DIR (default /tmp/wikiart-slurm), WIKIART_SLURM_PORT (base port,
# default 17817: slurmctld, then one port per node), WIKIART_SLURM_CRED_EXPIRE (default 10 s: how
# long a requeued job is held before it may start again; SLURM's default is 120 s).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DIR="${WIKIART_SLURM_DIR:-/tmp/wikiart-slurm}"
PORT="${WIKIART_SLURM_PORT:-17817}"
NODES=(n1 n2)
CONF="$DIR/slurm.conf"

die() { echo "cluster.sh: $*" >&2; exit 1; }

need_binaries() {
    local missing=()
    for bin in munged mungekey slurmctld slurmd sbatch scontrol sinfo; do
        command -v "$bin" >/dev/null || missing+=("$bin")
    done
    ((${#missing[@]} == 0)) || die "missing ${missing[*]}: apt-get install slurmctld slurmd slurm-client munge"
}

# Kill a daemon by the pid in its pid file, never by name: other SLURMs may run on this host.
stop_pidfile() {
    local pidfile="$1" pid
    [[ -f "$pidfile" ]] || return 0
    pid="$(cat "$pidfile")"
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

render_conf() {
    sed -e "s|@DIR@|$DIR|g" -e "s|@HOST@|$(hostname -s)|g" -e "s|@USER@|$(id -un)|g" \
        -e "s|@CTLD_PORT@|$PORT|g" -e "s|@N1_PORT@|$((PORT + 1))|g" -e "s|@N2_PORT@|$((PORT + 2))|g" \
        -e "s|@CRED_EXPIRE@|${WIKIART_SLURM_CRED_EXPIRE:-10}|g" \
        "$HERE/slurm.conf.in" > "$CONF"
}

start_munge() {
    mkdir -p "$DIR/munge"
    chmod 0700 "$DIR/munge"
    [[ -f "$DIR/munge/munge.key" ]] || mungekey --create --keyfile="$DIR/munge/munge.key"
    chmod 0400 "$DIR/munge/munge.key"
    # --force: munged distrusts sockets under a world-writable /tmp and running as root; both are
    # fine for a throwaway test cluster.
    tagged munged --force --key-file="$DIR/munge/munge.key" --socket="$DIR/munge/munge.socket" \
        --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" \
        --seed-file="$DIR/munge/munged.seed"
    wait_for "munge socket" 10 test -S "$DIR/munge/munge.socket"
}

wait_for() {  # wait_for WHAT SECONDS COMMAND...: poll until the command succeeds
    local what="$1" seconds="$2"; shift 2
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || { echo "cluster.sh: timed out waiting for $what" >&2; return 1; }
        sleep 0.2
    done
}

nodes_idle() {
    local states
    states="$(SLURM_CONF="$CONF" sinfo -h -N -o '%N %t' 2>/dev/null)" || return 1
    for node in "${NODES[@]}"; do grep -Eq "^$node idle" <<<"$states" || return 1; done
}

show_logs() {
    for log in "$DIR"/log/*.log; do echo "--- $log"; tail -n 20 "$log"; done >&2
}

up() {
    need_binaries
    ((EUID == 0)) || die "must run as root (slurmd runs job steps as the submitting user)"
    if [[ -f "$DIR/run/slurmctld.pid" ]] && kill -0 "$(cat "$DIR/run/slurmctld.pid")" 2>/dev/null \
            && nodes_idle; then
        echo "cluster already up: $CONF"; return 0
    fi
    down >/dev/null 2>&1 || true
    mkdir -p "$DIR"/{state,run,log,tmp} "${NODES[@]/#/$DIR/spool/}"
    render_conf
    start_munge
    # -c: no state from an earlier cluster in this directory; -i: ignore unreadable state.
    tagged slurmctld -c -i -f "$CONF" || { show_logs; die "slurmctld did not start"; }
    for node in "${NODES[@]}"; do
        tagged slurmd -N "$node" -f "$CONF" || { show_logs; die "slurmd $node did not start"; }
    done
    if ! wait_for "nodes n1 and n2 to be idle" 60 nodes_idle; then
        SLURM_CONF="$CONF" sinfo -N >&2 || true
        show_logs
        die "the cluster did not come up"
    fi
    echo "cluster up: export SLURM_CONF=$CONF"
}

# Every daemon runs with WIKIART_SLURM_CLUSTER=$DIR in its environment (so do the slurmstepd
# processes they spawn): that, and SLURM_CONF=$CONF in a job's environment, is how `down` finds
# what belongs to this cluster and nothing else.
tagged() { WIKIART_SLURM_CLUSTER="$DIR" SLURM_CONF="$CONF" "$@"; }

belongs_here() {  # belongs_here PID: a daemon, step daemon or job process of this cluster
    local env
    env="$(tr '\0' '\n' 2>/dev/null < "/proc/$1/environ")" || return 1
    grep -qx "WIKIART_SLURM_CLUSTER=$DIR" <<<"$env" && return 0
    grep -qx "SLURM_CONF=$CONF" <<<"$env" && grep -q "^SLURM_JOB_ID=" <<<"$env"
}

down() {
    if [[ -f "$CONF" ]] && SLURM_CONF="$CONF" scontrol ping >/dev/null 2>&1; then
        # Cancel what is still queued or running, so that no job step outlives its slurmd.
        SLURM_CONF="$CONF" scancel --user="$(id -un)" 2>/dev/null || true
        wait_for "jobs to end" 30 test -z "$(SLURM_CONF="$CONF" squeue -h -t R,CG,PD 2>/dev/null)" || true
    fi
    for node in "${NODES[@]}"; do stop_pidfile "$DIR/run/slurmd.$node.pid"; done
    stop_pidfile "$DIR/run/slurmctld.pid"
    stop_pidfile "$DIR/run/munged.pid"
    local pid
    for proc in /proc/[0-9]*; do
        pid="${proc#/proc/}"
        [[ "$pid" == "$$" ]] && continue
        if belongs_here "$pid"; then kill -9 "$pid" 2>/dev/null || true; fi
    done
    # Only a directory this script owns: the default under /tmp, or one named explicitly.
    if [[ "$DIR" == /tmp/* || -n "${WIKIART_SLURM_DIR:-}" ]]; then rm -rf "$DIR"; fi
    echo "cluster down"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    status) SLURM_CONF="$CONF" sinfo -N ;;
    *) echo "usage: $0 up|down|env|status" >&2; exit 2 ;;
esac
