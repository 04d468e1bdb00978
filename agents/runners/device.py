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


def wait_for_device(device: torch.device) -> None:
    """Sleep until the work queued on ``device`` is done. On CUDA a copy back to the host busy-waits for the kernels
    before it: with several workers sharing one GPU, that spin cost the calling thread 0.94 ms of CPU per note with 2
    workers and 4.65 with 12 (one H200, docs/performance/hot-path.md, "sixteenth session"), cores the other workers'
    tokenising needs. A blocking event (``cudaEventBlockingSync``) lets the thread sleep instead; the copy after it has
    nothing left to wait for. Elsewhere nothing to do: a CPU forward is done when it returns."""
    if device.type != "cuda":
        return
    done = torch.cuda.Event(blocking=True)  # type: ignore[no-untyped-call]
    done.record()
    done.synchronize()
