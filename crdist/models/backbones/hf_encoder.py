"""A BERT-style text encoder from a local Hugging Face directory (model.pretrained), mean-pooled.

The same directory provides the tokenizer the loader workers use. Nothing is downloaded: a
missing directory is a config error that says how to get one.
"""

from __future__ import annotations

import torch
from torch import nn

from crdist.models.backbones import backbone


class MeanPooledEncoder(nn.Module):
    def __init__(self, path: str):
        super().__init__()
        from transformers import AutoModel

        self.encoder = AutoModel.from_pretrained(path, local_files_only=True)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        mask = inputs["attention_mask"].unsqueeze(-1).to(torch.float32)
        hidden = self.encoder(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


@backbone("hf-encoder", modality="text")
def hf_encoder(in_channels: int, model_cfg, image_size: int | None = None) -> tuple[nn.Module, int]:
    module = MeanPooledEncoder(model_cfg.pretrained)
    return module, module.encoder.config.hidden_size
