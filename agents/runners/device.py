"""Which torch device a setting names (``auto``: the GPU when torch sees one) and which attention kernels a forward there
may use. Apart from the runners, so that what only plans around the device (the embedded stack's worker count) or runs
its own forward (the coder's encoder) imports torch and nothing more."""

from __future__ import annotations

import contextlib

import torch


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def attention_kernels(device: torch.device) -> contextlib.AbstractContextManager[None]:
    """The attention kernels a forward on ``device`` may use. On CUDA every one of torch's but cuDNN's: torch may pick
    cuDNN's for a bf16 forward with a padding mask on Hopper, and cuDNN builds an execution plan, on the host, for
    every (batch, padded length) it has not seen, while length-sorted batches of notes bring new lengths all the time
    (docs/performance/hot-path.md, "GPU, 2026-12-04"). Elsewhere torch's own choice."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])
