#!/usr/bin/env bash
# The job's entrypoint on the cluster (launchers/ray/submit.sh submits it): run crdist from the
# uploaded checkout (Ray puts the working directory first on PYTHONPATH) with the shared directory
# as the working directory, so runs/ and the default shards/ land on storage every node sees and
# outlive the job.
set -euo pipefail
config="$(realpath "$1")"
shift
cd "${CRDIST_SHARED:?CRDIST_SHARED must name a directory every node mounts at the same path}"
exec python -m crdist run "$config" "$@"
