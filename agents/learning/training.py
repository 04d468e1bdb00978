"""Fine-tuning a task's model (LoRA by default) and writing a versioned model directory.

The loop is plain PyTorch so it is the same on CPU and CUDA and deterministic for a
seed. After each epoch the model is scored on the dev split through the production
runner (same windows, same span decoding), and the best epoch is kept.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm
from transformers import AutoTokenizer

from agents.errors import TrainingDataError
from agents.learning.datasets import ClassificationExample, Example, NerExample, data_hash
from agents.model_dir import (
    DEFAULT_BACKBONE,
    MANIFEST,
    LoadedModel,
    ModelManifest,
    auto_model_class,
    quiet_transformers,
    resolve_base,
    write_manifest,
)
from agents.runners import build_runner
from agents.runners.device import pick_device
from agents.runners.windows import make_windows
from schemas.extraction import TaskKind

log = logging.getLogger(__name__)

IGNORE = -100


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    task: str
    kind: TaskKind
    base: str = DEFAULT_BACKBONE
    method: Literal["lora", "full"] = "lora"
    epochs: int = 5
    learning_rate: float = 5e-4
    batch_size: int = 16
    max_length: int = 256
    stride: int = 64
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    #: LoRA on the top N encoder layers only (0: every layer). Tasks trained from one backbone with the same N and
    #: window leave the layers below as the backbone's, and the workers run those once per batch for all of them
    #: (:mod:`agents.runners.shared_trunk`)
    adapt_top: int = Field(default=0, ge=0)
    seed: int = 13
    device: str = "auto"
    #: stop after this many training windows per epoch (0 = all); for smoke runs
    limit: int = 0
    #: train on a seeded random subset of this many examples (0 = all); for data-efficiency curves
    train_size: int = 0
    #: raise the epoch count so small subsets still get at least this many optimiser steps
    min_steps: int = 0
    #: continue from this LoRA model directory (same backbone and labels) instead of a fresh adapter: adapting a
    #: trained model to new text (clinical notes) in a few epochs, keeping what it learned
    init_from: Path | None = None


@dataclass(frozen=True)
class TrainResult:
    out_dir: Path
    manifest: ModelManifest
    metrics: dict[str, Any]


def label_set(kind: TaskKind, examples: list[Example]) -> list[str]:
    if kind is TaskKind.classification:
        return sorted({ex.label for ex in examples if isinstance(ex, ClassificationExample)})
    types = sorted({label for ex in examples if isinstance(ex, NerExample) for _, _, label in ex.spans})
    return ["O"] + [f"{prefix}-{t}" for t in types for prefix in ("B", "I")]


def encode_examples(
    tokenizer: Any, kind: TaskKind, examples: list[Example], labels: list[str], max_length: int, stride: int
) -> list[tuple[list[int], Any]]:
    """(input_ids, target) per training window: a label id, or per-token label ids for NER."""
    index = {label: i for i, label in enumerate(labels)}
    windows = make_windows(tokenizer, [ex.text for ex in examples], max_length, stride)
    # the list views once (each is built from the arrays on every access)
    input_ids, word_ids, samples = windows.input_ids, windows.word_ids, windows.sample
    offsets = windows.offsets[:, :, 0].tolist()
    out: list[tuple[list[int], Any]] = []
    if kind is TaskKind.classification:
        for w, s in enumerate(samples):
            ex = examples[s]
            assert isinstance(ex, ClassificationExample)
            out.append((input_ids[w], index[ex.label]))
        return out
    # a word's first sub-token is the one at the word's smallest start offset, over every window
    first_start: dict[tuple[int, int], int] = {}
    for w, s in enumerate(samples):
        for t, word in enumerate(word_ids[w]):
            if word is not None:
                key = (s, word)
                first_start[key] = min(first_start.get(key, 1 << 30), offsets[w][t])
    for w, s in enumerate(samples):
        ex = examples[s]
        assert isinstance(ex, NerExample)
        targets = []
        for t, word in enumerate(word_ids[w]):
            start = offsets[w][t]
            if word is None or start != first_start[(s, word)]:
                targets.append(IGNORE)
                continue
            tag = "O"
            for span_start, span_end, label in ex.spans:
                if start == span_start:
                    tag = f"B-{label}"
                    break
                if span_start < start < span_end:
                    tag = f"I-{label}"
                    break
            targets.append(index[tag])
        out.append((input_ids[w], targets))
    return out


def _collate(batch: list[tuple[list[int], Any]], pad_id: int, kind: TaskKind) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    if kind is TaskKind.ner:
        labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    else:
        labels = torch.tensor([target for _, target in batch], dtype=torch.long)
    for row, (seq, target) in enumerate(batch):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
        if kind is TaskKind.ner:
            labels[row, : len(target)] = torch.tensor(target)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def evaluate_loaded(
    loaded: LoadedModel, task: str, examples: list[Example], batch_size: int = 32, device: str = "auto", dtype: torch.dtype | None = None
) -> dict[str, Any]:
    """Score a model on labelled examples through the production runner (see ``agents.learning.evaluation``)."""
    from agents.learning.evaluation import Run, report

    return report(Run.of(build_runner(task, loaded, batch_size=batch_size, device=device, dtype=dtype), examples))


def train(
    config: TrainConfig, train_examples: list[Example], dev_examples: list[Example], out_dir: Path, name: str | None = None
) -> TrainResult:
    if not train_examples:
        raise TrainingDataError(config.task, "no training examples")
    seed_everything(config.seed)
    if config.train_size and config.train_size < len(train_examples):
        train_examples = random.Random(config.seed).sample(train_examples, config.train_size)  # noqa: S311 (sampling, not security)
    device = pick_device(config.device)
    labels = label_set(config.kind, train_examples)
    if config.init_from is not None:
        start = json.loads((config.init_from / MANIFEST).read_text(encoding="utf-8"))
        if start["labels"] != labels or start.get("format") != "lora" or config.method != "lora":
            raise TrainingDataError(config.task, f"--init-from needs a LoRA model with the labels {labels}")
    if len(labels) < 2:
        raise TrainingDataError(config.task, f"need at least two labels, found {labels}")
    if config.adapt_top and config.method != "lora":
        raise TrainingDataError(config.task, "--adapt-top chooses the layers LoRA adapts; full fine-tuning changes every layer")
    base_dir = resolve_base(config.base)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    with quiet_transformers():
        model: Any = auto_model_class(config.kind).from_pretrained(
            base_dir,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
            dtype=torch.float32,
        )
    if config.method == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        lora = LoraConfig(
            task_type=TaskType.TOKEN_CLS if config.kind is TaskKind.ner else TaskType.SEQ_CLS,
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=["query", "key", "value", "dense"],
            layers_to_transform=_top_layers(model, config),
        )
        if config.init_from is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(config.init_from), is_trainable=True)
        else:
            model = get_peft_model(model, lora)
    model.to(device)

    encoded = encode_examples(tokenizer, config.kind, train_examples, labels, config.max_length, config.stride)
    if config.limit:
        encoded = encoded[: config.limit]
    steps_per_epoch = (len(encoded) + config.batch_size - 1) // config.batch_size
    epochs = max(config.epochs, -(-config.min_steps // steps_per_epoch)) if config.min_steps else config.epochs
    total_steps = steps_per_epoch * epochs
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    warmup = max(1, int(total_steps * config.warmup_ratio))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, max(0.0, (total_steps - step) / max(1, total_steps - warmup)))
    )
    loaded = LoadedModel(model, tokenizer, config.kind, labels, name or config.task, "training", config.max_length, config.stride)
    rng = random.Random(config.seed)  # noqa: S311 (shuffling, not security)
    history: list[dict[str, Any]] = []
    best_f1, best_state = -1.0, None
    for epoch in range(1, epochs + 1):
        model.train()
        order = list(range(len(encoded)))
        rng.shuffle(order)
        started = time.perf_counter()
        loss_sum = 0.0
        bar = tqdm(range(0, len(order), config.batch_size), desc=f"{config.task} epoch {epoch}/{epochs}", unit="batch", leave=False)
        for first in bar:
            batch = _collate([encoded[i] for i in order[first : first + config.batch_size]], int(tokenizer.pad_token_id or 0), config.kind)
            loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.item()
            bar.set_postfix(loss=f"{loss.item():.4f}")
        epoch_s = time.perf_counter() - started
        model.eval()
        dev = evaluate_loaded(loaded, config.task, dev_examples, device=config.device, dtype=torch.float32) if dev_examples else {"f1": 0.0}
        row = {"epoch": epoch, "train_loss": loss_sum / max(1, steps_per_epoch), "epoch_seconds": round(epoch_s, 1), "dev_f1": dev["f1"]}
        history.append(row)
        log.info("epoch %d: loss %.4f, dev f1 %.4f, %.0f s", epoch, row["train_loss"], dev["f1"], epoch_s)
        if dev["f1"] > best_f1:
            best_f1 = float(dev["f1"])
            best_state = {
                k: v.detach().cpu().clone()
                for k, v in model.state_dict().items()
                if "lora_" in k or "classifier" in k or config.method == "full"
            }
    if best_state is not None:
        model.load_state_dict(best_state, strict=False)
    model.eval()

    out_dir.mkdir(parents=True, exist_ok=True)
    model.to("cpu")
    if config.method == "lora":
        model.save_pretrained(out_dir)
    else:
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
    digest = data_hash(train_examples)
    settings = config.model_dump(mode="json", exclude={"device", "task", "kind"})
    version = _version(digest, settings)
    manifest = ModelManifest(
        task=config.task,
        kind=config.kind,
        name=name or f"{config.task}-{config.method}",
        version=version,
        labels=labels,
        base=config.base,
        format=config.method,
        max_length=config.max_length,
        stride=config.stride,
        data_sha256=digest,
        training={**settings, "train_examples": len(train_examples), "dev_examples": len(dev_examples), "device": device.type},
    )
    write_manifest(out_dir, manifest)
    metrics = {
        "task": config.task,
        "version": version,
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": device.type,
        "best_dev_f1": best_f1,
        "history": history,
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return TrainResult(out_dir, manifest, metrics)


def _version(digest: str, settings: dict[str, Any]) -> str:
    """Deterministic: the same data and settings give the same version."""
    import hashlib

    blob = json.dumps({"data": digest, "settings": settings}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def _top_layers(model: Any, config: TrainConfig) -> list[int] | None:
    """The indices of the top ``config.adapt_top`` encoder layers (None: every layer, LoRA's default)."""
    if not config.adapt_top:
        return None
    layers = int(model.config.num_hidden_layers)
    if config.adapt_top > layers:
        raise TrainingDataError(config.task, f"--adapt-top {config.adapt_top}: the backbone has {layers} layers")
    return list(range(layers - config.adapt_top, layers))
