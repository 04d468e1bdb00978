"""The LLM labeller's schema enforcement, on handcrafted outputs and a tiny random Gemma 3."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from kafka import KafkaConsumer, TopicPartition
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, PreTrainedTokenizerFast

from agents.config import TopicSettings
from agents.learning.llm_labeller import LlmLabeller, parse_entities
from schemas.clinical_note import ClinicalNote
from schemas.codec import Codecs
from schemas.extraction import Extraction, ExtractionStatus, TaskKind
from schemas.review_task import ReviewTask
from streams.kafka.clients import ensure_topics
from streams.learning.labelling import label_file
from streams.runtime.broker import TansuBroker
from streams.settings import Settings

PLAIN = Codecs()  # plain single-object Avro: the codecs of a process without a schema registry

TEXT = "Patient has asthma. Asthma is worse at night; no diabetes."


@pytest.fixture(scope="session")
def tiny_gemma(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-initialised Gemma 3 text model with a byte-level BPE tokenizer trained here (offline)."""
    path = tmp_path_factory.mktemp("tiny-gemma")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<pad>", "<bos>", "<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(['{"label": "cardio"} {"entities": [{"text": "asthma", "label": "Disease"}]}', TEXT] * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    fast.save_pretrained(path)
    config = Gemma3TextConfig(
        vocab_size=len(fast),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=1024,
        sliding_window=64,
        pad_token_id=fast.pad_token_id,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
    )
    torch.manual_seed(0)
    Gemma3ForCausalLM(config).save_pretrained(path)
    return path


def test_valid_output_becomes_spans_at_every_occurrence() -> None:
    out = 'Sure! {"entities": [{"text": "sthma", "label": "Disease"}, {"text": "diabetes", "label": "Disease"}]} done'
    d = TEXT.index("diabetes")
    assert parse_entities(out, TEXT, ["Disease"]) == [(13, 18, "Disease"), (21, 26, "Disease"), (d, d + 8, "Disease")]
    assert TEXT[13:18] == TEXT[21:26] == "sthma"


@pytest.mark.parametrize(
    ("generated", "reason"),
    [
        ("no json here", "no JSON object"),
        ('{"entities": [{"text": "asthma", ', "no JSON object"),
        ('{"entities": [{"text": "asthma" "label": 1}]}', "invalid JSON"),
        ('{"entities": [{"text": "asthma", "label": "Drug"}]}', "is not one of"),
        ('{"entities": [{"text": "cancer", "label": "Disease"}]}', "does not occur"),
        ('{"entities": [{"text": "asthma", "label": "Disease", "extra": 1}]}', "schema"),
        ('{"entities": "asthma"}', "schema"),
        ('{"entities": [{"text": "", "label": "Disease"}]}', "schema"),
    ],
)
def test_invalid_output_is_rejected_with_a_reason(generated: str, reason: str) -> None:
    result = parse_entities(generated, TEXT, ["Disease"])
    assert isinstance(result, str) and reason in result


def test_classification_is_constrained_to_the_task_labels(tiny_gemma: Path) -> None:
    labeller = LlmLabeller(tiny_gemma, "condition", TaskKind.classification, ["cardio", "neuro", "onco"], device="cpu")
    results = labeller([TEXT, "Seizures after stroke."])
    for r in results:
        assert r.rejected is None and r.label in {"cardio", "neuro", "onco"}
        assert sum(r.distribution.values()) == pytest.approx(1.0) and r.confidence == max(r.distribution.values())


def test_ner_generation_never_raises(tiny_gemma: Path) -> None:
    labeller = LlmLabeller(tiny_gemma, "disease", TaskKind.ner, ["Disease"], device="cpu", max_new_tokens=24)
    for r in labeller([TEXT, "x", "Another note with asthma."]):
        assert (r.rejected is not None) != bool(r.spans) or (r.rejected is None and r.spans == [])
        assert 0.0 <= r.confidence <= 1.0


def _notes(path: Path, n: int) -> Path:
    rows = [
        ClinicalNote(
            note_id=f"n{i}", patient_id="p", note_type="t", created_at="2026-11-01T00:00:00Z", text=f"{TEXT} {i}", source="s"
        ).model_dump_json()
        for i in range(n)
    ]
    path.write_text("\n".join([*rows, '{"broken": ']) + "\n")
    return path


@pytest.mark.slow
def test_label_file_splits_training_review_and_publishes_review_tasks(
    tiny_gemma: Path, tmp_path: Path, broker: TansuBroker, topics: TopicSettings
) -> None:
    ensure_topics(Settings(topics=topics, topic_partitions=1), broker.bootstrap)
    cls = LlmLabeller(tiny_gemma, "condition", TaskKind.classification, ["cardio", "neuro"], device="cpu")
    summary = label_file(cls, _notes(tmp_path / "notes.jsonl", 5), tmp_path / "out", 1.01, 2, (Settings(topics=topics), broker.bootstrap))
    assert (summary.notes, summary.training, summary.review, summary.rejected, summary.invalid_input) == (5, 0, 5, 0, 1)
    records = [json.loads(line) for line in (tmp_path / "out" / "review.jsonl").read_text().splitlines()]
    assert [r["note_id"] for r in records] == [f"n{i}" for i in range(5)] and all(r["label"] in {"cardio", "neuro"} for r in records)

    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, consumer_timeout_ms=2000)
    parts = [TopicPartition(topics.extractions, 0), TopicPartition(topics.review, 0)]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    by_topic: dict[str, list[bytes]] = {}
    for m in consumer:
        by_topic.setdefault(m.topic, []).append(m.value)
    consumer.close()
    extractions = [PLAIN.of(Extraction).decode(v) for v in by_topic[topics.extractions]]
    assert {e.status for e in extractions} == {ExtractionStatus.pending_review} and len(extractions) == 5
    assert extractions[0].results[0].model_name == f"llm:{tiny_gemma.name}"
    assert len([PLAIN.of(ReviewTask).decode(v) for v in by_topic[topics.review]]) == 5

    everything_confident = label_file(cls, _notes(tmp_path / "notes2.jsonl", 3), tmp_path / "out2", 0.0, 2)
    assert (everything_confident.training, everything_confident.review) == (3, 0)
    trained = [json.loads(line) for line in (tmp_path / "out2" / "train.jsonl").read_text().splitlines()]
    assert {"text", "label", "confidence", "source"} <= trained[0].keys()
