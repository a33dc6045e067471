"""Install a package, and whatever of its dependencies this environment lacks, into a directory of
its own, for the tests that run it as a separate server:

    python tests/helpers/install_apart.py DIR REQUIREMENT

- Ray's job server (`ray[default]==2.60.0`, what it adds to crdist's `ray[train]`), for the
  `ray job submit` test. With those packages importable, every Ray node starts its dashboard agent
  in full, which loads many more modules; on a busy 2-core machine that can outlast the raylet's
  wait for the agent, and the raylet aborts ("Timed out waiting for file
  …dashboard_agent_listen_port…"). So the rest of the suite keeps the minimal agent, and only the
  test's own cluster gets DIR on its PYTHONPATH.
- MLflow's tracking server (`mlflow==3.17.2`: the server, its database store and UI, which
  crdist's `mlflow-skinny` client leaves out), for the tracking-server test. crdist talks to a
  server over HTTP and never needs it installed; the test runs `mlflow server` with DIR first on
  its PYTHONPATH, so its full `mlflow` package shadows the client's only in that process.

Only the distributions this environment lacks are installed (for MLflow: `mlflow` itself, whose
package shadows `mlflow-skinny`'s, and the server's dependencies).
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

target, requirement = Path(sys.argv[1]), sys.argv[2]
with tempfile.TemporaryDirectory() as tmp:
    report = Path(tmp) / "report.json"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--report", str(report),
                    requirement], check=True)
    missing = [f"{item['metadata']['name']}=={item['metadata']['version']}"
               for item in json.loads(report.read_text())["install"]]
if missing:
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                    *missing], check=True)
target.mkdir(parents=True, exist_ok=True)
(target / ".complete").write_text("\n".join(missing) + "\n")  # tests/run --all installs again without it
print(f"{requirement}: {len(missing)} package(s) in {target}")
