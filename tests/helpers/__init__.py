"""What the tests share: the repository's root, configs built like YAML files, data fixtures
(``fixtures``), study processes (``studies``), local Ray clusters (``ray_clusters``)."""

from __future__ import annotations

from pathlib import Path

from crdist.config import from_dict
from crdist.study import StudyConfig

ROOT = Path(__file__).resolve().parents[2]


def study(**sections) -> StudyConfig:
    """A StudyConfig from dict sections, checked exactly like a YAML file."""
    return from_dict(StudyConfig, sections, source="test")
