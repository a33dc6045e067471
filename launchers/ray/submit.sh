#!/usr/bin/env bash
# Submit a crdist study to a running Ray cluster with `ray job submit`.
#
#   launchers/ray/submit.sh CONFIG NAME [--set KEY=VALUE ...]
#
# The job runs `crdist run CONFIG --name NAME --address auto` on the cluster, from a copy of this
# checkout (the runtime environment's working directory; .rayignore keeps runs/ and shards/ out of
# the upload). Its run directory and shards live under CRDIST_SHARED, storage that every node
# mounts at the same path. The submission id is derived from NAME: submitting the same command
# again after the job stopped, failed or was preempted replaces the old submission and resumes
# the run; while it still runs, the second submission is refused.
#
# Environment:
#   RAY_ADDRESS     the cluster's job server, e.g. http://head:8265 (default http://127.0.0.1:8265)
#   CRDIST_SHARED   shared directory for runs/ and shards/ (required)
#   RAY_AUTH_MODE   token (Ray's default); the token comes from RAY_AUTH_TOKEN or Ray's token file
set -euo pipefail

if [ "$#" -lt 2 ]; then
    echo "usage: $0 CONFIG NAME [--set KEY=VALUE ...]" >&2
    exit 2
fi
config=$1
name=$2
shift 2
: "${CRDIST_SHARED:?set CRDIST_SHARED to a directory every node mounts at the same path}"
export RAY_ADDRESS="${RAY_ADDRESS:-http://127.0.0.1:8265}"
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"

here="$(cd "$(dirname "$0")/../.." && pwd)"
case "$config" in
    /*) ;;
    *) config="$(realpath --relative-to="$here" "$config")" ;;  # relative to the uploaded checkout
esac
submission_id="crdist-$(printf '%s' "$name" | tr -c 'A-Za-z0-9_-' '-')"

status="$(python "$here/launchers/ray/job_status.py" "$submission_id")"
case "$status" in
    PENDING | RUNNING)
        echo "$submission_id is $status on $RAY_ADDRESS; follow it with: ray job logs --follow $submission_id" >&2
        exit 1
        ;;
    STOPPED | SUCCEEDED | FAILED)
        echo "replacing the earlier submission $submission_id ($status); the run resumes from its run directory"
        ray job delete "$submission_id" > /dev/null
        ;;
esac

runtime_env="$(printf '{"env_vars": {"RAY_AUTH_MODE": "%s", "CRDIST_SHARED": "%s"}}' "$RAY_AUTH_MODE" "$CRDIST_SHARED")"
exec ray job submit \
    --submission-id "$submission_id" \
    --working-dir "$here" \
    --runtime-env-json "$runtime_env" \
    -- bash launchers/ray/entrypoint.sh "$config" --name "$name" --address auto "$@"
