#!/usr/bin/env bash
# Submit the shard build as two jobs: an array of K parts, and a merge that starts only when
# every part succeeded (--dependency=afterok). Prints "<array job id> <merge job id>".
#
#   slurm/submit_build_shards.sh K [sbatch options...] -- builder options...
#   slurm/submit_build_shards.sh 8 --partition=cpu --cpus-per-task=16 -- \
#       --out /shared/shards/wikiart --images-root /shared/data/wikiart --csv-dir /shared/data/splits
#
# Logs: $WIKIART_LOG_DIR (default logs/), one file per task.
set -euo pipefail

usage() { echo "usage: $0 K [sbatch options...] -- builder options..." >&2; exit 2; }
[[ $# -ge 1 && "$1" =~ ^[1-9][0-9]*$ ]] || usage
parts="$1"; shift
sbatch_args=()
while [[ $# -gt 0 && "$1" != -- ]]; do sbatch_args+=("$1"); shift; done
[[ "${1:-}" == -- ]] || usage
shift
[[ $# -gt 0 ]] || usage

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# The jobs find the repository through WIKIART_ROOT (sbatch passes the environment on), so this
# works from any directory; relative paths in the builder options are relative to the repository.
export WIKIART_ROOT="${WIKIART_ROOT:-$(dirname "$here")}"
logs="${WIKIART_LOG_DIR:-logs}"
mkdir -p "$logs"    # SLURM does not create it, and a job without its log directory fails silently

array_id="$(sbatch --parsable --array="0-$((parts - 1))" --output="$logs/%x-%A_%a.out" \
    "${sbatch_args[@]}" "$here/build_shards.sbatch" "$@")"
array_id="${array_id%%;*}"      # --parsable prints "id;cluster" on federated clusters
merge_id="$(sbatch --parsable --dependency="afterok:$array_id" --kill-on-invalid-dep=yes \
    --job-name=wikiart-shards-merge --output="$logs/%x-%j.out" \
    "${sbatch_args[@]}" "$here/build_shards.sbatch" "$@")"
merge_id="${merge_id%%;*}"
echo "$array_id $merge_id"
