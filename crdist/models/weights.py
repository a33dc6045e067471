"""Consolidated model weights as safetensors files, written atomically with their digest.

These files are what evaluations read and what the next task starts from; they never hold
sharded training state. Each one crdist writes has its digest beside it (crdist/integrity.py), and
is checked against it whenever it is read: a damaged file is refused, never loaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from crdist.errors import CrdistError
from crdist.integrity import record_path, sealed_path, verify


class WeightsError(CrdistError, RuntimeError):
    pass


def save_weights(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    with sealed_path(Path(path)) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_weights(path: str | Path, sealed: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of ``path``, checked against its digest first when it has one (every file crdist
    wrote has; a file from elsewhere, e.g. converted pretrained weights, may not). ``sealed``: the
    file is crdist's own (a c_i), so a missing digest is damage too."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    if sealed or record_path(path).is_file():
        verify(path)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise WeightsError(f"{path}: not a readable safetensors file ({err})") from None


def load_into(model: nn.Module, path: str | Path, backbone_only: bool = False, sealed: bool = False) -> None:
    """Load ``path`` into ``model``; with ``backbone_only`` a file without the head (or with a
    different head) is accepted, e.g. pretrained weights converted from another project."""
    state = load_weights(path, sealed)
    if backbone_only:
        if not any(k.startswith("backbone.") for k in state):
            state = {f"backbone.{k}": v for k, v in state.items()}
        state = {k: v for k, v in state.items() if k.startswith("backbone.")}
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not (backbone_only and k.startswith("head."))]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [k for k in state if k in expected and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong_shape:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if keys:
                parts.append(f"{label}: {', '.join(keys[:5])}{' …' if len(keys) > 5 else ''}")
        raise WeightsError(f"{path}: does not fit this model ({'; '.join(parts)})")
    model.load_state_dict(state, strict=not backbone_only)
