"""Which torch device a setting names (``auto``: the GPU when torch sees one). Apart from the runners, so that what only
plans around the device (the embedded stack's worker count, the coder's encoder) imports torch and nothing more."""

from __future__ import annotations

import torch


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
