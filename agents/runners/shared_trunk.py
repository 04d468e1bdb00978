"""One forward pass through the layers that several tasks' models share.

Two tasks whose BERT models were fine-tuned from one backbone with the lower layers left alone (heads over a frozen
encoder, or LoRA adapters on the top layers only: ``ehrstream train --adapt-top N``) compute the same hidden states up
to the first layer they changed. :class:`SharedTrunk` runs the embeddings and those shared layers once per batch, then
each task's own remaining layers and head from there: the two default task kinds over one BERT-base then cost about
one model's forward instead of two when they share every layer.

What is shared is found, not configured (:func:`shared_depth`): the embeddings and the first encoder layers whose
weights are equal, bit for bit, in the runners' own models (after quantisation choices and the classifier's
first-position layer). The runners must also cut the same windows (tokenizer, window and stride) and batch them alike.
Each task's logits through the trunk are checked against its own model on a padded probe batch before the trunk is
used; a model that disagrees, int8 sessions and anything not a transformers BERT model keep their own forward.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from agents.runners.base import ModelRunner, additive_mask
from agents.runners.device import attention_kernels, wait_for_device
from agents.runners.windows import Windows, padded, put_back, sorted_batches

log = logging.getLogger(__name__)


def _bert(model: torch.nn.Module) -> Any:
    """The transformers ``BertModel`` inside ``model`` (a BERT classifier), or None."""
    from transformers.models.bert.modeling_bert import BertModel

    base = getattr(model, "base_model", None)
    return base if isinstance(base, BertModel) and base is not model else None


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].shape == sb[k].shape and sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa
    )


def shared_depth(a: torch.nn.Module, b: torch.nn.Module) -> int:
    """How many encoder layers two BERT models share from the bottom, their embeddings the same too; 0 when the
    embeddings differ or either is not a transformers BERT model."""
    ba, bb = _bert(a), _bert(b)
    if ba is None or bb is None or not _same_weights(ba.embeddings, bb.embeddings):
        return 0
    depth = 0
    for la, lb in zip(ba.encoder.layer, bb.encoder.layer, strict=False):
        if la is not lb and not _same_weights(la, lb):
            break
        depth += 1
    return depth


class _HiddenStates(torch.nn.Module):
    """Stands in for a branch's embeddings: hands the model the trunk's output."""

    def __init__(self) -> None:
        super().__init__()
        self.value: torch.Tensor | None = None

    def forward(self, *_: Any, **__: Any) -> torch.Tensor:
        assert self.value is not None
        return self.value


def _rebuilt(model: torch.nn.Module, embeddings: torch.nn.Module | None, layers: slice, pooler: bool = True) -> Any:
    """A shallow copy of the BERT classifier ``model`` (or of a ``BertModel``) with ``embeddings`` (None: its own) and
    ``layers`` of its encoder's layers; every module and weight not on that path is shared with ``model``."""
    root = copy.copy(model)
    root._modules = dict(model._modules)
    bert = _bert(model)
    if bert is None:  # ``model`` is the BertModel itself
        bert, holder = root, None
    else:
        bert = copy.copy(bert)
        bert._modules = dict(bert._modules)
        holder = next(name for name, child in model._modules.items() if child is _bert(model))
        root._modules[holder] = bert
    encoder = copy.copy(bert._modules["encoder"])
    encoder._modules = dict(encoder._modules)
    encoder._modules["layer"] = torch.nn.ModuleList(list(encoder._modules["layer"])[layers])
    bert._modules["encoder"] = encoder
    if embeddings is not None:
        bert._modules["embeddings"] = embeddings
    if not pooler:
        bert._modules["pooler"] = None
    return root if holder is not None else bert


class SharedTrunk:
    """``runners``' models from the embeddings through their first ``depth`` layers, once per batch."""

    def __init__(self, runners: Sequence[ModelRunner], depth: int) -> None:
        first = runners[0]
        assert first.model is not None
        self.runners = list(runners)
        self.depth = depth
        self.trunk = _rebuilt(_bert(first.model), None, slice(0, depth), pooler=False)
        self.stash = _HiddenStates()
        self.branches = [_rebuilt(r.model, self.stash, slice(depth, None)) for r in runners if r.model is not None]
        self.forward_seconds = 0.0
        self.forward_cpu_seconds = 0.0

    @property
    def tasks(self) -> list[str]:
        return [r.task for r in self.runners]

    def agrees(self) -> bool:
        """Every task's logits through the trunk match its own model's on a padded two-window probe batch."""
        first = self.runners[0]
        config: Any = getattr(first.model, "config", None)
        vocab = int(getattr(config, "vocab_size", 0) or 0)
        if vocab < 20:
            return False
        ids = ((np.arange(32).reshape(2, 16) * 7 + 5) % vocab).astype(np.int64)
        mask = np.ones((2, 16), dtype=np.int64)
        mask[1, 9:] = 0
        tolerance = 1e-4 if first.dtype == torch.float32 else 3e-2
        with torch.inference_mode():
            try:
                shared = self._logits(ids, mask)
            except (RuntimeError, ValueError, TypeError, IndexError, AttributeError):
                return False
            for runner, logits in zip(self.runners, shared, strict=True):
                own = runner._logits(ids, mask)
                if own.ndim == 3:  # per token: padding positions carry no result
                    keep = torch.from_numpy(mask).bool().to(own.device)
                    own, logits = own[keep], logits[keep]
                if own.shape != logits.shape or not torch.allclose(own, logits, rtol=tolerance, atol=tolerance):
                    return False
        return True

    def _logits(self, ids: np.ndarray, mask: np.ndarray) -> list[torch.Tensor]:
        """One padded batch: the trunk once, then every task's branch; float32 logits per task, on the device."""
        first = self.runners[0]
        input_ids = torch.from_numpy(ids).to(first.device, non_blocking=True)
        attention_mask = torch.from_numpy(mask).to(first.device, non_blocking=True)
        given: torch.Tensor | None = attention_mask
        if first.prebuilt_mask:
            given = None if mask.all() else additive_mask(attention_mask, first.dtype)
        self.stash.value = self.trunk(input_ids=input_ids, attention_mask=given).last_hidden_state
        try:
            return [branch(input_ids=input_ids, attention_mask=given).logits.float() for branch in self.branches]
        finally:
            self.stash.value = None

    def window_probabilities(self, windows: Windows) -> list[list[np.ndarray]]:
        """Per task, :meth:`ModelRunner.window_probabilities` of these windows (each task's own temperature)."""
        return self._run(windows, probabilities=True)

    def window_logits(self, windows: Windows) -> list[list[np.ndarray]]:
        """Per task, :meth:`ModelRunner.window_logits` of these windows."""
        return self._run(windows, probabilities=False)

    def _run(self, windows: Windows, probabilities: bool) -> list[list[np.ndarray]]:
        first = self.runners[0]
        lengths = windows.lengths
        out: list[list[np.ndarray]] = [[np.empty(0, dtype=np.float32)] * len(windows) for _ in self.runners]
        with torch.inference_mode(), attention_kernels(first.device):
            for idx in sorted_batches(windows, first.batch_size, first.batch_tokens):
                ids, mask = padded(windows, idx)
                wall, cpu = time.perf_counter(), first.forward_cpu_time()
                logits = self._logits(ids, mask)
                if probabilities:
                    logits = [torch.softmax(x / r.loaded.temperature, dim=-1) for x, r in zip(logits, self.runners, strict=True)]
                wait_for_device(first.device)
                values = [x.cpu().numpy() for x in logits]
                self.forward_seconds += time.perf_counter() - wall
                self.forward_cpu_seconds += first.forward_cpu_time() - cpu
                for task_out, task_values in zip(out, values, strict=True):
                    put_back(task_out, task_values, idx, lengths)
        return out


def _compatible(a: ModelRunner, b: ModelRunner) -> bool:
    """Whether two runners cut the same windows and batch them alike on the same device, in torch."""
    return (
        a.model is not None
        and b.model is not None
        and a.device == b.device
        and a.dtype == b.dtype
        and a.prebuilt_mask == b.prebuilt_mask
        and a.tokenizer.fingerprint == b.tokenizer.fingerprint
        and (a.loaded.max_length, a.loaded.stride) == (b.loaded.max_length, b.loaded.stride)
        and (a.batch_size, a.batch_tokens) == (b.batch_size, b.batch_tokens)
    )


def shared_trunks(runners: Sequence[ModelRunner]) -> list[SharedTrunk]:
    """The trunks the runners can share: each runner joins the first earlier group it is compatible with and shares
    at least one layer with; a group of two or more whose outputs agree with the runners' own becomes a trunk."""
    groups: list[tuple[list[ModelRunner], int | None]] = []  # (members, the layers all of them share; None: alone)
    for runner in runners:
        for k, (members, depth) in enumerate(groups):
            if not _compatible(members[0], runner):
                continue
            assert members[0].model is not None and runner.model is not None
            shared = shared_depth(members[0].model, runner.model)
            shared = shared if depth is None else min(depth, shared)
            if shared > 0:
                groups[k] = ([*members, runner], shared)
                break
        else:
            groups.append(([runner], None))
    trunks = []
    for members, depth in groups:
        if depth is None:
            continue
        trunk = SharedTrunk(members, depth)
        if trunk.agrees():
            log.info("tasks %s share %d layer(s): one pass through them per batch", ", ".join(trunk.tasks), depth)
            trunks.append(trunk)
        else:
            log.warning("tasks %s share %d layer(s) but a shared pass disagrees with their own: run apart", ", ".join(trunk.tasks), depth)
    return trunks


class SinglePass:
    """One task's own forward, shaped as a trunk's: the runner alone in :attr:`runners`."""

    def __init__(self, runner: ModelRunner) -> None:
        self.runners = [runner]

    @property
    def tasks(self) -> list[str]:
        return [self.runners[0].task]

    @property
    def forward_seconds(self) -> float:
        return self.runners[0].forward_seconds

    @property
    def forward_cpu_seconds(self) -> float:
        return self.runners[0].forward_cpu_seconds

    def window_probabilities(self, windows: Windows) -> list[list[np.ndarray]]:
        return [self.runners[0].window_probabilities(windows)]

    def window_logits(self, windows: Windows) -> list[list[np.ndarray]]:
        return [self.runners[0].window_logits(windows)]


def forward_passes(runners: Sequence[ModelRunner], trunks: Sequence[SharedTrunk]) -> list[SharedTrunk | SinglePass]:
    """How the runners' forwards run over a batch: one pass per trunk of tasks sharing layers (``trunks``, from
    :func:`shared_trunks`, which runs probe forwards: found once, not per batch), then one per remaining task. Every
    pass's tasks cut the windows of its first runner."""
    in_trunks = {task for trunk in trunks for task in trunk.tasks}
    return [*trunks, *(SinglePass(r) for r in runners if r.task not in in_trunks)]
