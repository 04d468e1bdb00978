"""Errors raised by model loading, inference and training."""

from __future__ import annotations

from pathlib import Path

from schemas.errors import EhrstreamError


class ModelLoadError(EhrstreamError):
    """A model directory that cannot be loaded: missing files, wrong kind, bad manifest."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"cannot load model from {path}: {reason}")
        self.path = Path(path)
        self.reason = reason


class TrainingDataError(EhrstreamError):
    """Training or evaluation data that cannot be used (empty, unknown labels, bad offsets)."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason
