"""How one shard sample turns back into model inputs, and how inputs are batched.

A sample is a tar member group: the content (``png`` or ``jpg`` image bytes, or ``txt`` UTF-8
text) and ``cls`` (the label as ASCII digits). Nothing in a shard is unpickled. Images become
normalised C × H × W tensors; text is tokenised here, in the loader, with the backbone's own
tokenizer, so one shard set serves every text backbone.
"""

from __future__ import annotations

import io
import os

import numpy as np
import torch
from PIL import Image

from crdist.errors import CrdistError

Inputs = "torch.Tensor | dict[str, torch.Tensor]"  # images, or a text backbone's tokenised fields


class SampleError(CrdistError, ValueError):
    """A shard member that cannot be decoded; the message names the shard and the sample."""


def decode_label(sample: dict) -> int:
    try:
        return int(sample["cls"].decode("ascii"))
    except (KeyError, ValueError, UnicodeDecodeError) as err:
        raise SampleError(f"{_where(sample)}: bad or missing label ({err})") from None


def decode_pixels(sample: dict, channels: int, size: tuple[int, int] | None = None) -> np.ndarray:
    """Image bytes → uint8 H × W × C, converted to ``channels`` and resized to ``size`` (w, h) if given."""
    data = sample.get("png") or sample.get("jpg")
    try:
        with Image.open(io.BytesIO(data)) as image:
            mode = {1: "L", 3: "RGB"}[channels]
            if image.mode != mode:  # converting to its own mode would only copy it
                image = image.convert(mode)
            if size is not None and image.size != size:
                image = image.resize(size, Image.BILINEAR)
            pixels = np.asarray(image, dtype=np.uint8)
    except (TypeError, OSError, ValueError) as err:
        raise SampleError(f"{_where(sample)}: cannot decode image ({type(err).__name__}: {err})") from None
    return pixels[..., None] if pixels.ndim == 2 else pixels


class ImageDecoder:
    """Shard sample → (normalised C × H × W float tensor, label). Picklable for loader workers."""

    def __init__(self, channels: int, mean: list[float], std: list[float], size: tuple[int, int] | None = None):
        self.channels = channels
        self.size = size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        # normalize(pixels()) of every 8-bit level in every channel, computed by those very
        # operations, so a lookup gives the same floats bit for bit. One numpy lookup per image
        # instead of six small torch operations: a third of the decoding time of an 8 × 8 digit.
        levels = torch.arange(256, dtype=torch.uint8).view(1, 1, 256).expand(channels, 1, 256)
        self._levels = self.normalize(levels.float().div_(255.0)).view(channels, 256).numpy()
        self._channel = np.arange(channels).reshape(channels, 1, 1)

    def __call__(self, sample: dict) -> tuple[torch.Tensor, int]:
        pixels = self._decoded(sample)  # H × W × C
        return torch.from_numpy(self._levels[self._channel, pixels.transpose(2, 0, 1)]), decode_label(sample)

    def pixels(self, sample: dict) -> torch.Tensor:
        """The image as C × H × W floats in [0, 1] (what augmentation works on)."""
        pixels = self._decoded(sample)
        return torch.from_numpy(pixels.copy()).permute(2, 0, 1).float().div_(255.0)

    def decode_pixels(self, sample: dict) -> np.ndarray:
        """The image's uint8 H × W × C pixels, converted and resized as this decoder's images are."""
        return decode_pixels(sample, self.channels, self.size)

    def _decoded(self, sample: dict) -> np.ndarray:
        # Decoded already when it comes from a stream's shard cache (crdist.data.cache).
        pixels = sample.get("pixels")
        return pixels if pixels is not None else self.decode_pixels(sample)

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        return (image - self.mean) / self.std


class TextDecoder:
    """Shard sample → (tokenised fields padded to ``max_length``, label)."""

    def __init__(self, tokenizer_path: str, max_length: int):
        from transformers import AutoTokenizer

        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # loader workers are forked
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_path, local_files_only=True)
        self.max_length = max_length

    def __call__(self, sample: dict) -> tuple[dict[str, torch.Tensor], int]:
        try:
            text = sample["txt"].decode("utf-8")
        except (KeyError, UnicodeDecodeError) as err:
            raise SampleError(f"{_where(sample)}: bad or missing text ({err})") from None
        tokens = self.tokenizer(text, truncation=True, max_length=self.max_length, padding="max_length",
                                return_tensors="pt")
        return {k: v[0] for k, v in tokens.items() if k in ("input_ids", "attention_mask")}, decode_label(sample)


def make_decoder(manifest, model_cfg):
    if manifest.modality == "text":
        return TextDecoder(model_cfg.pretrained, model_cfg.max_length)
    info = manifest.image
    return ImageDecoder(info.channels, info.mean, info.std, (info.width, info.height) if info.resize else None)


def collate(samples: list[tuple[Inputs, int]]) -> tuple[Inputs, torch.Tensor]:
    inputs, labels = zip(*samples)
    if isinstance(inputs[0], dict):
        batched = {k: torch.stack([x[k] for x in inputs]) for k in inputs[0]}
    else:
        batched = torch.stack(inputs)
    return batched, torch.tensor(labels, dtype=torch.long)


def concat(parts: list[Inputs]) -> Inputs:
    if isinstance(parts[0], dict):
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    return torch.cat(parts)


def take(inputs: Inputs, index) -> Inputs:
    """Rows ``index`` (a slice or an index tensor) of a batch of inputs."""
    if isinstance(inputs, dict):
        return {k: v[index] for k, v in inputs.items()}
    return inputs[index]


def count(inputs: Inputs) -> int:
    return len(next(iter(inputs.values()))) if isinstance(inputs, dict) else len(inputs)


def to_device(inputs: Inputs, device) -> Inputs:
    if isinstance(inputs, dict):
        return {k: v.to(device) for k, v in inputs.items()}
    return inputs.to(device)


def _where(sample: dict) -> str:
    return f"{sample.get('__url__', '<unknown shard>')} (sample {sample.get('__key__', '?')})"
