"""Binned (streaming) pixel metrics: confusion counts at N fixed thresholds in [0, 1].

The state is two histograms over the same N bins, one of inlier scores and one of anomaly
scores; bin k holds scores in [t_k, t_{k+1}) with t_k = k / (N - 1) (torch.linspace, as
torchmetrics uses) and the last bin holds scores equal to 1. Cumulating the histograms from
the top gives, for every threshold, the pixels with score >= t_k: every confusion matrix.
Memory is 2 x N counts whatever the pixel count, and the state sums across processes.

Why not torchmetrics' ``BinaryPrecisionRecallCurve(thresholds=N)``: its state is the same
N confusion matrices, but its update compares every pixel with every threshold (O(pixels x
N)) where a histogram needs one bucketize (O(pixels log N); timings in benchmarks/README.md).
The counts are identical (tested).

Squashing (docs/method.md 2.5 and supplement 7.1): the network already maps its raw score into
[0, 1] as the bundle's ``squash`` setting says, so scores from ``FlowCLASNet`` and
``Detector`` go in unchanged and anything outside [0, 1] is refused rather than squashed per
batch (a rule like "sigmoid when any score falls outside" would transform different batches
of one stream differently). For unbounded raw scores pass ``sigmoid=True``: every score is
squashed, and thresholds are reported back in raw-score units.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from flowclas_ros.metrics.pixel import _require_both, best_f1_index, split_pixels, summarize_curve
from flowclas_ros.vocabulary import Label

INLIER, ANOMALY = int(Label.INLIER), int(Label.ANOMALY)


class BinnedMetrics:
    """Streaming AP / AUPRC / FPR95 / AUROC with ``bins`` thresholds evenly spaced in [0, 1].

    ``update(scores, labels)`` takes numpy arrays or torch tensors of any shape (labels 0
    inlier, 1 anomaly, 255 void); binning runs on the scores' device.
    Distributed use: ``state()`` is a ``2 x bins`` int64 tensor (row 0 inlier, row 1 anomaly
    counts) to all-reduce with SUM, then ``load_state(reduced)``; ``merge(other)`` adds
    another instance in place.
    """

    def __init__(self, bins: int = 2000, sigmoid: bool = False) -> None:
        if not isinstance(bins, int) or bins < 2:
            raise ValueError(f"bins must be an integer >= 2, got {bins!r}")
        self.bins = bins
        self.sigmoid = sigmoid
        self.thresholds = torch.linspace(0.0, 1.0, bins, dtype=torch.float32)
        self._counts = torch.zeros(2, bins, dtype=torch.int64)

    # --- accumulation -------------------------------------------------------------------

    def update(self, scores, labels) -> None:
        """Add the non-void pixels of a batch."""
        anomaly, inlier = split_pixels(scores, labels)
        self._counts[ANOMALY] += self._histogram(anomaly)
        self._counts[INLIER] += self._histogram(inlier)

    def _histogram(self, scores: torch.Tensor) -> torch.Tensor:
        s = scores.float()
        if self.sigmoid:
            s = torch.sigmoid(s)
        elif s.numel() and (s.min() < 0.0 or s.max() > 1.0):
            raise ValueError(
                f"scores must lie in [0, 1] (got {float(s.min()):.4g}..{float(s.max()):.4g}); the "
                "network squashes its raw score per the bundle config; pass sigmoid=True for raw scores"
            )
        index = torch.bucketize(s, self.thresholds.to(s.device), right=True) - 1
        return torch.bincount(index, minlength=self.bins).cpu()

    def reset(self) -> None:
        """Forget every pixel seen so far."""
        self._counts.zero_()

    def state(self) -> torch.Tensor:
        """A copy of the ``2 x bins`` int64 counts (row 0 inlier, row 1 anomaly)."""
        return self._counts.clone()

    def load_state(self, state: torch.Tensor) -> None:
        """Replace the counts, e.g. with an all-reduced ``state()``."""
        if tuple(state.shape) != (2, self.bins):
            raise ValueError(f"state must have shape (2, {self.bins}), got {tuple(state.shape)}")
        self._counts = state.detach().to("cpu", torch.int64).clone()

    def merge(self, other: "BinnedMetrics") -> "BinnedMetrics":
        """Add another instance's counts (same bins and squashing) to this one; returns self."""
        if other.bins != self.bins or other.sigmoid != self.sigmoid:
            raise ValueError("can only merge BinnedMetrics with the same bins and sigmoid setting")
        self._counts += other._counts
        return self

    # --- results ------------------------------------------------------------------------

    @property
    def num_inlier(self) -> int:
        """Inlier pixels seen."""
        return int(self._counts[INLIER].sum())

    @property
    def num_anomaly(self) -> int:
        """Anomalous pixels seen."""
        return int(self._counts[ANOMALY].sum())

    @property
    def num_pixels(self) -> int:
        """Non-void pixels seen."""
        return self.num_inlier + self.num_anomaly

    def histograms(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(bin lower edges in [0, 1], inlier counts, anomaly counts), for plotting.

        Edges are in squashed units when ``sigmoid`` is set."""
        counts = self._counts.numpy()
        return self.thresholds.numpy().astype(np.float64), counts[INLIER].copy(), counts[ANOMALY].copy()

    def _cumulative(self) -> tuple[np.ndarray, np.ndarray]:
        """Pixels at or above each threshold (thresholds increasing): (tps, fps)."""
        counts = self._counts.numpy()
        above = np.cumsum(counts[:, ::-1], axis=1)[:, ::-1]
        return above[ANOMALY], above[INLIER]

    def _raw(self, threshold: float) -> float:
        """A threshold on the squashed scale back in the units the scores came in."""
        if not self.sigmoid:
            return float(threshold)
        if threshold <= 0.0:
            return -math.inf
        if threshold >= 1.0:
            return math.inf
        return math.log(threshold / (1.0 - threshold))

    def curves(self) -> dict[str, np.ndarray]:
        """Operating points by decreasing threshold (only those predicting some pixel):
        ``thresholds`` (squashed units), ``precision``, ``recall`` (= ``tpr``), ``fpr``."""
        _require_both(self.num_anomaly, self.num_inlier)
        tps, fps = self._cumulative()
        keep = (tps + fps) > 0
        thresholds = self.thresholds.numpy()[keep][::-1]
        tps, fps = tps[keep][::-1].astype(np.float64), fps[keep][::-1].astype(np.float64)
        recall = tps / self.num_anomaly
        return {"thresholds": thresholds, "precision": tps / (tps + fps), "recall": recall,
                "tpr": recall, "fpr": fps / self.num_inlier}

    def compute(self) -> dict:
        """``ap``, ``auprc_trapz``, ``fpr95``, ``auroc`` (fractions) and ``num_pixels``;
        ValueError without anomaly or inlier pixels."""
        _require_both(self.num_anomaly, self.num_inlier)
        tps, fps = self._cumulative()
        keep = (tps + fps) > 0
        return summarize_curve(tps[keep][::-1], fps[keep][::-1], self.num_anomaly, self.num_inlier)

    def best_f1_threshold(self) -> float:
        """The threshold (mask = score >= threshold) with the highest pixel F1."""
        _require_both(self.num_anomaly, self.num_inlier)
        tps, fps = self._cumulative()
        return self._raw(float(self.thresholds[best_f1_index(tps, fps, self.num_anomaly)]))

    def threshold_at_fpr(self, fpr: float) -> float:
        """The lowest threshold whose inlier false-positive rate (score >= threshold) is at
        most ``fpr``: the calibration rule. Needs only inlier pixels.

        Scores exactly 1 form the last bin: if they alone exceed ``fpr``, 1 is returned and
        its rate is above the target (``fpr_at`` tells by how much)."""
        if not 0.0 <= fpr <= 1.0:
            raise ValueError(f"fpr must be in [0, 1], got {fpr}")
        if self.num_inlier == 0:
            raise ValueError("threshold_at_fpr needs inlier pixels; none were seen")
        _, fps = self._cumulative()
        ok = np.flatnonzero(fps <= fpr * self.num_inlier)
        index = int(ok[0]) if ok.size else self.bins - 1
        return self._raw(float(self.thresholds[index]))

    def fpr_at(self, threshold: float) -> float:
        """Inlier false-positive rate of ``score >= threshold``, for a threshold on the grid
        (off-grid values are rounded up to the next bin edge)."""
        if self.num_inlier == 0:
            raise ValueError("fpr_at needs inlier pixels; none were seen")
        t = torch.tensor([threshold], dtype=torch.float32)
        if self.sigmoid:
            t = torch.sigmoid(t)
        index = int(torch.searchsorted(self.thresholds, t, side="left"))
        if index >= self.bins:
            return 0.0
        _, fps = self._cumulative()
        return float(fps[index] / self.num_inlier)
