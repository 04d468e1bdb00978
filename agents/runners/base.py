"""The inference wrapper shared by every runner.

Inference runs in three steps: ``preprocess`` (tokenise into windows, CPU),
``_forward`` (the only code that touches the device) and ``postprocess`` (floats to
plain results). :meth:`ModelRunner.window_probabilities` owns device placement,
``inference_mode``, length-sorted batching and the move back to CPU (bf16 is upcast
to float32 before numpy).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod

import numpy as np
import torch
from tqdm import tqdm

from agents.model_dir import LoadedModel
from agents.runners.columns import TaskColumns
from agents.runners.windows import TokenCache, Tokenizer, Windows, batch_bounds, windows_of
from agents.types import TaskOutput


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    out: np.ndarray = (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)
    return out


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """The model with its encoder's ``nn.Linear`` layers dynamically quantised to int8 (weights int8 per output
    channel, once; activations quantised per batch); embeddings, layer norms, softmax and the task head
    (``classifier``, a few hundred weights) stay float32. CPU only. Per-channel weights matter: per-tensor int8 over
    every layer cost the default NER model 0.023 F1 on the NCBI test split, per-channel 0.007 (README)."""
    import warnings

    spec = {
        name: torch.ao.quantization.per_channel_dynamic_qconfig
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and not name.split(".")[-1].startswith("classifier")
    }
    with warnings.catch_warnings():
        # torch 2.13 marks its quantised tensors deprecated in favour of torchao (not installed here); the pinned torch
        # still ships and runs them
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*", category=UserWarning)
        quantized: torch.nn.Module = torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
            model, spec, dtype=torch.qint8
        )
    return quantized


#: padded tokens per forward batch on a CPU when none is configured: measured best for both the near-free bench models
#: and the default int8 MiniLM models here (README, "the hot path around the model"); a GPU is bounded by windows only
CPU_BATCH_TOKENS = 2048


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


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
    ) -> None:
        self.task = task
        self.loaded = loaded
        #: a forward batch holds at most ``batch_size`` windows and ``batch_tokens`` padded tokens (``None``: no token
        #: bound on a GPU, :data:`CPU_BATCH_TOKENS` on a CPU; 0: no token bound)
        self.batch_size = batch_size
        self.device = pick_device(device)
        if batch_tokens is None:
            batch_tokens = CPU_BATCH_TOKENS if self.device.type == "cpu" else 0
        self.batch_tokens = batch_tokens or None
        # bf16 on CUDA (tensor cores, half the memory traffic); float32 on CPU, where bf16 is slower here
        self.dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        self.model = loaded.model.to(device=self.device, dtype=self.dtype)  # type: ignore[call-arg]
        #: what actually runs: int8 applies on CPU only (on a GPU the model runs in bf16)
        self.quantization = quantization if self.device.type == "cpu" else "none"
        if self.quantization == "int8":
            self.model = quantize_int8(self.model)
        self.tokenizer = Tokenizer(loaded.tokenizer)
        #: wall and CPU seconds spent inside the model's forward calls since this runner was built (see
        #: :meth:`forward_cpu_time` for whose CPU)
        self.forward_seconds = 0.0
        self.forward_cpu_seconds = 0.0

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
        order = np.argsort(lengths, kind="stable")
        out: list[np.ndarray] = [np.empty(0, dtype=np.float32)] * len(windows)
        batches = batch_bounds(lengths[order], self.batch_size, self.batch_tokens)
        bar = tqdm(batches, desc=f"{self.task}: inference", unit="batch", disable=None if progress else True, leave=False)
        with torch.inference_mode():
            for first, end in bar:
                idx = order[first:end]
                width = int(lengths[idx].max())
                ids = torch.from_numpy(np.ascontiguousarray(windows.ids[idx, :width]))
                mask = torch.from_numpy((np.arange(width)[None, :] < lengths[idx, None]).astype(np.int64))
                wall, cpu = time.perf_counter(), self.forward_cpu_time()
                logits = self._forward(ids.to(self.device, non_blocking=True), mask.to(self.device, non_blocking=True)).float()
                if temperature is not None:
                    logits = torch.softmax(logits / temperature, dim=-1)
                values = logits.cpu().numpy()  # float32 (bf16 on CUDA upcast first); waits for the device
                self.forward_seconds += time.perf_counter() - wall
                self.forward_cpu_seconds += self.forward_cpu_time() - cpu
                if values.ndim == 3:
                    for row, i in enumerate(idx):
                        out[i] = values[row, : lengths[i]]
                else:
                    for row, i in enumerate(idx):
                        out[i] = values[row]
        return out

    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        return logits

    @abstractmethod
    def columns(self, texts: list[str], windows: Windows, probs: list[np.ndarray]) -> TaskColumns:
        """The batch's results as columns (the pipeline's form)."""

    def postprocess(self, texts: list[str], windows: Windows, probs: list[np.ndarray]) -> list[TaskOutput]:
        """The batch's results per note, as pydantic objects with their decisions (offline callers)."""
        return self.columns(texts, windows, probs).outputs(texts)
