"""Print the status of a Ray job submission (PENDING, RUNNING, STOPPED, SUCCEEDED, FAILED), or NONE
if there is no such submission. Used by submit.sh: `ray job status` says it only in prose, partly
on stderr. The job server is RAY_ADDRESS's.

    python launchers/ray/job_status.py SUBMISSION_ID
"""

import os
import sys

from ray.job_submission import JobSubmissionClient

address = os.environ.get("RAY_ADDRESS", "http://127.0.0.1:8265")
try:
    client = JobSubmissionClient(address)
except ConnectionError as err:
    sys.exit(f"cannot reach Ray's job server at {address}: {err}")
except RuntimeError as err:  # Ray without its job client: ray[default] is missing here
    sys.exit(f"{err}\n(crdist's extra installs it: pip install -e '.[cluster]')")
try:
    print(client.get_job_status(sys.argv[1]).value)
except RuntimeError as err:
    if "status code 404" not in str(err):
        sys.exit(f"Ray's job server at {address} did not answer for {sys.argv[1]}: {err}")
    print("NONE")
