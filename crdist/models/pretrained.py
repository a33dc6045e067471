"""Pretrained starts from torchvision checkpoints (``model.init: path/to/weights.pth``), read locally.

The mapping from the file to the backbone, in order:

1. ``torch.load(weights_only=True)``: a tensor dict, never a pickled model (unpickling runs code).
   A training script's wrapper (``{"state_dict": …}`` or ``{"model": …}``) and DDP's ``module.``
   prefix are unwrapped.
2. The backbone's own key mapping (``pretrained_keys`` in its registry file): torchvision's names
   onto the module's, without ImageNet's classifier; a ViT's position embeddings are interpolated
   to the stream's image size.
3. A first convolution built for one-channel (grayscale) images takes the RGB kernel summed over
   its input channels, so a gray image gives the response the RGB network gives that image in colour.
4. BatchNorm step counters that a file saved before PyTorch 0.4 lacks start at 0.
5. Every key is checked by name and shape before anything is loaded; a mismatch is an error that
   says what was expected where.

crdist's head stays random (seeded): it is built for the stream's classes, not ImageNet's.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from crdist.models.backbones import BACKBONES
from crdist.models.weights import WeightsError


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: pretrained checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises pickle, zip and runtime errors alike
        raise WeightsError(f"{path}: not a torch checkpoint of tensors ({type(err).__name__}: "
                           f"{str(err).splitlines()[0] if str(err) else ''}); save one with "
                           "torch.save(model.state_dict(), path)") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: expected a state dict (parameter name → tensor), got {type(state).__name__}")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _sum_rgb(key: str, value: torch.Tensor, expected: torch.Tensor, notes: list[str]) -> torch.Tensor:
    if value.dim() == 4 and expected.dim() == 4 and expected.shape[1] == 1 and value.shape[1] == 3 \
            and value.shape[0] == expected.shape[0] and value.shape[2:] == expected.shape[2:]:
        notes.append(f"{key}: RGB kernel summed to one channel")
        return value.sum(dim=1, keepdim=True)
    return value


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(d) for d in t.shape) + ")"


def load_pretrained(backbone: nn.Module, backbone_name: str, path: str | Path) -> list[str]:
    """Load a torchvision checkpoint into ``backbone``; returns notes on what the mapping adapted."""
    if not Path(path).is_file():
        raise WeightsError(f"{path}: pretrained checkpoint not found")
    keys = BACKBONES.get(backbone_name).pretrained_keys
    if keys is None:
        raise WeightsError(f"{path}: {backbone_name} has no torchvision checkpoints; give model.init a .safetensors "
                           "file with crdist's keys (a c_i of another run)")
    source = read_checkpoint(path)
    try:
        state = keys(source, backbone)
    except (KeyError, ValueError, RuntimeError) as err:
        raise WeightsError(f"{path}: cannot map it onto {backbone_name} ({err})") from None
    expected = backbone.state_dict()
    notes: list[str] = []
    if "encoder.pos_embedding" in source and source["encoder.pos_embedding"].shape != state["encoder.pos_embedding"].shape:
        notes.append(f"position embeddings interpolated from {source['encoder.pos_embedding'].shape[1]} to "
                     f"{state['encoder.pos_embedding'].shape[1]} tokens")
    state = {k: _sum_rgb(k, v, expected[k], notes) if k in expected else v for k, v in state.items()}
    # Files saved before PyTorch 0.4 (torchvision's DenseNet weights) have no BatchNorm step counters;
    # BatchNorm's own loader starts them at 0, as here.
    state.update({k: torch.zeros_like(v) for k, v in expected.items() if k.endswith(".num_batches_tracked") and k not in state})
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k}: expected {_shape(expected[k])}, the file has {_shape(state[k])}"
             for k in state if k in expected and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        parts = []
        for label, items in (("wrong shape", wrong), ("missing", missing), ("unexpected", unexpected)):
            if items:
                parts.append(f"{label} ({len(items)}): {'; '.join(items[:4])}{' …' if len(items) > 4 else ''}")
        hint = ""
        if max(len(missing) + len(wrong), len(unexpected)) > len(expected) // 2:
            hint = " — most keys do not fit: is this a checkpoint of another architecture?"
        raise WeightsError(f"{path}: does not fit backbone {backbone_name} (torchvision keys mapped as in "
                           f"crdist/models/backbones/): {' | '.join(parts)}{hint}")
    backbone.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)
    return notes


def load_init(model: nn.Module, model_cfg) -> list[str]:
    """Start ``model`` (a Classifier) from ``model.init``: crdist's own keys (a .safetensors file,
    backbone only) or a torchvision checkpoint; returns what the mapping adapted. The head stays
    as built: it is for the stream's classes."""
    from crdist.models.weights import load_into

    path = model_cfg.init_file()
    if path.suffix == ".safetensors":
        load_into(model, path, backbone_only=True)
        return []
    return load_pretrained(model.backbone, model_cfg.backbone, path)
