"""Training augmentation, applied in the loader workers and seeded per sample so that resume stays exact.

``data.augment`` names a policy:

- ``none``: the images as stored.
- ``crop_flip``: a random crop of the image padded by size/8 on each side (4 px at 32 px, 8 at
  64, 28 at 224) with zeros, and a horizontal flip with p 0.5.
- ``paper``: the paper's code (a SimCLR-style pipeline): ``crop_flip``, then ColorJitter(0.4, 0.4,
  0.4, 0.1) with p 0.8 in a random order of its four adjustments, then grayscale with p 0.2.
  On one-channel images saturation, hue and grayscale change nothing, as in torchvision.

Every random draw comes from a generator seeded by (study seed, task, epoch, sample key), never
from a global random state: the draws do not depend on the rank, the number of loader workers, or
anything a checkpoint would have to hold, so a resumed epoch replays its augmentations exactly, and
the global data order keeps 1 rank and N ranks equal. Evaluation never augments.
"""

from __future__ import annotations

import torch
import torchvision.transforms.v2.functional as TF

from crdist.data.samples import ImageDecoder, decode_label
from crdist.seeding import derive_seed

POLICIES = ("none", "crop_flip", "paper")

_JITTER = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue (the paper's code)


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def _chance(generator: torch.Generator, p: float) -> bool:
    return torch.rand((), generator=generator).item() < p


def crop_flip(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Pad by size/8 with zeros, crop back to the size at a random offset, flip with p 0.5."""
    _, height, width = image.shape
    pad = max(1, round(min(height, width) / 8))
    padded = TF.pad(image, [pad, pad, pad, pad])
    top = int(torch.randint(0, 2 * pad + 1, (), generator=generator))
    left = int(torch.randint(0, 2 * pad + 1, (), generator=generator))
    image = padded[:, top : top + height, left : left + width]
    return TF.horizontal_flip(image) if _chance(generator, 0.5) else image


def color_jitter(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """torchvision's ColorJitter(0.4, 0.4, 0.4, 0.1): its four adjustments in a random order."""
    brightness, contrast, saturation, hue = _JITTER
    factors = [
        (TF.adjust_brightness, _uniform(generator, 1 - brightness, 1 + brightness)),
        (TF.adjust_contrast, _uniform(generator, 1 - contrast, 1 + contrast)),
        (TF.adjust_saturation, _uniform(generator, 1 - saturation, 1 + saturation)),
        (TF.adjust_hue, _uniform(generator, -hue, hue)),
    ]
    for i in torch.randperm(4, generator=generator).tolist():
        adjust, factor = factors[i]
        image = adjust(image, factor)
    return image


def paper(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    image = crop_flip(image, generator)
    if _chance(generator, 0.8):
        image = color_jitter(image, generator)
    if _chance(generator, 0.2) and image.shape[0] == 3:
        image = TF.rgb_to_grayscale(image, num_output_channels=3)
    return image


_APPLY = {"crop_flip": crop_flip, "paper": paper}


class AugmentingDecoder:
    """Shard sample → (augmented, normalised image, label) for one epoch of one task. Picklable."""

    def __init__(self, decoder: ImageDecoder, policy: str, seed: int, task: int, epoch: int):
        if policy not in _APPLY:
            raise ValueError(f"unknown augmentation {policy!r}; expected one of {', '.join(POLICIES)}")
        self.decoder, self.policy = decoder, policy
        self.where = (seed, "augment", task, epoch)

    def __call__(self, sample: dict) -> tuple[torch.Tensor, int]:
        generator = torch.Generator().manual_seed(derive_seed(*self.where, sample["__key__"]))
        image = _APPLY[self.policy](self.decoder.pixels(sample), generator)
        return self.decoder.normalize(image), decode_label(sample)
