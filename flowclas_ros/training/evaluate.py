"""Evaluation (``flowclas eval``): pixel (and optionally component) metrics of a bundle on a test set.

Writes into ``--output``: ``metrics.json`` (percentages, docs/design.md), ``pr_curve.png``,
``roc_curve.png``, ``score_histogram.png`` and ``overlays/<name>.png`` for the first few
frames. Pixel metrics are exact (every pixel, equal to scikit-learn) while the non-void
pixel count stays within ``--exact-max-pixels``, binned beyond it; the curves and the
histogram always come from the binned counts (a few thousand points draw the same picture).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from flowclas_ros.errors import UserError

EXACT_MAX_PIXELS = 50_000_000  # about 200 MB of float32 scores, a few seconds of sorting


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "frame"


def evaluate(
    detector,
    dataset: Sequence,
    *,
    bins: int = 2000,
    exact_max_pixels: int = EXACT_MAX_PIXELS,
    component: str | None = None,
    output: str | Path | None = None,
    num_overlays: int = 0,
    progress: bool = True,
) -> dict:
    """Metrics of ``detector`` (a ``flowclas_ros.runtime.Detector``) on ``dataset`` (items
    ``(image, labels, name)``, labels 0 inlier / 1 anomaly / 255 void).

    Returns fractions: ``ap``, ``auprc_trapz``, ``fpr95``, ``auroc``, ``num_pixels``,
    ``num_images``, ``num_skipped`` (unusable items, each logged by the dataset), ``method``
    ("exact" or "binned"), ``bins``, ``best_f1_threshold``, and ``component`` (track
    ``component``, binarised at ``best_f1_threshold``) when asked. With ``output``, also
    writes the curves, the histogram and ``num_overlays`` overlays there. Items a dataset
    reports as skipped (``dataset.skipped``) are not counted twice.
    """
    import tempfile

    import numpy as np
    from tqdm import tqdm

    from flowclas_ros.images import write_png
    from flowclas_ros.metrics import BinnedMetrics, ComponentMetrics, ExactMetrics
    from flowclas_ros.runtime.visualize import overlay

    binned = BinnedMetrics(bins=bins)
    exact = ExactMetrics() if exact_max_pixels > 0 else None
    components = ComponentMetrics(component) if component else None
    out = Path(output) if output is not None else None
    if out is not None and num_overlays:
        (out / "overlays").mkdir(parents=True, exist_ok=True)
    num_images = 0
    with tempfile.TemporaryDirectory(prefix=".flowclas-eval-", dir=out) as cache:
        # Component metrics binarise at the best-F1 threshold, known only after the pass:
        # the score maps wait on disk rather than running the model twice.
        for index in tqdm(range(len(dataset)), desc="eval", unit="img", disable=not progress):
            image, labels, name = dataset[index]
            if index in getattr(dataset, "skipped", ()):
                continue  # the sequence handed over a later item in place of an unusable one
            score = detector.score(image)
            binned.update(score, labels)
            if exact is not None:
                exact.update(score, labels)
                if exact.num_pixels > exact_max_pixels:
                    exact = None  # too many pixels to keep: binned from here on
            if components is not None:
                np.savez(Path(cache) / f"{num_images}.npz", score=score, labels=labels)
            if out is not None and num_images < num_overlays:
                picture = overlay(image, score, score >= detector.threshold)
                write_png(out / "overlays" / f"{num_images:02d}_{_safe_name(name)}.png", picture)
            num_images += 1
        if num_images == 0:
            raise UserError("the dataset has no usable images")
        chosen = exact if exact is not None else binned
        metrics = chosen.compute()
        best = chosen.best_f1_threshold()
        metrics.update(num_images=num_images, num_skipped=len(getattr(dataset, "skipped", ())),
                       method="exact" if exact is not None else "binned", bins=bins, best_f1_threshold=best)
        if components is not None:
            for index in range(num_images):
                with np.load(Path(cache) / f"{index}.npz") as frame:
                    components.update(frame["score"], frame["labels"], best)
            metrics["component"] = components.compute()
    if out is not None:
        write_plots(binned, out, metrics, detector.threshold)
    return metrics


def write_plots(binned, out: Path, metrics: dict, threshold: float) -> list[Path]:
    """``pr_curve.png``, ``roc_curve.png`` and ``score_histogram.png`` in ``out``."""
    from flowclas_ros.metrics import plot_pr_curve, plot_roc_curve, plot_score_histogram

    return [
        plot_pr_curve(binned, out / "pr_curve.png",
                      label=f"AP (step) {100 * metrics['ap']:.1f}%, AUPRC (trapezoid) {100 * metrics['auprc_trapz']:.1f}%"),
        plot_roc_curve(binned, out / "roc_curve.png",
                       label=f"AUROC {100 * metrics['auroc']:.1f}%, FPR95 {100 * metrics['fpr95']:.1f}%"),
        plot_score_histogram(binned, out / "score_histogram.png", threshold=threshold),
    ]
