"""Vision Transformers built with torchvision's ``VisionTransformer``; the feature is the class token.

``vit-b16``, ``vit-l16`` and ``vit-h14`` are torchvision's ViT-B/16, ViT-L/16 and ViT-H/14 (86 M,
304 M and 632 M parameters at 224 px). ``vit-tiny`` and ``vit-small`` are DeiT's Ti and S widths
(5.5 M and 21.7 M) with 4-pixel patches, sized for CPU runs on 28–32 px images; ``vit-s16`` is
ViT-S/16, the same width as ``vit-small`` with 16-pixel patches. ``model.patch_size`` gives any of
them another patch.

A ViT is built for one image size (its position embeddings): the stream's. A torchvision ImageNet
checkpoint (224 px) has its position embeddings interpolated to that size, as torchvision's
``interpolate_embeddings`` does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from crdist.config import ConfigError
from crdist.models.backbones import backbone


@dataclass(frozen=True)
class ViTSize:
    patch: int
    layers: int
    heads: int
    hidden: int
    mlp: int


SIZES = {
    "vit-tiny": ViTSize(patch=4, layers=12, heads=3, hidden=192, mlp=768),
    "vit-small": ViTSize(patch=4, layers=12, heads=6, hidden=384, mlp=1536),
    "vit-s16": ViTSize(patch=16, layers=12, heads=6, hidden=384, mlp=1536),
    "vit-b16": ViTSize(patch=16, layers=12, heads=12, hidden=768, mlp=3072),
    "vit-l16": ViTSize(patch=16, layers=24, heads=16, hidden=1024, mlp=4096),
    "vit-h14": ViTSize(patch=14, layers=32, heads=16, hidden=1280, mlp=5120),
}


def _torchvision_keys(state: dict, module: nn.Module) -> dict:
    state = {k: v for k, v in state.items() if not k.startswith("heads.")}
    if "encoder.pos_embedding" in state and state["encoder.pos_embedding"].shape != module.encoder.pos_embedding.shape:
        from torchvision.models.vision_transformer import interpolate_embeddings

        state = dict(interpolate_embeddings(module.image_size, module.patch_size, state))
    return state


def _build(name: str, in_channels: int, model_cfg, image_size: int | None) -> tuple[nn.Module, int]:
    size = SIZES[name]
    patch = getattr(model_cfg, "patch_size", None) or size.patch
    if image_size is None:
        raise ConfigError(f"model.backbone: {name} is built for one image size, and this stream's images "
                          "have none (they are not square, or not images)")
    if image_size % patch:
        raise ConfigError(f"model.backbone: {name} with {patch}-pixel patches needs an image side divisible by "
                          f"{patch}; this stream's images are {image_size} px (set model.patch_size, or "
                          "data.image_size where the benchmark has one)")
    # Imported here, not at import (see crdist/models/backbones/__init__.py).
    from torchvision.models.vision_transformer import VisionTransformer

    net = VisionTransformer(image_size=image_size, patch_size=patch, num_layers=size.layers,
                            num_heads=size.heads, hidden_dim=size.hidden, mlp_dim=size.mlp)
    if in_channels != 3:
        net.conv_proj = nn.Conv2d(in_channels, size.hidden, kernel_size=patch, stride=patch)
        # torchvision's own initialisation of the patch embedding (VisionTransformer.__init__)
        fan_in = in_channels * patch * patch
        nn.init.trunc_normal_(net.conv_proj.weight, std=math.sqrt(1 / fan_in))
        nn.init.zeros_(net.conv_proj.bias)
    net.heads = nn.Identity()
    return net, size.hidden


def _register(name: str) -> None:
    @backbone(name, pretrained_keys=_torchvision_keys, blocks=lambda net: list(net.encoder.layers))
    def build(in_channels: int, model_cfg=None, image_size: int | None = None) -> tuple[nn.Module, int]:
        return _build(name, in_channels, model_cfg, image_size)


for _name in SIZES:
    _register(_name)

