"""Table and PNG of the data-efficiency curve from tools/data_efficiency.sh output.

Usage: python tools/efficiency_report.py RUN_DIR [PNG]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from agents.learning.plots import data_efficiency


def main() -> None:
    run = Path(sys.argv[1])
    png = Path(sys.argv[2]) if len(sys.argv) > 2 else run / "data_efficiency.png"
    points: dict[str, list[tuple[int, float]]] = {}
    rows = []
    for eval_file in sorted(run.glob("*.eval.json")):
        task, size = eval_file.name.removesuffix(".eval.json").rsplit("-", 1)
        manifest = json.loads((run / f"{task}-{size}" / "ehrstream-model.json").read_text())
        n = int(manifest["training"]["train_examples"])
        scores = json.loads(eval_file.read_text().strip().splitlines()[-1])
        points.setdefault(task, []).append((n, scores["f1"]))
        rows.append((task, n, scores["f1"], scores.get("accuracy", scores.get("overlap_f1"))))
    for series in points.values():
        series.sort()
    data_efficiency(
        {f"{t} ({'strict span F1' if t == 'disease' else 'macro-F1'})": s for t, s in points.items()},
        png,
        "F1 on the test split vs training examples",
    )
    print("| task | training examples | F1 | accuracy / overlap F1 |")
    print("| --- | ---: | ---: | ---: |")
    for task, n, f1, other in sorted(rows):
        print(f"| {task} | {n} | {f1:.3f} | {other:.3f} |")
    print(f"\nplot: {png}")


if __name__ == "__main__":
    main()
