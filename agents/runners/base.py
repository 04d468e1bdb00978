"""The inference wrapper shared by every runner.

Inference runs in three steps: ``preprocess`` (tokenise into windows, CPU),
``_forward`` (the only code that touches the device) and ``postprocess`` (floats to
plain results). :meth:`ModelRunner.window_probabilities` owns device placement,
``inference_mode``, length-sorted batching and the move back to CPU (bf16 is upcast
to float32 before numpy).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch
from tqdm import tqdm

from agents.model_dir import LoadedModel
from agents.runners.windows import Windows, make_windows
from agents.types import TaskOutput


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    out: np.ndarray = (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)
    return out


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class ModelRunner(ABC):
    """Runs one task's model over batches of texts."""

    def __init__(
        self, task: str, loaded: LoadedModel, batch_size: int = 32, device: str = "auto", dtype: torch.dtype | None = None
    ) -> None:
        self.task = task
        self.loaded = loaded
        self.batch_size = batch_size
        self.device = pick_device(device)
        # bf16 on CUDA (tensor cores, half the memory traffic); float32 on CPU, where bf16 is slower here
        self.dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        self.model = loaded.model.to(device=self.device, dtype=self.dtype)  # type: ignore[call-arg]
        self.pad_id = int(loaded.tokenizer.pad_token_id or 0)

    def __call__(self, texts: list[str]) -> list[TaskOutput]:
        if not texts:
            return []
        windows = self.preprocess(texts)
        return self.postprocess(texts, windows, self.window_probabilities(windows))

    def preprocess(self, texts: list[str]) -> Windows:
        return make_windows(self.loaded.tokenizer, texts, self.loaded.max_length, self.loaded.stride)

    def window_probabilities(self, windows: Windows, temperature: float | None = None) -> list[np.ndarray]:
        """Class probabilities per window (per token for NER), float32, in window order.

        Logits are divided by the model's calibrated temperature (1.0 until ``ehrstream calibrate``).
        """
        t = self.loaded.temperature if temperature is None else temperature
        return [softmax(logits / t) for logits in self.window_logits(windows)]

    def window_logits(self, windows: Windows, progress: bool = False) -> list[np.ndarray]:
        """Raw logits per window (per token for NER), float32, in window order. ``progress``: a bar on a terminal
        (long offline runs: evaluate, calibrate); the worker never shows one."""
        order = sorted(range(len(windows)), key=lambda i: len(windows.input_ids[i]))
        out: list[np.ndarray] = [np.empty(0, dtype=np.float32)] * len(windows)
        batches = range(0, len(order), self.batch_size)
        bar = tqdm(batches, desc=f"{self.task}: inference", unit="batch", disable=None if progress else True, leave=False)
        with torch.inference_mode():
            for first in bar:
                idx = order[first : first + self.batch_size]
                width = max(len(windows.input_ids[i]) for i in idx)
                ids = torch.full((len(idx), width), self.pad_id, dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for row, i in enumerate(idx):
                    seq = windows.input_ids[i]
                    ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
                    mask[row, : len(seq)] = 1
                logits = self._forward(ids.to(self.device, non_blocking=True), mask.to(self.device, non_blocking=True))
                values = logits.float().cpu().numpy()  # upcast (bf16 on CUDA) before numpy
                for row, i in enumerate(idx):
                    out[i] = values[row, : len(windows.input_ids[i])] if values.ndim == 3 else values[row]
        return out

    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        return logits

    @abstractmethod
    def postprocess(self, texts: list[str], windows: Windows, probs: list[np.ndarray]) -> list[TaskOutput]: ...
