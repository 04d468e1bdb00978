"""ICD-10-CM coding with the real table and the packaged MiniLM, on an index of the chapters the cases need (built in
the test: a few thousand entries). Each case is a failure mode of a plain nearest-description lookup (the issue's)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agents.clinical.coding import EMBEDDING_WEIGHT, PENALTY, Icd10Coder, combined_scores, default_code
from agents.clinical.encoder import SentenceEncoder
from agents.runners.precision import native_bf16

PREFIXES = ("I1", "E11", "E13", "J44", "N18", "S51", "S52", "C34", "C78", "O03", "O26", "S82", "M84", "M80", "R73", "Z86", "Z87")


@pytest.fixture(scope="module", params=["int8", "bf16"])
def coder(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Icd10Coder:
    """Both encoder precisions ``auto`` may pick (bf16 where the CPU multiplies it natively, int8 elsewhere)."""
    directory = tmp_path_factory.mktemp("icd") / "index"
    Icd10Coder.build(directory, prefixes=PREFIXES, quantization=request.param)
    loaded = Icd10Coder.load(directory)  # what a worker does: the stored index, not the one in memory
    assert loaded.encoder.quantization == request.param  # mentions are embedded as the index was
    return loaded


CASES = [
    ("HTN", "I10"),
    ("T2DM", "E11.9"),
    ("diabetes", "E11.9"),
    ("COPD", "J44.9"),
    ("CKD stage 3", "N18.30"),
    ("chronic kidney disease stage 4", "N18.4"),
    ("laceration of forearm", "S51.819A"),  # a fresh laceration: initial encounter, never the sequela
    ("lung cancer", "C34.90"),  # a primary, never a secondary neoplasm
    ("metastatic disease to the liver", "C78.7"),
    ("miscarriage", "O03.9"),  # never a pregnancy-care code
    ("fracture of ankle", "S82"),  # an injury, never a pathological fracture (category checked)
    ("pathological fracture due to osteoporosis", "M80"),
]


@pytest.mark.parametrize(("mention", "want"), CASES)
def test_the_best_code_is_the_one_a_coder_would_choose(coder: Icd10Coder, mention: str, want: str) -> None:
    (found,) = coder.candidates([mention])
    assert found[0]["code"].startswith(want) if len(want) == 3 else found[0]["code"] == want, found
    assert found[0]["system"] == "ICD10CM" and found[0]["display"] and 0.0 <= found[0]["score"] <= 1.0
    assert len(found) == 3 and len({c["code"] for c in found}) == 3


def test_the_seventh_character_follows_the_mention(coder: Icd10Coder) -> None:
    fresh, later, sequela = coder.candidates(
        ["laceration of forearm", "laceration of forearm, subsequent encounter", "sequela of forearm laceration"]
    )
    assert (fresh[0]["code"][-1], later[0]["code"][-1], sequela[0]["code"][-1]) == ("A", "D", "S")


def test_a_doubtful_mention_scores_lower_than_a_clear_one(coder: Icd10Coder) -> None:
    clear, vague = coder.candidates(["essential hypertension", "felt unwell after lunch"])
    assert clear[0]["score"] > vague[0]["score"] + 0.2


def test_a_category_stands_for_its_plainest_billable_code() -> None:
    assert [default_code(c) for c in ("C50", "J18", "H40", "K85", "N18.3")] == ["C50.919", "J18.9", "H40.9", "K85.90", "N18.30"]


def test_repeated_mentions_come_from_the_cache(coder: Icd10Coder) -> None:
    first = coder.candidates(["COPD"])
    coder.encoder = None  # a search would now fail: only the cache can answer
    assert coder.candidates(["COPD", "copd"]) == [first[0], first[0]]


@pytest.mark.parametrize("block", [7, 2048, 100_000])
def test_scores_block_by_block_equal_the_whole_array_expression(block: int) -> None:
    rng = np.random.default_rng(block)
    mentions, entries, values = 13, 5_003, 9  # entries: not a multiple of any block
    meaning = rng.random((mentions, entries), dtype=np.float32)
    wording = rng.random((mentions, entries), dtype=np.float32)
    per_value = rng.integers(0, 3, (mentions, values)).astype(np.float32)
    flag_index = rng.integers(0, values, entries)
    prior = rng.choice(np.array([-0.03, 0.0, 0.01], dtype=np.float32), entries)
    plain = EMBEDDING_WEIGHT * meaning + (1 - EMBEDDING_WEIGHT) * wording - PENALTY * per_value[:, flag_index] + prior[None, :]
    blocked = combined_scores(meaning, wording, per_value, flag_index, prior, block=block)
    assert blocked.dtype == plain.dtype == np.float32
    assert np.array_equal(blocked, plain)


def test_bf16_embeddings_stay_close_to_float32_and_auto_is_resolved_in_the_index(tmp_path: Path) -> None:
    mentions = ["essential hypertension", "T2DM with CKD stage 3", "Ünïcode: Crohn's disease", "fracture of ankle", "x"]
    plain = SentenceEncoder().encode(mentions)
    bf16 = SentenceEncoder(quantization="bf16").encode(mentions)
    assert bf16.dtype == np.float32 and bf16.shape == plain.shape
    assert float((plain * bf16).sum(axis=1).min()) > 0.99
    with pytest.raises(ValueError, match="fp8"):
        SentenceEncoder(quantization="fp8")
    Icd10Coder.build(tmp_path / "index", prefixes=("I10",))  # the default, "auto"
    recorded = json.loads((tmp_path / "index" / "index.json").read_text(encoding="utf-8"))["encoder"]
    assert recorded == ("bf16" if native_bf16() else "int8")
