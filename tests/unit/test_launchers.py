"""The launchers and images, checked where they cannot run here: shell scripts pass shellcheck,
Dockerfiles pass hadolint, and the Kubernetes and compose manifests parse and hold what a
preemptible multi-node run needs."""

import shutil
import subprocess

import pytest
import yaml

from crdist.train.checkpoint import CheckpointConfig
from tests.helpers import ROOT

SCRIPTS = [*sorted((ROOT / "launchers").rglob("*.sh")), ROOT / "launchers" / "slurm" / "crdist.sbatch",
           ROOT / "tests" / "run", ROOT / ".ci" / "run"]
DOCKERFILES = [ROOT / "docker" / "Dockerfile", ROOT / "docker" / "Dockerfile.cpu"]


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed; tests/run installs it"
    return path


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shell_scripts_pass_shellcheck(script):
    result = subprocess.run([_tool("shellcheck"), "--exclude=SC1091", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_pass_hadolint(dockerfile):
    result = subprocess.run([_tool("hadolint"), str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _pods(cluster_spec: dict) -> list[dict]:
    return [cluster_spec["headGroupSpec"]["template"]["spec"]] + [
        group["template"]["spec"] for group in cluster_spec["workerGroupSpecs"]]


def _check_cluster(spec: dict) -> None:
    assert spec["rayVersion"] == "2.60.0"  # the pinned Ray
    head = spec["headGroupSpec"]["template"]["spec"]
    assert head["nodeSelector"]["capacity-type"] == "on-demand"  # losing the head loses the driver
    grace = CheckpointConfig().grace_seconds
    for pod in _pods(spec):
        # The run directory and shards on one ReadWriteMany claim, at the same path everywhere.
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
                  if "persistentVolumeClaim" in v}
        assert set(claims.values()) == {"crdist-shared"}
        for container in pod["containers"]:
            mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
            assert {mounts[name] for name in claims} == {"/shared"}
            env = {e["name"]: e for e in container["env"]}
            assert env["RAY_AUTH_MODE"]["value"] == "token" and "secretKeyRef" in env["RAY_AUTH_TOKEN"]["valueFrom"]
        # Longer than crdist's checkpoint-on-SIGTERM grace, so a preempted worker checkpoints first.
        assert pod["terminationGracePeriodSeconds"] > grace
    gpus = [c["resources"]["limits"].get("nvidia.com/gpu") for g in spec["workerGroupSpecs"]
            for c in g["template"]["spec"]["containers"]]
    assert all(int(g) >= 1 for g in gpus)


def test_the_kuberay_rayjob_resumes_by_name_on_shared_storage():
    job = yaml.safe_load((ROOT / "launchers" / "k8s" / "rayjob.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]
    entry = spec["entrypoint"].split()
    assert entry[entry.index("run") - 2:entry.index("run") + 1] == ["-m", "crdist", "run"]
    assert entry[entry.index("--name") + 1] and entry[entry.index("--address") + 1] == "auto"
    assert spec["shutdownAfterJobFinishes"] is True and spec["backoffLimit"] >= 1
    config = entry[entry.index("run") + 1]
    assert config.startswith("/opt/crdist/") and (ROOT / config.removeprefix("/opt/crdist/")).is_file()
    _check_cluster(spec["rayClusterSpec"])


def test_the_kuberay_raycluster_and_the_claim():
    cluster = yaml.safe_load((ROOT / "launchers" / "k8s" / "raycluster.yaml").read_text())
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    _check_cluster(cluster["spec"])
    claim = yaml.safe_load((ROOT / "launchers" / "k8s" / "pvc.yaml").read_text())
    assert claim["kind"] == "PersistentVolumeClaim" and claim["metadata"]["name"] == "crdist-shared"
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


def test_the_compose_file_brings_up_a_head_and_a_worker_on_one_volume():
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    head, worker = compose["services"]["head"], compose["services"]["worker"]
    assert "--head" in head["command"] and "--block" in head["command"]
    assert "--address=head:6379" in worker["command"]
    for service in (head, worker):
        assert service["image"] == "crdist-cpu:latest" and "shared:/shared" in service["volumes"]
        assert service["environment"]["RAY_AUTH_MODE"] == "token"
