"""SegmentMeIfYouCan component-level metrics (docs/method.md section 5).

Per frame: predicted mask = (score >= threshold) outside void; 8-connected components of
the prediction and of the ground-truth anomaly pixels; predicted components smaller than the
track's size are dropped, ground-truth components smaller than its size become void. Then

    sIoU(gt k)   = |k n P(k)| / (|k u P(k)| - |P(k) n other gt components|)
    sIoU(pred j) = |j n G(j)| / (|j u G(j)| - |G(j) n other predicted components|)

where P(k) is the union of predicted components touching k and G(j) the union of
ground-truth components touching j. For 11 values tau in 0.25..0.75: TP = gt components with
sIoU >= tau, FN = the others, FP = predicted components with sIoU < tau, pooled over frames;
F1 = 2TP / (2TP + FN + FP). Reported: mean F1 over tau, mean sIoU over gt components, and
mean PPV (the sIoU of predicted components).

The mask uses ``>=`` like the detector, so a threshold from ``best_f1_threshold`` gives the
operating point it was chosen for (the SegmentMeIfYouCan code binarises with ``>``, which
differs only for pixels lying exactly on the threshold).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from flowclas_ros.metrics.pixel import VOID, to_tensor

# track: (smallest predicted component kept, smallest ground-truth component evaluated), pixels
TRACKS = {"anomaly": (500, 100), "obstacle": (50, 10)}
TAUS = np.linspace(0.25, 0.75, 11)
_EIGHT = np.ones((3, 3), dtype=bool)


def _components(mask: np.ndarray, min_size: int) -> tuple[np.ndarray, np.ndarray]:
    """8-connected components of ``mask`` with at least ``min_size`` pixels, numbered 1..n
    (0 elsewhere), and the mask of the pixels of the dropped ones."""
    labels, n = ndimage.label(mask, structure=_EIGHT)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_size
    keep[0] = False
    renumber = np.zeros(n + 1, dtype=np.int64)
    renumber[keep] = np.arange(1, int(keep.sum()) + 1)
    return renumber[labels], mask & ~keep[labels]


def _siou(overlap: np.ndarray) -> np.ndarray:
    """sIoU of every row component against the column components.

    ``overlap[a, b]``: pixels in row component a and column component b (index 0 = none).
    Row components without a pixel in the region of interest are left out.
    """
    rows = overlap[1:]
    rows = rows[rows.sum(axis=1) > 0]
    touching = rows[:, 1:] > 0  # row component x column component
    column_size = overlap.sum(axis=0)[1:]
    column_on_others = column_size - overlap[0, 1:]  # column pixels lying on some row component
    size = rows.sum(axis=1)
    intersection = (rows[:, 1:] * touching).sum(axis=1)
    union_of_touching = touching @ column_size
    on_other_rows = touching @ column_on_others - intersection
    return intersection / (size + union_of_touching - intersection - on_other_rows)


class ComponentMetrics:
    """Accumulates the component metrics of one SegmentMeIfYouCan track over frames.

    ``track`` "anomaly" (drop predictions < 500 px, void gt < 100 px) or "obstacle"
    (50 / 10 px); ``min_pred_size``/``min_gt_size`` override those sizes.
    """

    def __init__(self, track: str = "anomaly", min_pred_size: int | None = None, min_gt_size: int | None = None):
        if track not in TRACKS:
            raise ValueError(f"track must be one of {sorted(TRACKS)}, got {track!r}")
        self.track = track
        default_pred, default_gt = TRACKS[track]
        self.min_pred_size = default_pred if min_pred_size is None else int(min_pred_size)
        self.min_gt_size = default_gt if min_gt_size is None else int(min_gt_size)
        self.siou_gt: list[np.ndarray] = []
        self.siou_pred: list[np.ndarray] = []

    def update(self, score, label, threshold: float) -> None:
        """Add one frame: ``score`` and ``label`` are ``H x W`` (numpy or torch)."""
        score = to_tensor(score, "score").float().cpu().numpy()
        label = to_tensor(label, "label").cpu().numpy()
        if score.ndim != 2 or score.shape != label.shape:
            raise ValueError(f"score {score.shape} and label {label.shape} must be the same H x W")
        void = label == VOID
        gt, small_gt = _components(label == 1, self.min_gt_size)
        pred, _ = _components((score >= threshold) & ~void, self.min_pred_size)
        roi = ~(void | small_gt)
        n_gt, n_pred = int(gt.max(initial=0)), int(pred.max(initial=0))
        pairs = gt[roi] * (n_pred + 1) + pred[roi]
        overlap = np.bincount(pairs, minlength=(n_gt + 1) * (n_pred + 1)).reshape(n_gt + 1, n_pred + 1)
        overlap = overlap.astype(np.float64)
        self.siou_gt.append(_siou(overlap))
        self.siou_pred.append(_siou(overlap.T))

    def compute(self) -> dict:
        """``f1_mean``, ``f1_25``/``f1_50``/``f1_75``, ``siou_gt``, ``ppv`` (fractions; ``ppv``
        None without predicted components) and the component counts."""
        siou_gt = np.concatenate(self.siou_gt) if self.siou_gt else np.zeros(0)
        siou_pred = np.concatenate(self.siou_pred) if self.siou_pred else np.zeros(0)
        if siou_gt.size == 0:
            raise ValueError(
                f"component metrics need ground-truth anomaly components of at least {self.min_gt_size} px; none seen"
            )
        f1 = []
        for tau in TAUS:
            tp = np.count_nonzero(siou_gt >= tau)
            fn = siou_gt.size - tp
            fp = np.count_nonzero(siou_pred < tau)
            f1.append(2 * tp / (2 * tp + fn + fp))
        return {
            "track": self.track,
            "f1_mean": float(np.mean(f1)),
            "f1_25": float(f1[0]),
            "f1_50": float(f1[5]),
            "f1_75": float(f1[10]),
            "siou_gt": float(siou_gt.mean()),
            "ppv": float(siou_pred.mean()) if siou_pred.size else None,
            "num_gt_components": int(siou_gt.size),
            "num_pred_components": int(siou_pred.size),
        }
