"""Reporting: fractions to the papers' percentages, and ``metrics.json`` (docs/design.md)."""

from __future__ import annotations

import json
from pathlib import Path

from flowclas_ros.files import write_text

# Values that are fractions in the metric dicts and percentages in reports.
PERCENT_KEYS = frozenset(
    {"ap", "auprc_trapz", "fpr95", "auroc", "f1_mean", "f1_25", "f1_50", "f1_75", "siou_gt", "ppv"}
)
PIXEL_KEYS = ("ap", "auprc_trapz", "fpr95", "auroc")


def as_percentages(metrics: dict) -> dict:
    """A copy with every fraction in ``PERCENT_KEYS`` times 100 (nested dicts included);
    counts, thresholds and None are kept as they are."""
    out: dict = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out[key] = as_percentages(value)
        elif key in PERCENT_KEYS and value is not None:
            out[key] = 100.0 * float(value)
        else:
            out[key] = value
    return out


def write_metrics_json(path: str | Path, metrics: dict, **extra) -> Path:
    """Write ``metrics.json``: ``metrics`` (fractions: ap, auprc_trapz, fpr95, auroc, optional
    ``component`` dict) as percentages, then ``extra`` (e.g. num_images, num_pixels, model,
    dataset) as given. Raises ValueError when a pixel metric is missing."""
    missing = [k for k in PIXEL_KEYS if k not in metrics]
    if missing:
        raise ValueError(f"metrics lack {missing}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps({**as_percentages(metrics), **extra}, indent=2, allow_nan=False) + "\n")
    return path
