"""Session fixtures and the test tiers.

A test's tier is its folder: ``tests/unit`` (in one process, or a few plain subprocesses: no Ray
cluster, no multi-process DeepSpeed) and ``tests/integration`` (real Ray clusters, whole studies,
DeepSpeed across processes). Each test gets its folder's marker, so ``-m unit`` and
``-m integration`` select a tier wherever pytest is pointed; ``smoke`` marks the one end-to-end
study that ``tests/run`` adds to the unit tier."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import study

TIERS = ("unit", "integration")


def pytest_collection_modifyitems(config, items):
    for item in items:
        tier = Path(str(item.fspath)).parent.name
        if tier not in TIERS:
            raise pytest.UsageError(f"{item.nodeid}: every test lives in tests/unit or tests/integration")
        item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session")
def digits_shards(tmp_path_factory) -> Path:
    """The real seq-digits stream, prepared once per test session (2 s)."""
    from crdist.data.prepare import prepare

    out = tmp_path_factory.mktemp("shards") / "seq-digits"
    prepare(study(data={"shards": str(out)}).data, log=lambda line: None)
    return out


@pytest.fixture(scope="session")
def deepspeed_cpu_op():
    """Compile DeepSpeed's CPU comm op once, before any test starts processes that need it."""
    from crdist.train.engine import build_cpu_comm_op

    build_cpu_comm_op()
