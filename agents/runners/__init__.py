"""Model runners: text in, task results and routing decisions out."""

import torch

from agents.model_dir import LoadedModel
from agents.runners.base import ModelRunner
from agents.runners.classification import ClassificationRunner
from agents.runners.ner import NerRunner
from agents.runners.onnx_cache import OnnxCache

__all__ = ["ClassificationRunner", "ModelRunner", "NerRunner", "build_runner"]


def build_runner(
    task: str,
    loaded: LoadedModel,
    batch_size: int = 32,
    device: str = "auto",
    dtype: torch.dtype | None = None,
    quantization: str = "none",
    batch_tokens: int | None = None,
    prebuilt_mask: bool = True,
    first_position: bool = True,
    onnx_cache: OnnxCache | None = None,
) -> ModelRunner:
    """The runner for a loaded model's kind (``quantization``: see ``TaskSettings.quantization``; ``batch_tokens``:
    see :class:`ModelRunner`; ``prebuilt_mask``: see :func:`~agents.runners.base.additive_mask`; ``first_position``:
    see :class:`ModelRunner`; ``onnx_cache``: where an int8 runner keeps its quantised model between starts,
    :mod:`agents.runners.onnx_cache`)."""
    from schemas.extraction import TaskKind

    cls = NerRunner if loaded.kind is TaskKind.ner else ClassificationRunner
    return cls(
        task,
        loaded,
        batch_size=batch_size,
        device=device,
        dtype=dtype,
        quantization=quantization,
        batch_tokens=batch_tokens,
        prebuilt_mask=prebuilt_mask,
        first_position=first_position,
        onnx_cache=onnx_cache,
    )
