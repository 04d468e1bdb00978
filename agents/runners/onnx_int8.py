"""int8 CPU inference through ONNX Runtime: a task's model exported to ONNX once when the runner is built, its weights
dynamically quantised to int8 (per output channel; activations quantised per batch), the task head and the attention
output projections kept in float32 (:data:`FLOAT_NODES`).

Measured on this 2-core CPU against torch's own dynamic quantisation of the same layers (``benchmarks/precision_bench.py``,
README "Quantised CPU inference"): the disease model's forward about 20% less CPU per note, the condition model's about
the same, the default stream's forward about 10% less, at test-split scores within 0.01 of float32. Export and
quantisation take a few seconds per model at worker start; nothing is written next to the model (a temporary
directory, read back into memory), and the result is kept in the worker's ONNX cache (:mod:`agents.runners.onnx_cache`,
``<data_dir>/cache/onnx``) for the next start. A BERT classifier is exported as the runner holds it: with its last layer computed
for the first position only (:mod:`agents.runners.first_position`; 14% less CPU on the EPYC, docs/performance/hot-path.md, "ninth session").
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.runners.onnx_cache import OnnxCache, model_key

#: ONNX opset of the export (ONNX Runtime 1.32 runs it; the legacy exporter writes it)
OPSET = 17


class _Output(torch.nn.Module):
    """The model as a function of (input_ids, attention_mask) to one of its outputs (a task model's ``logits``, an
    encoder's ``last_hidden_state``), the form the exporter traces."""

    def __init__(self, model: torch.nn.Module, output: str) -> None:
        super().__init__()
        self.model = model
        self.output = output

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = getattr(self.model(input_ids=input_ids, attention_mask=attention_mask), self.output)
        return out


def _export(model: torch.nn.Module, per_token: bool, path: Path, output: str) -> None:
    """The float32 model to ONNX, batch and sequence dimensions dynamic. Attention is exported in its plain (eager)
    form: ONNX Runtime runs that faster here than the SDPA graph's export."""
    model = model.float().eval()
    set_attention = getattr(model, "set_attn_implementation", None)
    if set_attention is not None:
        set_attention("eager")
    sample = torch.ones(2, 8, dtype=torch.long)
    axes: dict[str, dict[int, str]] = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}}
    axes[output] = {0: "batch", 1: "tokens"} if per_token else {0: "batch"}
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's notes on Python control flow over shapes (traced as dynamic)
        torch.onnx.export(
            _Output(model, output),
            (sample, sample),
            str(path),
            input_names=["input_ids", "attention_mask"],
            output_names=[output],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )


#: weights kept in float32: the task head, and each layer's attention output projection (quantising it cost the default
#: NER model 0.011 strict F1 on the NCBI test split, keeping it float 0.003; it is a twelfth of the encoder's weights)
FLOAT_NODES = re.compile(r"classifier|attention/output/dense")


def _quantize(source: Path, target: Path, float_nodes: re.Pattern[str] | None) -> None:
    """Every MatMul/Gemm weight to int8 per output channel, except the nodes ``float_nodes`` finds (None: none)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic  # type: ignore[import-untyped]

    graph = onnx.load(str(source), load_external_data=False).graph
    # the quantiser first splits a Gemm into "<name>_MatMul" and "<name>_Add": exclude them under both names
    kept = [node.name for node in graph.node if float_nodes is not None and float_nodes.search(node.name)]
    keep = [name for node in kept for name in (node, f"{node}_MatMul")]
    logging.getLogger().disabled, was = True, logging.getLogger().disabled  # its advice to pre-process goes to root
    try:
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True, nodes_to_exclude=keep)
    finally:
        logging.getLogger().disabled = was


@functools.cache
def _exporter() -> str:
    """The digest of the code that exports and quantises (part of a cached model's key: a change to it is a change to
    the graph)."""
    source = "".join(inspect.getsource(part) for part in (_Output, _export, _quantize))
    return hashlib.sha256(source.encode()).hexdigest()


def _exported_int8(model: torch.nn.Module, per_token: bool, output: str, float_nodes: re.Pattern[str] | None) -> bytes:
    """The model exported and quantised (:func:`_export`, :func:`_quantize`), as the bytes of its ONNX file."""
    with tempfile.TemporaryDirectory(prefix="ehrstream-onnx-") as folder:
        plain, quantized = Path(folder) / "model.onnx", Path(folder) / "model.int8.onnx"
        _export(model, per_token, plain, output)
        _quantize(plain, quantized, float_nodes)
        return quantized.read_bytes()


def cpu_session(model: bytes, threads: int) -> Any:
    """An ONNX Runtime session on the CPU for a serialised model: ``threads`` intra-op threads (the worker's torch thread
    budget), one inter-op thread, every graph optimisation, warnings only."""
    import onnxruntime as ort  # type: ignore[import-untyped]

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


class OnnxInt8Model:
    """A model as an int8 ONNX Runtime session: ``(input_ids, attention_mask)`` int64 arrays in, its float32
    ``output`` out (a task model's ``logits``, per token when ``per_token``; the coder's sentence encoder's
    ``last_hidden_state``). ``threads``: intra-op threads (the worker's torch thread budget; with one, the calling thread
    computes). ``float_nodes``: the weights kept in float32 (:data:`FLOAT_NODES` for a task model; None: every weight int8).
    ``cache``: where a quantised model is kept between starts (:mod:`agents.runners.onnx_cache`); None: built each time."""

    def __init__(
        self,
        model: torch.nn.Module,
        per_token: bool,
        threads: int,
        output: str = "logits",
        float_nodes: re.Pattern[str] | None = FLOAT_NODES,
        cache: OnnxCache | None = None,
    ) -> None:
        #: the model output the session returns
        self.output = output
        data, key = None, ""
        if cache is not None:
            pattern = None if float_nodes is None else float_nodes.pattern
            key = model_key(model, per_token=per_token, output=output, float_nodes=pattern, opset=OPSET, exporter=_exporter())
            data = cache.get(key)
        #: whether the quantised model came from ``cache`` (not exported and quantised here)
        self.from_cache = data is not None
        if data is None:
            data = _exported_int8(model, per_token, output, float_nodes)
            if cache is not None:
                cache.put(key, data)
        import onnx

        #: (node name, operator) of the quantised graph: what runs int8 and what stays float32
        self.nodes = [(node.name, node.op_type) for node in onnx.load_from_string(data).graph.node]
        self.session: Any = cpu_session(data, threads)

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        out: np.ndarray = self.session.run([self.output], {"input_ids": input_ids, "attention_mask": attention_mask})[0]
        return out
