"""Pictures of the binned metrics: PR curve, ROC curve, inlier vs anomaly score histogram.

Uses matplotlib's object API (``Figure`` + ``savefig``, which renders with Agg), so nothing
touches pyplot's global state or needs a display.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from flowclas_ros.files import atomic_write
from flowclas_ros.metrics.binned import BinnedMetrics


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format=path.suffix.lstrip(".") or "png"))
    return path


def _square_axes(xlabel: str, ylabel: str, title: str):
    fig = Figure(figsize=(5, 5), layout="constrained")
    ax = fig.add_subplot()
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    return fig, ax


def plot_pr_curve(metrics: BinnedMetrics, path: str | Path, label: str | None = None) -> Path:
    """Precision against recall; ``label`` names the curve in the legend (e.g. "AP 88.4")."""
    c = metrics.curves()
    fig, ax = _square_axes("recall", "precision", "Precision-recall (anomaly = positive)")
    ax.plot(np.concatenate(([0.0], c["recall"])), np.concatenate(([1.0], c["precision"])), label=label)
    ratio = metrics.num_anomaly / metrics.num_pixels
    ax.axhline(ratio, color="grey", linestyle=":", label=f"chance ({100 * ratio:.2f}% anomaly)")
    ax.legend(loc="lower left")
    return _save(fig, path)


def plot_roc_curve(metrics: BinnedMetrics, path: str | Path, label: str | None = None) -> Path:
    """True-positive rate against false-positive rate, with the TPR 95% line."""
    c = metrics.curves()
    fig, ax = _square_axes("false-positive rate", "true-positive rate", "ROC (anomaly = positive)")
    ax.plot(np.concatenate(([0.0], c["fpr"])), np.concatenate(([0.0], c["tpr"])), label=label)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
    ax.axhline(0.95, color="tab:red", linewidth=0.8, linestyle="--", label="TPR 95%")
    ax.legend(loc="lower right")
    return _save(fig, path)


def plot_score_histogram(metrics: BinnedMetrics, path: str | Path, bars: int = 100,
                         threshold: float | None = None) -> Path:
    """Normalised histograms of inlier and anomaly scores (log count axis), with an optional
    threshold line (in the histogram's [0, 1] units)."""
    edges, inlier, anomaly = metrics.histograms()
    groups = np.array_split(np.arange(metrics.bins), min(bars, metrics.bins))
    starts = np.array([g[0] for g in groups])
    widths = np.diff(np.append(edges[starts], 1.0 + 1.0 / (metrics.bins - 1)))
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    for counts, name, colour in ((inlier, "inlier", "tab:blue"), (anomaly, "anomaly", "tab:orange")):
        total = counts.sum()
        if total:
            ax.bar(edges[starts], np.add.reduceat(counts, starts) / total, width=widths, align="edge",
                   alpha=0.55, color=colour, label=f"{name} ({total:,} px)")
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:.3f}")
    ax.set(yscale="log", xlim=(0, 1), xlabel="anomaly score", ylabel="fraction of pixels",
           title="Score distribution")
    ax.legend()
    return _save(fig, path)
