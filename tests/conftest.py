from __future__ import annotations

from pathlib import Path

import pytest

from crdist.config import from_dict
from crdist.study import StudyConfig

ROOT = Path(__file__).resolve().parent.parent


def study(**sections) -> StudyConfig:
    """A StudyConfig from dict sections, checked exactly like a YAML file."""
    return from_dict(StudyConfig, sections, source="test")


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
