"""``ehrstream calibrate``: what it writes. The temperature and the routing thresholds both go into the model
directory's manifest: they belong to that model version, and a worker routes with them (``thresholds_from =
"model"``, the default), so a new model brings its own and an older one keeps its own on a rollback.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agents.errors import ModelLoadError
from agents.model_dir import MANIFEST, RoutingCalibration, read_manifest, write_manifest


def write_calibration(
    model_dir: Path, temperature: float, chosen: dict[str, Any], target_precision: float, data: str
) -> RoutingCalibration:
    """Store the fitted temperature and the chosen thresholds (``choose_thresholds``' result) in the manifest."""
    manifest = read_manifest(model_dir)
    if manifest is None:
        raise ModelLoadError(model_dir, f"calibration needs an ehrstream model directory ({MANIFEST})")
    routing = RoutingCalibration(
        threshold=chosen["threshold"],
        label_thresholds=dict(sorted(chosen["label_thresholds"].items())),
        target_precision=target_precision,
        reached_target=bool(chosen["reached_target"]),
        calibrated_on=data,
        calibrated_at=datetime.now(UTC).isoformat(timespec="seconds"),
        auto_precision=chosen.get("auto_precision"),
        review_share=chosen.get("review_share"),
    )
    write_manifest(model_dir, manifest.model_copy(update={"temperature": temperature, "routing": routing}))
    return routing
