"""Pre-labelling notes with a local instruction-tuned causal LM (e.g. a Gemma 3 directory).

For bootstrapping training data and for the review-bound minority, not the hot path:
generation is slow (a 1B-shaped model did ~7 notes/s at batch 64 on an H100).

* Classification is constrained by construction: every allowed answer ``{"label": "<L>"}`` is
  scored after the prompt, and the confidence is the softmax of the answers' total
  log-probabilities. The output always validates.
* NER is generated greedily as ``{"entities": [{"text": ..., "label": ...}]}`` and validated by
  :class:`LlmEntities`; labels must be the task's, and every mention must occur in the note
  (its offsets are every occurrence). Anything else becomes a rejected record with the
  reason, never an exception. The confidence is the geometric mean of the generated tokens'
  probabilities.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from transformers import AutoModelForCausalLM, AutoTokenizer

from agents.errors import ModelLoadError
from agents.runners.device import pick_device
from schemas.codec import validation_summary
from schemas.extraction import TaskKind


class LlmLabel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str


class LlmMention(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1)
    label: str


class LlmEntities(BaseModel):
    model_config = ConfigDict(extra="forbid")
    entities: list[LlmMention]


@dataclass
class Labelled:
    """One note's result: a label or spans with a confidence, or a rejection with its reason."""

    confidence: float = 0.0
    label: str | None = None
    #: label -> probability, for classification
    distribution: dict[str, float] = field(default_factory=dict)
    spans: list[tuple[int, int, str]] = field(default_factory=list)
    rejected: str | None = None


def parse_entities(generated: str, text: str, labels: list[str]) -> list[tuple[int, int, str]] | str:
    """Spans from the model's JSON, or the reason it is rejected."""
    start, end = generated.find("{"), generated.rfind("}")
    if start < 0 or end <= start:
        return "no JSON object in the output"
    try:
        parsed = LlmEntities.model_validate(json.loads(generated[start : end + 1]))
    except json.JSONDecodeError as exc:
        return f"invalid JSON: {exc.msg}"
    except ValidationError as exc:
        return f"schema: {validation_summary(exc)}"
    spans: set[tuple[int, int, str]] = set()
    for mention in parsed.entities:
        if mention.label not in labels:
            return f"schema: label {mention.label!r} is not one of {labels}"
        at = text.find(mention.text)
        if at < 0:
            return "a mention does not occur in the note"
        while at >= 0:
            spans.add((at, at + len(mention.text), mention.label))
            at = text.find(mention.text, at + 1)
    return sorted(spans)


class LlmLabeller:
    def __init__(
        self, model_dir: Path, task: str, kind: TaskKind, labels: list[str], device: str = "auto", max_new_tokens: int = 256
    ) -> None:
        if not (model_dir / "config.json").exists():
            raise ModelLoadError(model_dir, "not a causal LM directory (no config.json)")
        self.task, self.kind, self.labels, self.max_new_tokens = task, kind, labels, max_new_tokens
        self.device = pick_device(device)
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(self.device).eval()  # type: ignore[arg-type]
        self.name = f"llm:{model_dir.name}"

    def prompt(self, text: str) -> str:
        if self.kind is TaskKind.classification:
            ask = f'Classify this clinical note into exactly one of: {", ".join(self.labels)}. Answer with JSON {{"label": "..."}}.'
        else:
            kinds = ", ".join(self.labels)
            shape = '{"entities": [{"text": "...", "label": "..."}]}'
            ask = f"List every mention of these entity types ({kinds}) in this clinical note, copied exactly. Answer with JSON {shape}."
        message = f"{ask}\n\nNote:\n{text}"
        if getattr(self.tokenizer, "chat_template", None):
            rendered = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": message}], tokenize=False, add_generation_prompt=True
            )
            return str(rendered)
        return f"{message}\n\nAnswer: "

    def __call__(self, texts: list[str]) -> list[Labelled]:
        return self._classify(texts) if self.kind is TaskKind.classification else self._extract(texts)

    @torch.inference_mode()
    def _classify(self, texts: list[str]) -> list[Labelled]:
        answers = [json.dumps({"label": label}) for label in self.labels]
        out = []
        for text in texts:
            prompt_ids = self.tokenizer(self.prompt(text), add_special_tokens=True)["input_ids"]
            scores = [self._answer_logprob(prompt_ids, answer) for answer in answers]
            top = max(scores)
            weights = [math.exp(s - top) for s in scores]
            total = sum(weights)
            dist = {label: w / total for label, w in zip(self.labels, weights, strict=True)}
            best = max(dist, key=lambda k: dist[k])
            LlmLabel(label=best)  # the schema the output must satisfy
            out.append(Labelled(confidence=dist[best], label=best, distribution=dist))
        return out

    def _answer_logprob(self, prompt_ids: list[int], answer: str) -> float:
        answer_ids = self.tokenizer(answer, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt_ids + answer_ids], device=self.device)
        logits = self.model(input_ids=ids).logits.float()[0]
        logp = torch.log_softmax(logits[len(prompt_ids) - 1 : -1], dim=-1)
        return float(logp[torch.arange(len(answer_ids)), torch.tensor(answer_ids, device=self.device)].sum())

    @torch.inference_mode()
    def _extract(self, texts: list[str]) -> list[Labelled]:
        enc = self.tokenizer([self.prompt(t) for t in texts], return_tensors="pt", padding=True).to(self.device)
        generated = self.model.generate(
            **enc,
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            output_scores=True,
            return_dict_in_generate=True,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        new = generated.sequences[:, enc["input_ids"].shape[1] :]
        logps = torch.stack([torch.log_softmax(s.float(), dim=-1) for s in generated.scores], dim=1)  # [batch, steps, vocab]
        out = []
        for i, text in enumerate(texts):
            tokens = new[i]
            keep = tokens != self.tokenizer.pad_token_id
            chosen = logps[i, torch.arange(len(tokens), device=tokens.device), tokens][keep]
            confidence = float(chosen.mean().exp()) if len(chosen) else 0.0
            result = parse_entities(str(self.tokenizer.decode(tokens[keep], skip_special_tokens=True)), text, self.labels)
            if isinstance(result, str):
                out.append(Labelled(confidence=confidence, rejected=result))
            else:
                out.append(Labelled(confidence=confidence, spans=result))
        return out


def training_record(note_id: str, text: str, kind: TaskKind, labelled: Labelled, source: str) -> dict[str, Any]:
    """An ehrstream JSONL training record (what ``ehrstream train --data FILE`` reads)."""
    base: dict[str, Any] = {"note_id": note_id, "text": text, "confidence": round(labelled.confidence, 6), "source": source}
    if kind is TaskKind.classification:
        return {**base, "label": labelled.label}
    return {**base, "entities": [{"start": s, "end": e, "label": label} for s, e, label in labelled.spans]}
