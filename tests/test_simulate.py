"""``ehrstream simulate`` end to end on tiny real models: the real stack (Tansu, worker processes, the sink on chdb, the
registry), the oracle reviewer through the review app's decision builder, ``learn --once`` as its own process; the
summary accounts for every round and every review, and the final model is a loadable model directory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from agents.model_dir import read_manifest
from streams.cli import main
from tests.conftest import DATASETS, REPO

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _sentences(source: Path, start: int, n: int, out: Path) -> Path:
    sentences = source.read_text().strip().split("\n\n")[start : start + n]
    out.write_text("\n\n".join(sentences) + "\n")
    return out


def test_simulate_replays_a_corpus_reviews_within_budget_and_retrains(tiny_backbone_dir: Path, tmp_path: Path) -> None:
    bc5 = DATASETS / "bc5cdr_disease"
    stream = _sentences(bc5 / "train.conll.tsv", 0, 60, tmp_path / "stream.tsv")
    dev = _sentences(bc5 / "devel.conll.tsv", 0, 20, tmp_path / "dev.tsv")
    config = tmp_path / "ehrstream.toml"
    config.write_text('[[tasks]]\nname = "disease"\nkind = "ner"\nmodel_dir = "model"\n')
    cli = CliRunner()
    base = ["--config", str(config), "--data-dir", str(tmp_path / "data"), "--log-level", "WARNING"]
    trained = cli.invoke(
        main,
        [*base, "train", "--task", "disease", "--data", str(dev), "--base", str(tiny_backbone_dir), "--epochs", "1",
         "--max-length", "32", "--device", "cpu"],
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output
    out = tmp_path / "sim"
    # its own process, as an operator runs it: the simulation's sink opens its own chdb, and chdb allows one per process
    result = subprocess.run(
        [sys.executable, "-m", "streams.cli", *base, "simulate", "--task", "disease", "--model", str(tmp_path / "model"),
         "--stream", str(stream), "--dev", str(dev), "--budget", "12", "--retrain-every", "8", "--rounds", "3", "--epochs", "1",
         "--strategy", "uncertainty", "--out", str(out), "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ("final_model", "reviewed", "review_rate_first", "review_rate_last", "dev_f1_first", "dev_f1_last",
                "precision_estimate_last", "auto_precision_true_last"):  # fmt: skip
        assert key in summary
    assert summary["reviewed"] == 12  # 4 per round: the budget, spent evenly
    rounds = json.loads((out / "summary.json").read_text())["rounds"]
    assert [r["notes_seen"] for r in rounds] == [20, 40, 60] and [r["reviewed"] for r in rounds] == [4, 8, 12]
    assert [bool(r["candidate"]) for r in rounds] == [False, True, False]  # a candidate once 8 more reviews are in
    assert all(0.0 <= r["review_rate"] <= 1.0 for r in rounds)
    assert read_manifest(Path(summary["final_model"])) is not None  # usable with ehrstream evaluate --model
    for png in ("review_rate.png", "dev_f1.png", "precision.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    registry = json.loads((out / "stack" / "models" / "registry.json").read_text())
    assert len(registry["versions"]) == 2 and {v["state"] for v in registry["versions"]} <= {"live", "retired", "rejected"}
