# Shared by slurm/*.sbatch (sourced, not run): set up the environment and work out how to start
# Accelerate on every node of the allocation.
# shellcheck shell=bash

log() { printf '[%s %s] %s\n' "${WIKIART_SCRIPT:-slurm}" "$(date '+%F %T')" "$*"; }
die() { log "error: $*" >&2; exit 1; }

# The batch script itself runs from a copy in SLURM's spool directory, so the repository is found
# through WIKIART_ROOT or the directory `sbatch` was run from, never through $0.
wikiart_setup() {
    [[ -f "$WIKIART_ROOT/train.py" && -f "$WIKIART_ROOT/slurm/env.sh" ]] \
        || die "$WIKIART_ROOT is not the wikiart repository: run sbatch from it or set WIKIART_ROOT"
    cd "$WIKIART_ROOT" || die "cannot cd to $WIKIART_ROOT"
    export WIKIART_ROOT
    # shellcheck source=slurm/env.sh
    source slurm/env.sh || die "slurm/env.sh could not set up the environment"
    local job="${SLURM_JOB_ID:-none}"
    if [[ -n "${SLURM_ARRAY_TASK_ID:-}" ]]; then job="${SLURM_ARRAY_JOB_ID}_$SLURM_ARRAY_TASK_ID"; fi
    log "job $job (${SLURM_JOB_NAME:-}) restart ${SLURM_RESTART_COUNT:-0}" \
        "on ${SLURM_JOB_NODELIST:-$(hostname)}, python $(command -v "$WIKIART_PYTHON")"
}

# Sets NNODES, PROCS_PER_NODE, NUM_PROCESSES and ACCELERATE_ARGS (everything but --machine_rank).
wikiart_launch_plan() {
    NNODES="${SLURM_JOB_NUM_NODES:-1}"
    local gpus="${WIKIART_GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-0}}" config
    if ((gpus > 0)); then
        PROCS_PER_NODE="$gpus"      # one rank per GPU
        config="${WIKIART_ACCELERATE_CONFIG:-accelerate_configs/multi_node.yaml}"
    else
        PROCS_PER_NODE=1            # no GPUs: one CPU rank per node over gloo
        config="${WIKIART_ACCELERATE_CONFIG:-accelerate_configs/cpu_ddp.yaml}"
    fi
    NUM_PROCESSES=$((NNODES * PROCS_PER_NODE))
    # Rank 0 (and torchrun's rendezvous store) lives on the first node. Its NodeAddr, not its
    # name: node names need not resolve (NodeName=gpu001 NodeAddr=10.1.2.3).
    local hosts main_addr
    mapfile -t hosts < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
    ((${#hosts[@]} > 0)) || die "scontrol could not expand the node list '$SLURM_JOB_NODELIST'"
    main_addr="$(scontrol show node "${hosts[0]}" | sed -n 's/.*NodeAddr=\([^ ]*\).*/\1/p' | head -n 1)"
    [[ -n "$main_addr" ]] || die "could not read NodeAddr of ${hosts[0]} from scontrol"
    # A port per job, so two jobs sharing a node do not collide.
    local port="${WIKIART_MAIN_PORT:-$((20000 + ${SLURM_JOB_ID:-0} % 20000))}"
    ACCELERATE_ARGS=(--config_file "$config" --num_machines "$NNODES" --num_processes "$NUM_PROCESSES"
                     --main_process_ip "$main_addr" --main_process_port "$port")
    # Split the task's CPUs between its ranks instead of every rank starting an all-core pool.
    if [[ -z "${OMP_NUM_THREADS:-}" ]]; then
        local cpus="${SLURM_CPUS_PER_TASK:-1}"
        export OMP_NUM_THREADS=$((cpus / PROCS_PER_NODE > 0 ? cpus / PROCS_PER_NODE : 1))
    fi
    log "$NNODES node(s) x $PROCS_PER_NODE rank(s) = $NUM_PROCESSES, main process ${hosts[0]}" \
        "($main_addr:$port), $config, OMP_NUM_THREADS=$OMP_NUM_THREADS"
}

# srun starts one task per node; each runs `accelerate launch` with that node's rank. The single
# quotes matter: $SLURM_NODEID must expand in the task on each node, not here in the batch shell.
# Runs in the background (SRUN_PID) so that the batch shell can react to signals while waiting:
# bash runs a trap only between commands, and `wait` is interruptible where a foreground srun
# is not. --kill-on-bad-exit=0: a rank that exits first (after a coordinated stop, say) must not
# take down the others while rank 0 is still writing.
wikiart_srun_accelerate() {
    # shellcheck disable=SC2016  # single quotes on purpose: expanded by each task, not here
    srun --nodes="$NNODES" --ntasks="$NNODES" --ntasks-per-node=1 --kill-on-bad-exit=0 \
        bash -c 'exec "$WIKIART_PYTHON" -m accelerate.commands.launch --machine_rank "$SLURM_NODEID" "$@"' \
        accelerate-launch "${ACCELERATE_ARGS[@]}" "$@" &
    # shellcheck disable=SC2034  # read by the calling script
    SRUN_PID=$!
}

# Wait for a background pid through any number of trapped signals; returns its exit status.
wikiart_wait() {
    local pid="$1" rc
    while :; do
        if wait "$pid"; then rc=0; else rc=$?; fi
        kill -0 "$pid" 2>/dev/null || return "$rc"   # reaped: rc is its status, not a signal's
    done
}
