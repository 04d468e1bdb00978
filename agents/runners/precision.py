"""How a task's model runs on a CPU: what ``TaskSettings.quantization`` asks for, resolved against the host.

``"bf16"`` runs the torch model in bfloat16. CPUs with AMX or AVX512-BF16 multiply bf16 matrices natively (oneDNN,
the path torch takes when :func:`native_bf16` says so). On a 2-core AMX host the default MiniLM models' forward
costs a quarter to a third of float32's CPU and about half of ONNX Runtime int8's, with logits closer to float32's
(docs/performance/hot-path.md, "bf16 on CPUs that multiply it natively"). ``"int8"`` runs an ONNX Runtime session with
int8 weights (:mod:`agents.runners.onnx_int8`): on that AMX host 1.6-2x faster than float32. On an AVX2-only AMD EPYC
(Zen 1: no VNNI, no AVX-512) it was not faster than float32 at all, and the torch float32 path, which computes a
classifier's last layer for the first position only, was faster than int8 (docs/performance/hot-path.md, "eighth
session"). On an AMD EPYC with AVX512-BF16 and VNNI but no AMX (Zen 4) int8 was the fastest: 40-43 ms of CPU per note
and model against bf16's 48-53 and float32's 80-97, one thread (docs/performance/hot-path.md, "nineteenth session").
So ``"auto"`` takes bf16 where the CPU has AMX, int8 where it has int8 dot-product instructions (:func:`native_int8`),
bf16 where it multiplies bf16 natively without either, and float32 elsewhere.

The ICD-10-CM coder's sentence encoder resolves ``"auto"`` by the same rule (:mod:`agents.clinical.encoder`).
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


def native_int8() -> bool:
    """Whether the CPU has int8 dot-product instructions (AVX512-VNNI, the check torch makes; AMX-INT8 hosts have it
    too). Without them an int8 matrix product is built from 16-bit multiply-adds, and ONNX Runtime's dynamic int8
    gained nothing over float32 on the AVX2 host measured."""
    check = getattr(torch.cpu, "_is_vnni_supported", None)
    return bool(check is not None and check())


def amx() -> bool:
    """Whether the CPU has AMX tiles (Intel Sapphire Rapids and later), where oneDNN's bf16 matrix products beat int8."""
    check = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(check is not None and check())


def cpu_precision(quantization: str) -> str:
    """What a task's model runs in on a CPU for ``quantization``: ``"none"`` (float32), ``"int8"`` or ``"bf16"``;
    ``"auto"``: bf16 where :func:`native_bf16` and :func:`amx`, else int8 where :func:`native_int8`, else bf16 where
    :func:`native_bf16`, else float32."""
    if _checked(quantization) != "auto":
        return quantization
    bf16 = native_bf16()
    return "bf16" if bf16 and amx() else "int8" if native_int8() else "bf16" if bf16 else "none"


def _checked(quantization: str) -> str:
    if quantization not in CPU_PRECISIONS:
        raise ValueError(f"quantization {quantization!r}: expected one of {', '.join(CPU_PRECISIONS)}")
    return quantization
