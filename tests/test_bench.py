"""`ehrstream bench` runs end to end (tiny models, few notes) and reports every number it promises.

Speed targets are not asserted here (benchmarks print numbers; timed tests flake): this only
keeps the benchmark working, including the workers' Prometheus endpoints it scrapes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from streams.settings import Settings, write_child_config
from tests.conftest import DATASETS, REPO

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_bench_reports_raw_e2e_ratio_latency_and_stages(tiny_settings: Settings, tmp_path: Path) -> None:
    config = write_child_config(tiny_settings, tmp_path / "ehrstream.toml")
    cmd = [sys.executable, "-m", "streams.cli", "--config", str(config), "--log-level", "WARNING", "bench"]
    cmd += ["--notes", "12", "--latency-seconds", "2", "--device", "cpu", "--datasets", str(DATASETS), "--json"]
    scratch = tmp_path / "tmp"  # the bench's own temporary folder: it must be left empty
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=400, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not list(scratch.iterdir()), "the bench left its data directory behind"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("raw_notes_per_s", "e2e_notes_per_s", "ratio", "p50_ms", "p99_ms", "device"):
        assert key in result, key
    assert result["raw_notes_per_s"] > 0 and result["e2e_notes_per_s"] > 0
    # ratio is rounded to 3 decimals, the rates to 2: compare within that rounding
    assert result["ratio"] == pytest.approx(result["e2e_notes_per_s"] / result["raw_notes_per_s"], rel=0.01, abs=0.002)
    assert result["latency_notes"] >= 20 and 0 < result["p50_ms"] <= result["p99_ms"]
    assert result["device"].startswith("cpu")
    assert result["precision_by_task"] == {"condition": "float32", "disease": "float32"}  # the tiny tasks ask for none
    stages = result["stage_ms_per_note"]
    assert set(stages) == {
        *("decode", "tokenise", "infer", "postprocess", "encode", "forward", "produce", "insert"),
        *("sections", "assertion", "coding"),  # the clinical layer of the NER task, a stage each (no coder configured here)
    }
    assert stages["sections"]["wall"] > 0 and stages["assertion"]["wall"] > 0 and stages["coding"]["wall"] == 0
    assert result["clinical_share_of_model_stages"] > 0
    assert stages["infer"]["wall"] > 0 and stages["insert"]["wall"] > 0  # scraped from the worker and the sink
    assert 0 < stages["forward"]["wall"] <= stages["infer"]["wall"]  # the model's own share of infer
    # every process of the stack, read from /proc, and the model's forward calls taken out of it
    assert result["raw_reference_notes_per_s"] > 0
    by_process = result["cpu_ms_per_note_by_process"]
    assert {"bench (publisher, sink)", "broker", "workers"} <= set(by_process) and all(v >= 0 for v in by_process.values())
    assert result["total_cpu_ms_per_note"] == pytest.approx(sum(by_process.values()), abs=0.01)
    assert 0 < result["overhead_cpu_ms_per_note"] < result["total_cpu_ms_per_note"]
    # the same over the latency phase, whose notes go a few per produce request
    paced = result["latency_cpu_ms_per_note_by_process"]
    assert {"bench (publisher, sink)", "broker", "workers"} <= set(paced) and all(v >= 0 for v in paced.values())
    assert 0 < result["latency_overhead_cpu_ms_per_note"] < sum(paced.values())
    assert "ratio e2e / raw" in proc.stderr  # the table goes to stderr with --json


def test_a_phase_ends_when_every_note_is_stored_not_when_replayed_rows_reach_the_count(tmp_path: Path) -> None:
    """A rebalance redelivers a batch, so the sink writes some notes twice: its row counter reaches the phase's count
    before the last notes are stored. The phase must wait for the distinct notes, and the next phase must count from
    every row written, replays included."""
    from types import SimpleNamespace

    from streams.ops.bench_stack import BenchStack

    rows = {"extractions": 0}
    stored = iter([8, 9, 10])  # distinct notes in ClickHouse at each check once the counter is there
    checks: list[int] = []

    def count(_phase: str) -> int:
        checks.append(len(checks))
        return next(stored)

    stack = BenchStack.__new__(BenchStack)
    stack._written = 0
    stack.data_dir = tmp_path
    stack.pool = SimpleNamespace(all_alive=lambda: True)
    stack.sink = SimpleNamespace(error=None, sink=SimpleNamespace(stats=SimpleNamespace(rows=rows)))
    stack.stored = count  # type: ignore[method-assign]
    rows["extractions"] = 12  # 10 notes, 2 of them written twice
    stack.wait_for("peak", 10, timeout_s=5)
    assert len(checks) == 3  # it kept counting until all 10 were in
    assert stack.stored_rows() == 0  # the replays do not count towards the next phase
    stored = iter([3])
    with pytest.raises(TimeoutError, match="only 3 of 5"):
        stack.wait_for("next", 5, timeout_s=0.1)


def test_the_bench_phases_send_different_notes_so_the_coders_cache_is_not_warmed_for_the_measured_phase() -> None:
    from streams.ops.bench import bench_notes, bench_texts

    warm, peak, latency = bench_notes(DATASETS, 256, 300, 40)
    assert (len(warm), len(peak), len(latency)) == (256, 300, 40)
    assert warm + peak + latency == bench_texts(596, DATASETS)
    # the abstracts hold a few duplicates of their own; a warm-up that was the e2e phase's first notes shared 256
    assert len(set(warm) & set(peak)) <= 3 and len(set(peak) & set(latency)) <= 3
