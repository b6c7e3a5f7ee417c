#!/usr/bin/env bash
# CI: install SLURM and munge (Debian/Ubuntu packages) and run the SLURM tests. The tests bring up
# a throwaway two-node cluster on this machine (tests/slurm/cluster.sh) and take it down again.
#
#   .ci/slurm.sh                  # install the packages if missing, then pytest -m slurm
#   .ci/slurm.sh --install-only   # only the packages
#   .ci/slurm.sh -k preempted     # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(slurmctld slurmd slurm-client munge)
# Root for apt and for the cluster (slurmd starts job steps as the submitting user).
SUDO=()
if ((EUID != 0)); then
    command -v sudo >/dev/null || { echo ".ci/slurm.sh: needs root or sudo" >&2; exit 1; }
    SUDO=(sudo -n)
fi

missing=0
for bin in munged mungekey slurmctld slurmd sbatch srun scontrol scancel squeue; do
    command -v "$bin" >/dev/null || missing=1
done
if ((missing)); then
    echo ".ci/slurm.sh: installing ${PACKAGES[*]}"
    "${SUDO[@]}" apt-get update -q
    # The packages' own service start (if any) uses the system config and ports; the test
    # cluster uses its own directory and free ports, so the two never meet.
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${PACKAGES[@]}"
fi
if [[ "${1:-}" == --install-only ]]; then
    exit 0
fi

make .venv
# Under CI a missing SLURM is a failure, not a skip.
export CI="${CI:-true}"
exec "${SUDO[@]}" env "PATH=$PATH" "CI=$CI" .venv/bin/python -m pytest -q -m slurm -p no:cacheprovider tests/slurm "$@"
