"""Install Ray's job server (what `ray[default]` adds to crdist's `ray[train]`) into a directory of
its own, for the `ray job submit` test alone:

    python tests/helpers/install_job_server.py DIR

With those packages importable, every Ray node starts its dashboard agent in full, which loads
many more modules; on a busy 2-core machine that can outlast the raylet's wait for the agent, and
the raylet aborts ("Timed out waiting for file …dashboard_agent_listen_port…"). So the rest of the
suite keeps the minimal agent, and only the test's own cluster gets DIR on its PYTHONPATH.
Only what this environment lacks is installed (no package shadows one of the environment's).
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

target = Path(sys.argv[1])
with tempfile.TemporaryDirectory() as tmp:
    report = Path(tmp) / "report.json"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--report", str(report),
                    "ray[default]==2.60.0"], check=True)
    missing = [f"{item['metadata']['name']}=={item['metadata']['version']}"
               for item in json.loads(report.read_text())["install"]]
if missing:
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                    *missing], check=True)
target.mkdir(parents=True, exist_ok=True)
(target / ".complete").write_text("\n".join(missing) + "\n")  # tests/run --all installs again without it
print(f"Ray's job server: {len(missing)} package(s) in {target}")
