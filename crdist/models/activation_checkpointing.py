"""Activation checkpointing (``train.activation_checkpointing``): each of a backbone's repeated
blocks keeps only its input during the forward pass and recomputes its activations in the
backward pass, trading about one more forward of compute for activation memory that no longer
grows with depth. Which modules are the blocks is the backbone's to say (its registry entry).

torch's non-reentrant checkpoint is used: it works with blocks whose inputs need no gradient, with
keyword arguments, and with DeepSpeed ZeRO's parameter hooks (they run again in the recompute).
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from crdist.models.backbones import BACKBONES


def enable(backbone: nn.Module, backbone_name: str) -> int:
    """Checkpoint every block of ``backbone``; returns how many."""
    blocks_of = BACKBONES.get(backbone_name).blocks
    if blocks_of is None:
        raise ValueError(f"backbone {backbone_name} names no blocks to checkpoint")
    blocks = blocks_of(backbone)
    for block in blocks:
        block.forward = functools.partial(_recomputed, block.forward)
    return len(blocks)


def _recomputed(forward, *args, **kwargs):
    if not torch.is_grad_enabled():  # evaluation, or a frozen backbone: nothing to save
        return forward(*args, **kwargs)
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)
