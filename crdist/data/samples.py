"""How one sample is stored in a shard and turned back into tensors.

A sample is a tar member group: ``<key>.png`` (lossless, so stored pixels come back exactly) and
``<key>.cls`` (the label as ASCII digits). Nothing in a shard is unpickled.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from crdist.errors import CrdistError


class SampleError(CrdistError, ValueError):
    """A shard member that cannot be decoded; the message names the shard and the sample."""


def encode_image_sample(key: str, image: np.ndarray, label: int) -> dict:
    mode = {1: "L", 3: "RGB"}[image.shape[-1]]
    pixels = image[..., 0] if image.shape[-1] == 1 else image
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode=mode).save(buffer, format="PNG", compress_level=6)
    return {"__key__": key, "png": buffer.getvalue(), "cls": str(int(label)).encode("ascii")}


def decode_label(sample: dict) -> int:
    try:
        return int(sample["cls"].decode("ascii"))
    except (KeyError, ValueError, UnicodeDecodeError) as err:
        raise SampleError(f"{_where(sample)}: bad or missing label ({err})") from None


def decode_pixels(sample: dict, channels: int) -> np.ndarray:
    """PNG bytes → uint8 H × W × C."""
    try:
        with Image.open(io.BytesIO(sample["png"])) as image:
            image = image.convert({1: "L", 3: "RGB"}[channels])
            pixels = np.asarray(image, dtype=np.uint8)
    except (KeyError, OSError, ValueError) as err:
        raise SampleError(f"{_where(sample)}: cannot decode image ({type(err).__name__}: {err})") from None
    return pixels[..., None] if pixels.ndim == 2 else pixels


class ImageDecoder:
    """Shard sample → (normalised C × H × W float tensor, label). Picklable for loader workers."""

    def __init__(self, channels: int, mean: list[float], std: list[float]):
        self.channels = channels
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, sample: dict) -> tuple[torch.Tensor, int]:
        pixels = decode_pixels(sample, self.channels)
        image = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float().div_(255.0)
        return (image - self.mean) / self.std, decode_label(sample)


def collate(samples: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*samples)
    return torch.stack(images), torch.tensor(labels, dtype=torch.long)


def _where(sample: dict) -> str:
    return f"{sample.get('__url__', '<unknown shard>')} (sample {sample.get('__key__', '?')})"
