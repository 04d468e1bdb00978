"""What the agent layer is configured with: the tasks (model, routing thresholds) and the topic names.

These are plain frozen models; ``streams.settings.Settings`` composes them with everything around the agent
(Kafka, ClickHouse, review app) and reads them once from the environment and the config file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.extraction import TaskKind
from schemas.review_task import ReasonKind

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODELS = REPO_ROOT / "models"

#: how a task's model runs on a CPU (``TaskSettings.quantization``; resolved by ``agents.runners.precision``)
Quantization = Literal["none", "int8", "bf16", "auto"]


class TaskSettings(BaseModel):
    """One configured task: its model and its routing thresholds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    kind: TaskKind
    model_dir: Path
    #: a decision at or above this confidence is auto-accepted
    threshold: float = Field(default=0.9, ge=0.0, le=1.0)
    #: per-label overrides of ``threshold``
    label_thresholds: dict[str, float] = Field(default_factory=dict)
    #: "model": route with the thresholds calibrated for the model version (its manifest, ``ehrstream calibrate``)
    #: when it has them, ``threshold`` and ``label_thresholds`` above otherwise; "config": always with those above
    thresholds_from: Literal["model", "config"] = "model"
    #: NER recall guard: a word tagged O is sent to review when p(O) is below this. Set by policy, not by
    #: ``calibrate`` (which targets the precision of what is accepted, not what is missed).
    possible_entity_threshold: float = Field(default=0.7, ge=0.0, le=1.0)
    #: CPU inference: "int8" runs the model exported to ONNX with int8 weights in ONNX Runtime (dynamic quantisation,
    #: per channel, the head in float32); "bf16" runs it in bfloat16 in torch (for CPUs with AMX or AVX512-BF16,
    #: which multiply it natively); "auto" picks bf16 where the CPU has AMX, else int8 where it has int8 dot-product
    #: instructions (AVX512-VNNI), else bf16 where it multiplies bf16 natively, else float32 (``agents.runners.precision``);
    #: "none" keeps float32 in torch.
    #: Scores and speed measured in README. On a GPU the model runs in bf16 either way.
    quantization: Quantization = "none"
    #: NER: clinical-note layout rules, sections and assertion status on every entity (``agents.clinical``)
    clinical: bool = True
    #: NER: code candidates for every entity: "icd10cm" (``agents.clinical.coding``) or none
    coding: Literal["none", "icd10cm"] = "none"
    #: an entity whose best code scores below this is sent to review (a doubtful code)
    code_threshold: float = Field(default=0.7, ge=0.0, le=1.0)
    #: an entity's assertion confidence is 1 / (statuses whose cues govern it): below this, it is sent to review
    assertion_threshold: float = Field(default=0.75, ge=0.0, le=1.0)

    def threshold_for(self, label: str, kind: ReasonKind = ReasonKind.entity) -> float:
        if kind is ReasonKind.possible_entity:
            return self.possible_entity_threshold
        if kind is ReasonKind.code:
            return self.code_threshold
        if kind is ReasonKind.assertion:
            return self.assertion_threshold
        return self.label_thresholds.get(label, self.threshold)


def default_tasks() -> list[TaskSettings]:
    return [
        TaskSettings(name="condition", kind=TaskKind.classification, model_dir=DEFAULT_MODELS / "condition", threshold=0.8),
        TaskSettings(name="disease", kind=TaskKind.ner, model_dir=DEFAULT_MODELS / "disease", threshold=0.8),
    ]


class TopicSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    notes: str = "ehr.notes"
    extractions: str = "ehr.extractions"
    review: str = "ehr.review"
    review_decisions: str = "ehr.review-decisions"
    deadletter: str = "ehr.deadletter"

    def all(self) -> list[str]:
        return [self.notes, self.extractions, self.review, self.review_decisions, self.deadletter]

    def results(self) -> list[str]:
        """The topics the sink consumes."""
        return [self.extractions, self.review, self.review_decisions, self.deadletter]
