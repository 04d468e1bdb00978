"""ICD-10-CM coding with the real table and the packaged MiniLM, on an index of the chapters the cases need (built in
the test: a few thousand entries). Each case is a failure mode of a plain nearest-description lookup (the issue's)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.clinical import code_search, coding
from agents.clinical.code_search import best_above, best_of_all, ranked_codes
from agents.clinical.coding import EMBEDDING_WEIGHT, PENALTY, Icd10Coder, combined_scores
from agents.clinical.encoder import CPU_BATCH, SentenceEncoder, encoder_placement
from agents.clinical.icd10_table import code_displays, default_code
from agents.config import TaskSettings
from agents.runners.onnx_cache import OnnxCache
from agents.runners.onnx_int8 import FLOAT_NODES
from agents.runners.precision import cpu_precision, native_int8
from schemas.extraction import TaskKind
from streams.settings import Settings
from streams.worker import build_clinical

PREFIXES = ("I1", "E11", "E13", "J44", "N18", "S51", "S52", "C34", "C78", "O03", "O26", "S82", "M84", "M80", "R73", "Z86", "Z87")


#: both encoder precisions ``auto`` may pick on a CPU (bf16 with AMX or without VNNI, int8 with VNNI), and on a
#: host with a GPU the coder as a worker there runs it (index built there, encoder and bound there)
PLACES = [("int8", "cpu"), ("bf16", "cpu"), *([("auto", "cuda")] if torch.cuda.is_available() else [])]


@pytest.fixture(scope="module", params=PLACES, ids=lambda p: "-".join(p))
def coder(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Icd10Coder:
    quantization, device = request.param
    directory = tmp_path_factory.mktemp("icd") / "index"
    Icd10Coder.build(directory, prefixes=PREFIXES, quantization=quantization, device=device)
    loaded = Icd10Coder.load(directory, device=device)  # what a worker does: the stored index, not the one in memory
    # mentions are embedded as the index was, where the worker's models run
    precision = cpu_precision(quantization) if device == "cpu" else "bf16"
    assert (loaded.encoder.quantization, loaded.encoder.device.type) == (precision, device)
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


def test_the_index_names_every_code_it_can_give_as_the_table_does(coder: Icd10Coder) -> None:
    import simple_icd_10_cm as cm

    displays = code_displays(coder.entries, coder.families)
    members = {c for family in coder.families.values() for c in family.values()}
    assert set(displays) == {e.code for e in coder.entries if e.code not in coder.families} | members
    assert all(displays[c] == cm.get_description(c) for c in displays)
    # an index built before it kept them: the table is read for them instead, and the coder codes the same
    # (both with empty caches: int8 quantises activations per batch, so a mention's scores move with its batch)
    older = Icd10Coder(coder.entries, coder.families, coder.embeddings, coder.encoder)
    named = Icd10Coder(coder.entries, coder.families, coder.embeddings, coder.encoder, displays)
    assert np.array_equal(older.flags, coder.flags) and np.array_equal(older.prior, coder.prior)
    mentions = [m for m, _ in CASES] + ["laceration of forearm, subsequent encounter", "sequela of forearm laceration"]
    assert older.candidates(mentions) == named.candidates(mentions)


def test_a_doubtful_mention_scores_lower_than_a_clear_one(coder: Icd10Coder) -> None:
    clear, vague = coder.candidates(["essential hypertension", "felt unwell after lunch"])
    assert clear[0]["score"] > vague[0]["score"] + 0.2


def test_a_category_stands_for_its_plainest_billable_code() -> None:
    assert [default_code(c) for c in ("C50", "J18", "H40", "K85", "N18.3")] == ["C50.919", "J18.9", "H40.9", "K85.90", "N18.30"]


def test_repeated_mentions_come_from_the_cache(coder: Icd10Coder, monkeypatch: pytest.MonkeyPatch) -> None:
    first = coder.candidates(["COPD"])
    monkeypatch.setattr(coder, "encoder", None)  # a search would now fail: only the cache can answer
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
    assert recorded == cpu_precision("auto") != "auto"


def test_int8_embeddings_come_from_onnx_runtime_and_an_older_int8_index_keeps_torchs_dynamic_quantisation(tmp_path: Path) -> None:
    mentions = ["essential hypertension", "T2DM with CKD stage 3", "Ünïcode: Crohn's disease", "fracture of ankle", "x", ""]
    plain = SentenceEncoder().encode(mentions)
    onnx = SentenceEncoder(quantization="int8")
    assert onnx.int8_engine == "onnxruntime" and SentenceEncoder(quantization="bf16").int8_engine is None
    int8 = onnx.encode(mentions)
    assert int8.dtype == np.float32 and int8.shape == plain.shape
    assert np.allclose(np.linalg.norm(int8, axis=1), 1.0, atol=1e-5)
    assert float((plain * int8).sum(axis=1).min()) > 0.95  # torch's dynamic int8 went down to 0.87
    with pytest.raises(ValueError, match="int8_engine"):
        SentenceEncoder(quantization="int8", int8_engine="tflite")
    cache = OnnxCache(tmp_path / "onnx")
    built = Icd10Coder.build(tmp_path / "index", prefixes=("I10",), quantization="int8", onnx_cache=cache)
    assert not built.encoder._onnx.from_cache and len(cache.entries()) == 1  # `codes build` leaves it for the workers
    meta_file = tmp_path / "index" / "index.json"
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    assert (meta["encoder"], meta["int8_engine"], meta["int8_float_nodes"]) == ("int8", "onnxruntime", None)
    loaded = Icd10Coder.load(tmp_path / "index", onnx_cache=cache)
    assert loaded.encoder.int8_engine == "onnxruntime" and loaded.encoder._onnx.from_cache
    # the codes' names come from the index, not from parsing the table again
    assert meta["displays"]["I10"] == "Essential (primary) hypertension" and loaded._display.__self__ == meta["displays"]
    assert np.array_equal(loaded.encoder.encode(mentions), int8)  # mentions embedded as the index was
    # every weight of the encoder is int8: the float MatMuls left multiply activations only (attention's scores and
    # context); the task models keep their attention output projections float
    assert {name.rsplit("/", 1)[0] for name, op in loaded.encoder._onnx.nodes if op == "MatMul"} == {
        f"/model/encoder/layer.{i}/attention/self" for i in range(6)
    }
    # an ONNX Runtime index built before the encoder was quantised whole records no float nodes: it keeps the task
    # models' float attention output projections, as its entries were embedded
    del meta["int8_float_nodes"]
    meta_file.write_text(json.dumps(meta), encoding="utf-8")
    partial = Icd10Coder.load(tmp_path / "index", onnx_cache=cache).encoder
    assert partial.int8_float_nodes == FLOAT_NODES.pattern and not partial._onnx.from_cache  # another graph, another key
    floats = {name for name, op in partial._onnx.nodes if op == "MatMul" and "attention/self" not in name}
    assert floats == {f"/model/encoder/layer.{i}/attention/output/dense/MatMul" for i in range(6)}
    # an index written before the ONNX Runtime encoder records no engine: its mentions keep torch's quantisation
    del meta["int8_engine"]
    meta_file.write_text(json.dumps(meta), encoding="utf-8")
    older = Icd10Coder.load(tmp_path / "index")
    assert older.encoder.int8_engine == "torch" and older.encoder._onnx is None
    assert older.encoder.encode(mentions).shape == plain.shape


def test_the_encoder_runs_where_the_models_do_in_the_precision_of_its_index() -> None:
    assert encoder_placement("auto", "cpu") == ("cpu", cpu_precision("auto"))
    assert encoder_placement("int8", "cpu") == ("cpu", "int8")
    assert encoder_placement("auto", "cuda") == ("cuda", "bf16")  # what `codes build` records on a GPU host
    assert encoder_placement("bf16", "cuda:1") == ("cuda:1", "bf16")
    assert encoder_placement("none", "cuda") == ("cuda", "none")
    assert encoder_placement("int8", "cuda") == ("cpu", "int8")  # int8 (ONNX Runtime's CPU session) runs on a CPU only
    with pytest.raises(ValueError, match="fp8"):
        encoder_placement("fp8", "cuda")


def brute_force(coder: Icd10Coder, keys: list[str]) -> list[list[tuple[str, float]]]:
    """The simple version: every entry scored in float64, ranked by score then entry, the first three codes."""
    wording = coding._tfidf([coding._words(k) for k in keys], coder.vocabulary, coder.idf).dot(coder.lexical.T).toarray().astype(np.float64)
    meaning = wording.copy()
    unsure = np.nonzero(wording.max(axis=1) < coding.LEXICAL_SURE)[0]
    # embedded together, as the coder does: int8 quantises activations per batch, and padding moves bf16 a little
    queries = coder.encoder.encode([keys[i] for i in unsure.tolist()]).astype(np.float64)
    meaning[unsure] = queries @ coder.embeddings.astype(np.float64).T
    penalty = coder._penalties(keys)[:, coder._flag_index]
    score = EMBEDDING_WEIGHT * meaning + (1 - EMBEDDING_WEIGHT) * wording - PENALTY * penalty + coder.prior
    out = []
    for row in score:
        order = np.lexsort((np.arange(len(row)), -row))
        found: list[tuple[str, float]] = []
        for j in order.tolist():
            if str(coder.codes[j]) not in {c for c, _ in found}:
                found.append((str(coder.codes[j]), float(row[j])))
            if len(found) == 3:
                break
        out.append(found)
    return out


KEYS = [
    *(coding.normalise(m) for m, _ in CASES),
    "essential hypertension",  # word for word: scored against every entry, ties broken by entry order
    "felt unwell after lunch",  # vague: candidates close together
    "ünïcode: crohn's disease of the forearm",
    "stage 3 chronic kidney disease due to type 2 diabetes",
    "left forearm laceration, subsequent encounter",
    "nothing clinical at all",
    "zzz",
]


def count_settled(coder: Icd10Coder, method: str, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Per mention the coder's ``method`` is given from now on: whether it settled that mention's codes."""
    settled: list[bool] = []
    original = getattr(coder, method)

    def counting(*args: object) -> list[list[tuple[str, float]] | None]:
        found: list[list[tuple[str, float]] | None] = original(*args)
        settled.extend(f is not None for f in found)
        return found

    monkeypatch.setattr(coder, method, counting)
    return settled


def assert_found_as_brute_force(keys: list[str], got: list[list[dict[str, object]]], want: list[list[tuple[str, float]]]) -> None:
    for key, found, best in zip(keys, got, want, strict=True):
        assert [c["code"] for c in found] == [c for c, _ in best], key
        assert [c["score"] for c in found] == pytest.approx([min(max(s, 0.0), 1.0) for _, s in best], abs=2e-4), key


@pytest.mark.parametrize("k", [code_search.CANDIDATES, 8, 2])
def test_the_bounded_search_equals_scoring_every_entry(coder: Icd10Coder, k: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Candidates by a bf16 (or float32) bound, then exact scores, give the brute force's codes and scores; with two
    candidates most mentions cannot be settled by them and take the exhaustive path, which must agree too."""
    monkeypatch.setattr(coding, "CANDIDATES", k)
    settled = count_settled(coder, "_bounded", monkeypatch)
    assert_found_as_brute_force(KEYS, coder._search(KEYS), brute_force(coder, KEYS))
    assert any(settled) if k > 2 else not any(settled)  # each path taken (two candidates never hold three codes)


#: more than two of the coder's chunks of 64, with mentions needing their embedding in each: the queries of one encoder
#: call for the whole batch must go back to their own chunk's mentions
PREFIXED = ("", "history of ", "chronic ", "acute ", "left ", "suspected ", "mild ", "severe ")
MANY_KEYS = [f"{prefix}{key}" for prefix in PREFIXED for key in KEYS]


def test_a_batch_of_many_chunks_is_scored_as_each_key_alone_would_be(coder: Icd10Coder) -> None:
    assert len(MANY_KEYS) > 2 * 64
    assert_found_as_brute_force(MANY_KEYS, coder._search(MANY_KEYS), brute_force(coder, MANY_KEYS))


def test_word_for_word_mentions_are_ranked_from_the_entries_they_share_a_word_with(
    coder: Icd10Coder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mentions whose words are an entry's are scored on the entries sharing a word with them, as the brute force scores
    every entry; with the floor above every score none is settled there, and the dense path gives the same."""
    settled = count_settled(coder, "_word_for_word", monkeypatch)
    want = brute_force(coder, MANY_KEYS)
    for floor in (coder._prior_max, 2.0):
        settled.clear()
        monkeypatch.setattr(coder, "_prior_max", floor)
        assert_found_as_brute_force(MANY_KEYS, coder._search(MANY_KEYS), want)
        assert sum(settled) >= 8 if floor < 1 else settled and not any(settled)


def test_the_best_codes_of_a_ranking_with_ties_equal_a_full_sort() -> None:
    rng = np.random.default_rng(7)
    for _ in range(200):
        n = int(rng.integers(1, 300))
        score = rng.integers(0, 6, n) / 5.0  # many ties
        codes = np.array([f"C{c}" for c in rng.integers(0, 8, n)])
        entries = np.arange(n)
        order = sorted(entries.tolist(), key=lambda j: (-score[j], j))
        want: list[tuple[str, float]] = []
        for j in order:
            if codes[j] not in {c for c, _ in want} and len(want) < 3:
                want.append((str(codes[j]), float(score[j])))
        assert ranked_codes(score, entries, codes, 3) == want
        assert best_of_all(score, codes, 3) == want
        floor = float(rng.choice(score)) - 0.1
        settled = best_above(score, entries, floor, codes, 3)
        assert settled is None or settled == want
        assert (settled is None) == (len({codes[j] for j in entries if score[j] > floor}) < 3)


def test_a_worker_says_where_its_coders_encoder_runs_and_warns_when_its_index_holds_it_elsewhere(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    here = cpu_precision("auto")
    other = "none" if here != "none" else "int8"
    for precision, warned in ((here, False), (other, True)):
        index = tmp_path / f"index-{precision}"
        Icd10Coder.build(index, prefixes=("I10",), quantization=precision)
        task = TaskSettings(name="disease", kind=TaskKind.ner, model_dir=tmp_path, coding="icd10cm")
        settings = Settings(data_dir=tmp_path / "data", device="cpu", icd10cm_index=index, tasks=[task])
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="streams.worker"):
            annotators = build_clinical(settings)
        assert list(annotators) == ["disease"]
        assert f"its encoder runs on cpu in {precision}" in caplog.text
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert bool(warnings) is warned
        assert all(f"this host would run it on cpu in {here}" in w and "`ehrstream codes build`" in w for w in warnings)


def test_a_cpu_encoder_embeds_in_calls_of_texts_of_about_one_length_each_row_its_own_texts() -> None:
    encoder = SentenceEncoder()  # float32: its embeddings do not depend on what else is in the call
    assert encoder.batch_size == CPU_BATCH
    words = ["fracture", "of", "the", "left", "ankle", "Ünïcode", "Crohn's", "disease", "type", "2", "diabetes"]
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, size=int(rng.integers(1, 14)))) for _ in range(3 * CPU_BATCH + 5)] + ["", "x"]
    narrow = encoder.encode(texts)  # four calls
    encoder.batch_size = len(texts)
    wide = encoder.encode(texts)  # one call, every text padded to the longest
    assert narrow.shape == (len(texts), encoder.dim) and np.allclose(narrow, wide, atol=1e-5)
    assert np.allclose(narrow[texts.index("x")], encoder.encode(["x"])[0], atol=1e-5)


@pytest.mark.parametrize("levels", [None, 63], ids=["this-cpu", "without-vnni"])
def test_the_int8_bound_is_never_further_from_the_exact_product_than_its_slack(coder: Icd10Coder, levels: int | None) -> None:
    """The bound's int8 product on a CPU says, per mention, how far it can be from the float32 product with every entry;
    the candidates' floor rests on that. Checked against the exact product for real mentions and for queries made to
    round badly (one large component, the rest just under half a quantisation step), and the slack stays small enough
    to settle mentions (the bounded-search test above shows it does); also for the index a CPU without VNNI keeps (63
    levels a side, so ONNX Runtime's 16-bit multiply-adds cannot saturate). ``None``: the levels this CPU gets (127 with
    VNNI); 127 on a CPU without it would saturate, which is what this test would then catch."""
    product = code_search.Int8Product(coder.embeddings, index_levels=levels)
    levels = levels or (127 if native_int8() else 63)
    rng = np.random.default_rng(5)
    real = coder.encoder.encode(KEYS)
    dim = real.shape[1]
    spiky = np.full((4, dim), 0.499 / 127, dtype=np.float32)
    spiky[np.arange(4), rng.integers(0, dim, 4)] = 1.0
    spiky /= np.linalg.norm(spiky, axis=1, keepdims=True)
    noise = rng.standard_normal((16, dim)).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    for queries in (real, spiky, noise, real[:1]):
        approximate, slack = product(queries)
        exact = queries.astype(np.float64) @ coder.embeddings.T.astype(np.float64)
        assert approximate.shape == exact.shape and approximate.dtype == torch.float32
        assert (np.abs(approximate.numpy() - exact).max(axis=1) <= slack).all()
    assert (product(real)[1] < 0.04 * 127 / levels).all()  # mentions' embeddings spread their weight: a small slack
    assert (product(spiky)[1] > 0.05).all()  # a query that rounds badly gets the larger slack it needs
