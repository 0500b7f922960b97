"""Exact pixel metrics (docs/method.md section 5) and the input checks every metric shares.

Labels: 0 inlier, 1 anomaly, 255 void (dropped). Scores: any real numbers, higher = more
anomalous. The curve follows scikit-learn: one operating point per distinct score, a pixel
counts as predicted anomalous when its score is >= the threshold, so tied scores move
together. Written with numpy instead of calling scikit-learn so the runtime does not depend
on it; the tests check the numbers against scikit-learn.
"""

from __future__ import annotations

import numpy as np
import torch

from flowclas_ros.vocabulary import Label

VOID = int(Label.VOID)
FPR95_TPR = 0.95


def to_tensor(array, name: str) -> torch.Tensor:
    """A numpy array or torch tensor as a torch tensor (writable numpy arrays share memory)."""
    if isinstance(array, torch.Tensor):
        return array.detach()
    if isinstance(array, np.ndarray):
        array = np.ascontiguousarray(array)
        return torch.from_numpy(array if array.flags.writeable else array.copy())
    raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(array).__name__}")


def split_pixels(scores, labels) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of the anomaly pixels and of the inlier pixels (void dropped), flat float tensors.

    ``scores`` and ``labels`` are numpy arrays or torch tensors of one shape; labels must be
    0, 1 or 255 (bool is read as 0/1). Raises ValueError on a shape mismatch, another label
    value, or a NaN score.
    """
    s, y = to_tensor(scores, "scores"), to_tensor(labels, "labels")
    if s.shape != y.shape:
        raise ValueError(f"scores {tuple(s.shape)} and labels {tuple(y.shape)} differ in shape")
    if s.dtype == torch.bool or s.is_complex():
        raise ValueError(f"scores must be real numbers, got dtype {s.dtype}")
    if s.dtype in (torch.float16, torch.bfloat16):
        s = s.float()  # numpy has no bfloat16; float32 holds both exactly
    if y.is_floating_point() or y.is_complex():
        raise ValueError(f"labels must be integers (0 inlier, 1 anomaly, 255 void), got dtype {y.dtype}")
    if y.device != s.device:
        y = y.to(s.device)
    if y.dtype == torch.bool:
        y = y.to(torch.uint8)
    s, y = s.reshape(-1), y.reshape(-1)
    anomaly, inlier = y == 1, y == 0
    bad = ~(anomaly | inlier | (y == VOID))
    if bool(bad.any()):
        values = sorted({int(v) for v in torch.unique(y[bad])[:5]})
        raise ValueError(f"labels must be 0 inlier, 1 anomaly or {VOID} void; found {values}")
    if s.is_floating_point() and bool(torch.isnan(s).any()):
        raise ValueError("scores contain NaN")
    return s[anomaly], s[inlier]


def _require_both(num_anomaly: int, num_inlier: int) -> None:
    if num_anomaly == 0 or num_inlier == 0:
        raise ValueError(
            f"pixel metrics need anomaly and inlier pixels; got {num_anomaly} anomaly and "
            f"{num_inlier} inlier (void excluded)"
        )


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    """Area under y(x) by the trapezoid rule (np.trapezoid only exists from numpy 2)."""
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def summarize_curve(tps: np.ndarray, fps: np.ndarray, num_anomaly: int, num_inlier: int) -> dict:
    """AP, trapezoid AUPRC, FPR95 and AUROC from an operating-point curve.

    ``tps``/``fps``: counts of anomaly/inlier pixels at or above each threshold, thresholds
    decreasing, every point with at least one positive prediction, the last point taking
    every pixel. Shared by the exact and the binned metrics so both read the curve alike.
    """
    tps, fps = tps.astype(np.float64), fps.astype(np.float64)
    precision = tps / (tps + fps)
    recall = tps / num_anomaly
    fpr = fps / num_inlier
    ap = float(np.sum(np.diff(recall, prepend=0.0) * precision))
    # scikit-learn's curve ends at (recall 0, precision 1); the trapezoid includes it.
    auprc = _trapezoid(np.concatenate(([1.0], precision)), np.concatenate(([0.0], recall)))
    auroc = _trapezoid(np.concatenate(([0.0], recall)), np.concatenate(([0.0], fpr)))
    fpr95 = float(fpr[recall >= FPR95_TPR].min())
    return {"ap": ap, "auprc_trapz": auprc, "fpr95": fpr95, "auroc": auroc,
            "num_pixels": int(num_anomaly + num_inlier)}


def best_f1_index(tps: np.ndarray, fps: np.ndarray, num_anomaly: int) -> int:
    """Index of the operating point with the highest pixel F1 (2TP / (2TP + FP + FN))."""
    tps = tps.astype(np.float64)
    f1 = 2.0 * tps / (tps + fps + num_anomaly)
    return int(np.argmax(f1))


class ExactMetrics:
    """Exact pixel metrics over many frames: keeps every non-void score (float32 as given).

    Memory grows with the pixel count (about 4 bytes a pixel for float32 scores); use
    :class:`~flowclas_ros.metrics.BinnedMetrics` for large sets.
    """

    def __init__(self) -> None:
        self._anomaly: list[np.ndarray] = []
        self._inlier: list[np.ndarray] = []
        self.num_anomaly = 0
        self.num_inlier = 0

    @property
    def num_pixels(self) -> int:
        """Non-void pixels held."""
        return self.num_anomaly + self.num_inlier

    def update(self, scores, labels) -> None:
        """Add a batch (any shape; numpy or torch) of scores and labels."""
        anomaly, inlier = split_pixels(scores, labels)
        self._anomaly.append(anomaly.cpu().numpy())  # masked selections: already copies
        self._inlier.append(inlier.cpu().numpy())
        self.num_anomaly += anomaly.numel()
        self.num_inlier += inlier.numel()

    def curve(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(thresholds decreasing, tps, fps): one point per distinct score."""
        _require_both(self.num_anomaly, self.num_inlier)
        anomaly = np.sort(np.concatenate(self._anomaly))
        inlier = np.sort(np.concatenate(self._inlier))
        thresholds = np.unique(np.concatenate((anomaly, inlier)))[::-1]
        tps = anomaly.size - np.searchsorted(anomaly, thresholds, side="left")
        fps = inlier.size - np.searchsorted(inlier, thresholds, side="left")
        return thresholds, tps, fps

    def compute(self) -> dict:
        """``ap``, ``auprc_trapz``, ``fpr95``, ``auroc`` (fractions) and ``num_pixels``."""
        _, tps, fps = self.curve()
        return summarize_curve(tps, fps, self.num_anomaly, self.num_inlier)

    def best_f1_threshold(self) -> float:
        """The score threshold (mask = score >= threshold) with the highest pixel F1."""
        thresholds, tps, fps = self.curve()
        return float(thresholds[best_f1_index(tps, fps, self.num_anomaly)])


def exact_metrics(scores, labels) -> dict:
    """Exact AP (= scikit-learn ``average_precision_score``), AUPRC by the trapezoid rule
    (= ``auc(recall, precision)``), FPR95 and AUROC (= ``roc_auc_score``) as fractions, plus
    ``num_pixels``; void (255) dropped. ValueError without anomaly or inlier pixels."""
    metrics = ExactMetrics()
    metrics.update(scores, labels)
    return metrics.compute()
