"""What a training job costs: per-rank peak memory, FLOPs per sample and, on GPUs, MFU.

Peak memory is the process's resident set high-water mark on CPU (``VmHWM``, reset when the job
starts, so a reused worker process reports this job's peak) and CUDA's max allocated bytes on GPU.
FLOPs per sample are counted once per job, on the meta device (no memory, no compute), by
``torch.utils.flop_counter`` over one forward pass; training is taken as 3× the forward
(forward + backward of activations and weights), the usual convention.
"""

from __future__ import annotations

from pathlib import Path

import torch

# Dense bf16 peak TFLOP/s per GPU model, for MFU; a GPU not listed gets no MFU (null), not a guess.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "L4": 121.0}


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux: "5" resets the resident set high-water mark of this process (proc(5), clear_refs)
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # elsewhere the peak is the process's since it started


def current_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def return_large_frees_to_the_system() -> None:
    """Allocate blocks of 128 KiB and more with mmap, so freeing them returns them to the system.

    glibc raises its mmap threshold each time a large mmapped block is freed (up to 32 MiB), after
    which parameter- and gradient-sized temporaries land on its heap and stay in the resident set
    when freed. The peak is reached inside a step, so trimming between steps cannot help. Under
    ZeRO-3 this held about 626 MiB per rank for ViT-B/16 on 2 CPU ranks. No-op where glibc is not
    the allocator. (mallopt's M_MMAP_THRESHOLD is -3.)
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)
    except (OSError, AttributeError):
        pass


def release_freed_memory() -> None:
    """Hand the pages that freed objects left in glibc's heap back to the system.

    Decoding a stream allocates and frees one image after another (each below glibc's mmap
    threshold, so on its heap) between the small tensors that are kept (features, labels); the kept
    ones pin the freed space, and the resident set grew by about half the decoded split (23 KB per
    64×64 image) until ``malloc_trim`` was called. No-op where glibc is not the allocator.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


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
