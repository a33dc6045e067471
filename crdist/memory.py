"""A process's memory: its peak (the resident set's high-water mark on CPU, ``VmHWM``, reset when
a job starts so that a reused worker process reports this job's peak; CUDA's max allocated bytes
on GPU), and handing freed memory back to the system. Used by train and eval jobs alike."""

from __future__ import annotations

from pathlib import Path

import torch


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
