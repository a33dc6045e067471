"""What a training job computes: FLOPs per sample and, on GPUs, MFU (its memory: crdist/memory.py).

FLOPs per sample are counted once per job, on the meta device (no memory, no compute), by
``torch.utils.flop_counter`` over one forward pass; training is taken as 3× the forward
(forward + backward of activations and weights), the usual convention.
"""

from __future__ import annotations

import torch

# Dense bf16 peak TFLOP/s per GPU model, for MFU; a GPU not listed gets no MFU (null), not a guess.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "L4": 121.0}


def training_flops_per_sample(model_cfg, manifest) -> float | None:
    """3 × the forward FLOPs of one sample; None for text backbones (their cost depends on the tokens)."""
    if manifest.modality != "image":
        return None
    from torch.utils.flop_counter import FlopCounterMode

    from crdist.models.classifier import build_classifier

    channels, height, width = manifest.image.channels, manifest.image.height, manifest.image.width
    with torch.device("meta"):
        model = build_classifier(model_cfg, manifest.in_channels, manifest.num_classes, seed=0,
                                 image_size=manifest.image_size)
        # Eval mode: the same FLOPs, and BatchNorm accepts one sample whose feature map is 1 × 1
        # (train mode refuses a single value per channel: ResNet on 8 × 8 digits).
        model.eval()
        with FlopCounterMode(display=False) as counter:
            model(torch.empty(1, channels, height, width))
    return 3.0 * counter.get_total_flops()


def mfu(flops_per_sample: float | None, samples_per_second_per_worker: float, device: torch.device) -> float | None:
    """Model FLOP utilisation of one GPU against its dense bf16 peak; None on CPU or an unlisted GPU."""
    if flops_per_sample is None or device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    peak = next((tflops for model, tflops in PEAK_BF16_TFLOPS.items() if model in name), None)
    if peak is None:
        return None
    return flops_per_sample * samples_per_second_per_worker / (peak * 1e12)
