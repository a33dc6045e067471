"""What every reader of a raw dataset returns: a list of labelled samples, not yet loaded.

A sample refers to its content (a row of an in-memory array, an image file, or a text) and knows
where it came from, so any error while reading or encoding it names the file (and line or row).
Large sets (FMoW, TinyImageNet) are never held in memory: their samples are files read while the
shards are written.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import numpy as np
from PIL import Image

from crdist.errors import CrdistError


class SourceError(CrdistError, ValueError):
    """A raw dataset that cannot be read as its documented layout; the message names the file."""


@dataclass
class SourceSample:
    key: str  # unique and stable within the source; becomes the tar key (sanitised)
    label: int
    split: str  # the source's own split: "train" or "test" ("train" only when it has none)
    origin: str  # "data_batch_3 row 17", "…/val/images/val_12.JPEG", "train.csv line 9"
    domain: str = ""  # for domain-incremental streams: region, year, dataset or domain name
    row: int | None = None  # into Source.arrays, or the row of the split in Source.image_bytes's table
    path: Path | None = None  # an image file, stored as its original bytes
    text: str | None = None


@dataclass
class Source:
    name: str
    modality: Literal["image", "text"]
    samples: list[SourceSample]
    class_names: list[str]
    fingerprint: str  # identifies the raw content read
    description: str
    channels: int = 3  # images: what the decoder converts to (grayscale JPEGs become RGB)
    arrays: np.ndarray | None = None  # N × H × W × C uint8, for samples with ``row``
    skipped: list[dict] = field(default_factory=list)  # corrupt samples skipped (--skip-corrupt)
    # The raw files besides the samples' own image files that decide the stream (pickles, IDX
    # files, metadata CSVs, annotation lists, text files): with the image files, what reuse of a
    # preparation checks for changes.
    index_files: list[Path] = field(default_factory=list)
    # Images held in a table (a Hugging Face dataset): the encoded image of a sample, read while
    # the shards are written (in the forked shard writers, which share the memory-mapped table).
    image_bytes: Callable[[SourceSample], bytes] | None = None
    cleanup: Callable[[], None] | None = None  # removes what reading it left behind (a cache), once written

    def has_test_split(self) -> bool:
        return any(s.split == "test" for s in self.samples)

    def raw_files(self) -> list[Path]:
        """Every raw file the shards are made from, each once."""
        images = sorted({s.path for s in self.samples if s.path is not None})
        return list(dict.fromkeys([*self.index_files, *images]))


def encode(source: Source, sample: SourceSample, key: str) -> dict:
    """The tar members of one sample: ``png``/``jpg`` image bytes or ``txt``, plus ``cls``."""
    members = {"__key__": key, "cls": str(sample.label).encode("ascii")}
    if sample.text is not None:
        members["txt"] = sample.text.encode("utf-8")
    elif sample.path is not None:
        data = read_bytes(sample.path)
        members[image_extension(data, sample.path)] = data
    elif source.image_bytes is not None:
        extension, data = stored_image(source.image_bytes(sample), sample.origin)
        members[extension] = data
    else:
        members["png"] = png_bytes(source.arrays[sample.row])
    return members


def png_bytes(pixels: np.ndarray) -> bytes:
    image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels, mode="L" if pixels.shape[-1] == 1 else "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise SourceError(f"{path}: cannot read ({err.strerror or err})") from None


def image_extension(data: bytes, path: Path) -> str:
    if data.startswith(b"\x89PNG"):
        return "png"
    if data.startswith(b"\xff\xd8"):
        return "jpg"
    raise SourceError(f"{path}: not a PNG or JPEG image")


def stored_image(data: bytes, where: str) -> tuple[str, bytes]:
    """How an encoded image goes into a shard: PNG and JPEG byte for byte; any other format
    Pillow reads (BMP, WebP, TIFF, GIF …) re-encoded as PNG, losslessly, in its own mode (a
    grayscale image stays one channel)."""
    if data.startswith(b"\x89PNG"):
        return "png", data
    if data.startswith(b"\xff\xd8"):
        return "jpg", data
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.mode not in ("1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"):
                image = image.convert("RGB")  # CMYK, YCbCr, …: PNG has no such mode
            buffer = io.BytesIO()
            image.save(buffer, format="PNG", compress_level=6)
    except Exception as err:  # PIL raises many types for bad files
        raise SourceError(f"{where}: unreadable or truncated image ({type(err).__name__}: {err})") from None
    return "png", buffer.getvalue()


# Pillow modes with one colour channel; "P" (a palette) counts as colour, since its palette may be.
GRAYSCALE_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


def image_mode(data: bytes | Path) -> str | None:
    """The Pillow mode of an encoded image or an image file, from its header alone (no decoding);
    None when it cannot be read (the shard writer then reports it, or skips it with --skip-corrupt)."""
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
            return image.mode
    except Exception:  # PIL raises many types for bad files
        return None


def channels_of(modes) -> int:
    """1 when every readable image is grayscale (a grayscale set stays one channel), else 3."""
    modes = {m for m in modes if m is not None}
    return 1 if modes and modes <= GRAYSCALE_MODES else 3


def check_image(data: bytes, where: str) -> tuple[int, int]:
    """Decode fully (a truncated file fails here, not in a worker); returns (width, height)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return image.size
    except Exception as err:  # PIL raises many types for bad files
        raise SourceError(f"{where}: unreadable or truncated image ({type(err).__name__}: {err})") from None


def fingerprint_files(paths: list[Path]) -> str:
    """Cheap identity of a set of files: names, sizes and modification times."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{int(stat.st_mtime)}\n".encode())
    return digest.hexdigest()


def require_file(path: Path, hint: str = "") -> Path:
    if not path.is_file():
        raise SourceError(f"{path}: missing{'; ' + hint if hint else ''}")
    return path


def require_dir(path: Path, hint: str = "") -> Path:
    if not path.is_dir():
        raise SourceError(f"{path}: directory missing{'; ' + hint if hint else ''}")
    return path
