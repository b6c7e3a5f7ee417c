# Environment for every job of slurm/*.sbatch: the ONE place to adapt to your cluster.
#
# The batch scripts source this file on the first node of the job, after `cd $WIKIART_ROOT`;
# `srun` then copies the resulting environment to every task on every node (--export=ALL is
# SLURM's default), so whatever is set up here is what the ranks see. Edit the "site" block below
# (modules, a conda env, scratch paths) or set the variables before `sbatch`; nothing else in
# slurm/ needs to change between clusters.
#
#   WIKIART_ROOT   the repository (default: the directory `sbatch` was run from)
#   WIKIART_VENV   a virtual environment with the project installed (default: $WIKIART_ROOT/.venv);
#                  set WIKIART_VENV=none to use whatever python is on PATH (modules, conda)
#   WIKIART_PYTHON the interpreter the scripts run (default: python from the above)
# shellcheck shell=bash

# --- site: uncomment or adapt ------------------------------------------------------------------
# module purge
# module load cuda/12.4 nccl
# source "$HOME/miniconda3/etc/profile.d/conda.sh" && conda activate wikiart && WIKIART_VENV=none
# export HF_HOME=/scratch/$USER/hf          # hub cache on shared storage, if you push or download
# export NCCL_SOCKET_IFNAME=ib0             # the interface between nodes, if NCCL picks a wrong one
# -----------------------------------------------------------------------------------------------

WIKIART_VENV="${WIKIART_VENV:-$WIKIART_ROOT/.venv}"
if [[ "$WIKIART_VENV" != none ]]; then
    if [[ ! -x "$WIKIART_VENV/bin/python" ]]; then
        echo "slurm/env.sh: no virtual environment at $WIKIART_VENV (run 'make .venv' in" \
             "$WIKIART_ROOT, or set WIKIART_VENV)" >&2
        return 1
    fi
    # Activation by PATH only: the venv's `python` and `accelerate` come first on every node.
    export VIRTUAL_ENV="$WIKIART_VENV"
    export PATH="$WIKIART_VENV/bin:$PATH"
fi
export WIKIART_PYTHON="${WIKIART_PYTHON:-python}"
command -v "$WIKIART_PYTHON" >/dev/null || { echo "slurm/env.sh: $WIKIART_PYTHON not found" >&2; return 1; }

# Logs reach the job's file as they happen, not when a buffer fills.
export PYTHONUNBUFFERED=1
# Rich (tables, messages) wraps at 80 columns when it writes to a file; keep log lines whole.
export COLUMNS="${COLUMNS:-160}"
