"""How a task's model runs on a CPU: what ``TaskSettings.quantization`` asks for, resolved against the host.

``"bf16"`` runs the torch model in bfloat16. CPUs with AMX or AVX512-BF16 multiply bf16 matrices natively (oneDNN,
the path torch takes when :func:`native_bf16` says so). On this 2-core AMX host the default MiniLM models' forward
costs a quarter to a third of float32's CPU and about half of ONNX Runtime int8's, with logits closer to float32's
(README, "bf16 on CPUs that multiply it natively"). CPUs without native bf16 were not measured here; ``"auto"`` takes
the int8 ONNX Runtime session (:mod:`agents.runners.onnx_int8`) on them and bf16 where it is native.
"""

from __future__ import annotations

from typing import get_args

import torch

from agents.config import Quantization

#: what a task may ask for (``TaskSettings.quantization``)
CPU_PRECISIONS: tuple[str, ...] = get_args(Quantization)


def native_bf16() -> bool:
    """Whether torch multiplies bf16 matrices natively on this CPU: oneDNN is built in and the CPU has AMX or
    AVX512-BF16 (the check torch itself makes before it hands a bf16 matmul to oneDNN)."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    built = torch.backends.mkldnn.is_available()  # type: ignore[no-untyped-call]
    return bool(built and check is not None and check())


def cpu_precision(quantization: str) -> str:
    """What runs on a CPU for ``quantization``: ``"none"`` (float32), ``"int8"`` or ``"bf16"``; ``"auto"`` resolved
    by :func:`native_bf16`."""
    if quantization not in CPU_PRECISIONS:
        raise ValueError(f"quantization {quantization!r}: expected one of {', '.join(CPU_PRECISIONS)}")
    if quantization == "auto":
        return "bf16" if native_bf16() else "int8"
    return quantization
