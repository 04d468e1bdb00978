"""The inference wrapper shared by every runner.

Inference runs in three steps: ``preprocess`` (tokenise into windows, CPU),
``_forward`` (the only code that touches the device) and ``postprocess`` (floats to
plain results). :meth:`ModelRunner.window_probabilities` owns device placement,
``inference_mode``, length-sorted batching and the move back to CPU (bf16 is upcast
to float32 before numpy).
"""

from __future__ import annotations

import dataclasses
import time
from abc import ABC, abstractmethod

import numpy as np
import torch
from tqdm import tqdm

from agents.model_dir import LoadedModel
from agents.runners.columns import TaskColumns
from agents.runners.device import attention_kernels, pick_device, wait_for_device
from agents.runners.onnx_cache import OnnxCache
from agents.runners.onnx_int8 import OnnxInt8Model
from agents.runners.precision import cpu_precision
from agents.runners.windows import TokenCache, Tokenizer, Windows, padded, put_back, sorted_batches, windows_of
from agents.types import TaskOutput
from schemas.extraction import TaskKind


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    out: np.ndarray = (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)
    return out


#: padded tokens per forward batch on a CPU when none is configured: measured best for both the near-free bench models
#: and the default int8 MiniLM models here (docs/performance/hot-path.md); a GPU is bounded by windows only
CPU_BATCH_TOKENS = 2048


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A (batch, tokens) 0/1 padding mask as the (batch, 1, 1, tokens) bias attention adds to its scores: 0 on the
    window's tokens, the dtype's minimum on padding. Given to the model as is, it spares transformers building a
    (batch, 1, tokens, tokens) mask from the 2D one on every call (docs/performance/hot-path.md, "the models' padding masks")."""
    bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    bias.masked_fill_(mask == 0, torch.finfo(dtype).min)
    return bias[:, None, None, :]


def takes_additive_mask(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the model gives the same logits for :func:`additive_mask` as for the 2D mask, checked on a padded
    two-window sample (architectures whose attention does not take a prebuilt mask, or take it differently, keep the 2D
    one)."""
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", 0) or 0)
    if vocab < 20:
        return False
    ids = (torch.arange(16, device=device).reshape(2, 8) * 7 + 5) % vocab
    mask = torch.ones(2, 8, dtype=torch.long, device=device)
    mask[1, 5:] = 0
    try:
        with torch.inference_mode():
            plain = model(input_ids=ids, attention_mask=mask).logits.float()
            prebuilt = model(input_ids=ids, attention_mask=additive_mask(mask, dtype)).logits.float()
    except (RuntimeError, ValueError, TypeError, IndexError):  # an architecture that refuses a 4D mask
        return False
    if plain.shape != prebuilt.shape:
        return False
    if plain.ndim == 3:  # per token: the padded window's padding positions carry no result
        plain, prebuilt = plain[mask.bool()], prebuilt[mask.bool()]
    tolerance = 1e-4 if dtype == torch.float32 else 3e-2
    return bool(torch.allclose(plain, prebuilt, rtol=tolerance, atol=tolerance))


class ModelRunner(ABC):
    """Runs one task's model over batches of texts."""

    def __init__(
        self,
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
    ) -> None:
        self.task = task
        #: a forward batch holds at most ``batch_size`` windows and ``batch_tokens`` padded tokens (``None``: no token
        #: bound on a GPU, :data:`CPU_BATCH_TOKENS` on a CPU; 0: no token bound)
        self.batch_size = batch_size
        self.device = pick_device(device)
        if batch_tokens is None:
            batch_tokens = CPU_BATCH_TOKENS if self.device.type == "cpu" else 0
        self.batch_tokens = batch_tokens or None
        #: what actually runs on a CPU: "none" (float32), "int8" (ONNX Runtime) or "bf16" ("auto" resolved for this host,
        #: :func:`~agents.runners.precision.cpu_precision`); on a GPU the model runs in bf16 and this is "none"
        self.quantization = cpu_precision(quantization) if self.device.type == "cpu" else "none"
        # bf16 on CUDA (tensor cores, half the memory traffic) and on a CPU that asks for it; float32 otherwise
        bf16 = self.device.type == "cuda" or self.quantization == "bf16"
        self.dtype = dtype or (torch.bfloat16 if bf16 else torch.float32)
        if loaded.model is None:
            raise ValueError(f"task {task}: the loaded model's weights were already let go by an int8 runner")
        model = loaded.model.to(device=self.device, dtype=self.dtype)  # type: ignore[call-arg]
        int8 = self.quantization == "int8"
        #: the torch model that runs the forward; ``None`` when the int8 session does
        self.model: torch.nn.Module | None = model
        #: the torch forward gets :func:`additive_mask` on a CPU (``prebuilt_mask`` asks for it, and the model is checked
        #: to take it); else the plain 2D mask, as the bench's reference runs and the int8 export traces. A GPU keeps the
        #: 2D mask: the prebuilt one was measured on CPUs only, and CUDA's attention kernels were never run with it here
        cpu = self.device.type == "cpu"
        self.prebuilt_mask = prebuilt_mask and cpu and not int8 and takes_additive_mask(model, self.device, self.dtype)
        #: whether the model's last layer runs for the first position only (``first_position`` asks for it on a CPU, where
        #: :meth:`_first_position_only` finds it gives the same results: BERT document classifiers); the int8 session is
        #: exported from the model with that layer in place
        self.first_position = first_position and cpu and self._first_position_only()
        self.int8: OnnxInt8Model | None = None
        if int8:
            assert self.model is not None
            per_token = loaded.kind is TaskKind.ner
            self.int8 = OnnxInt8Model(self.model, per_token=per_token, threads=torch.get_num_threads(), cache=onnx_cache)
            # the session holds its own weights: the float32 ones (about 90 MB for a MiniLM task) are let go
            self.model, loaded = None, dataclasses.replace(loaded, model=None)
        self.loaded = loaded
        self.tokenizer = Tokenizer(loaded.tokenizer)
        #: wall and CPU seconds spent inside the model's forward calls since this runner was built (see
        #: :meth:`forward_cpu_time` for whose CPU)
        self.forward_seconds = 0.0
        self.forward_cpu_seconds = 0.0

    def _first_position_only(self) -> bool:
        """Make ``self.model`` one that computes its last layer for the first position only, where that gives the same
        results (a copy sharing the weights: the loaded model keeps its layers); whether it now does. Only a document
        classifier's pooler reads nothing else (:class:`~agents.runners.classification.ClassificationRunner`)."""
        return False

    @property
    def runs_in(self) -> str:
        """What the forward computes in: "bf16" (on a GPU, or asked for on a CPU), "int8" or "float32"."""
        if self.int8 is not None:
            return "int8"
        return "bf16" if self.dtype == torch.bfloat16 else "float32" if self.dtype == torch.float32 else str(self.dtype)

    def forward_cpu_time(self) -> float:
        """The CPU clock a forward call is charged by: the calling thread's when torch computes on it alone (one
        intra-op thread, or a GPU, where the CPU only launches kernels); the whole process's when torch's intra-op
        threads share the work (then other threads' work during the call is charged to the model too)."""
        if self.device.type == "cuda" or torch.get_num_threads() == 1:
            return time.thread_time()
        return time.process_time()

    def __call__(self, texts: list[str]) -> list[TaskOutput]:
        if not texts:
            return []
        windows = self.preprocess(texts)
        return self.postprocess(texts, windows, self.window_probabilities(windows))

    def preprocess(self, texts: list[str], tokens: TokenCache | None = None) -> Windows:
        """The texts' windows; ``tokens``: a batch's shared tokenizer passes (tasks with the same tokenizer share one)."""
        cache = tokens or TokenCache(texts)
        return windows_of(self.tokenizer, cache.tokens(self.tokenizer), self.loaded.max_length, self.loaded.stride)

    def window_probabilities(self, windows: Windows, temperature: float | None = None) -> list[np.ndarray]:
        """Class probabilities per window (per token for NER), float32, in window order.

        Logits are divided by the model's calibrated temperature (1.0 until ``ehrstream calibrate``); the softmax runs
        per batch on the device.
        """
        t = self.loaded.temperature if temperature is None else temperature
        return self._run(windows, t)

    def window_logits(self, windows: Windows, progress: bool = False) -> list[np.ndarray]:
        """Raw logits per window (per token for NER), float32, in window order. ``progress``: a bar on a terminal
        (long offline runs: evaluate, calibrate); the worker never shows one."""
        return self._run(windows, None, progress)

    def _run(self, windows: Windows, temperature: float | None, progress: bool = False) -> list[np.ndarray]:
        """Length-sorted batches of padded windows through the model; the softmax of ``logits / temperature`` on the
        device when a temperature is given, else the logits; one float32 array per window (its real tokens only)."""
        lengths = windows.lengths
        out: list[np.ndarray] = [np.empty(0, dtype=np.float32)] * len(windows)
        batches = sorted_batches(windows, self.batch_size, self.batch_tokens)
        bar = tqdm(batches, desc=f"{self.task}: inference", unit="batch", disable=None if progress else True, leave=False)
        with torch.inference_mode(), attention_kernels(self.device):
            for idx in bar:
                ids, mask = padded(windows, idx)
                wall, cpu = time.perf_counter(), self.forward_cpu_time()
                logits = self._logits(ids, mask)
                if temperature is not None:
                    logits = torch.softmax(logits / temperature, dim=-1)
                wait_for_device(self.device)
                values = logits.cpu().numpy()  # float32 (bf16 on CUDA upcast first)
                self.forward_seconds += time.perf_counter() - wall
                self.forward_cpu_seconds += self.forward_cpu_time() - cpu
                put_back(out, values, idx, lengths)
        return out

    def _logits(self, ids: np.ndarray, mask: np.ndarray) -> torch.Tensor:
        """One padded batch's float32 logits, on the device: the int8 session's on a CPU when quantised, else the
        model's."""
        if self.int8 is not None:
            return torch.from_numpy(self.int8(ids, mask))
        input_ids = torch.from_numpy(ids).to(self.device, non_blocking=True)
        attention_mask = torch.from_numpy(mask).to(self.device, non_blocking=True)
        if not self.prebuilt_mask:
            return self._forward(input_ids, attention_mask).float()
        # a batch without padding needs no mask (transformers drops an all-ones one too)
        return self._forward(input_ids, None if mask.all() else additive_mask(attention_mask, self.dtype)).float()

    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        assert self.model is not None  # the int8 path never comes here
        logits: torch.Tensor = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        return logits

    @abstractmethod
    def columns(self, texts: list[str], windows: Windows, probs: list[np.ndarray]) -> TaskColumns:
        """The batch's results as columns (the pipeline's form)."""

    def postprocess(self, texts: list[str], windows: Windows, probs: list[np.ndarray]) -> list[TaskOutput]:
        """The batch's results per note, as pydantic objects with their decisions (offline callers)."""
        return self.columns(texts, windows, probs).outputs(texts)
