"""Pixel, binned and component metrics against scikit-learn, torchmetrics and hand counts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score, roc_curve
from torchmetrics.classification import BinaryPrecisionRecallCurve

from flowclas_ros.metrics import (
    BinnedMetrics,
    ComponentMetrics,
    ExactMetrics,
    as_percentages,
    exact_metrics,
    plot_pr_curve,
    plot_roc_curve,
    plot_score_histogram,
    write_metrics_json,
)

PIXEL_KEYS = ("ap", "auprc_trapz", "fpr95", "auroc")
# Stated tolerance of binned (2000 bins) against exact metrics on smooth scores: 0.2 points
# for AP, trapezoid AUPRC and FPR95, 0.01 points for AUROC (observed: 0.05 / 0.002 / 0.07 / 0.0001).
BINNED_TOLERANCE = {"ap": 0.002, "auprc_trapz": 0.002, "fpr95": 0.002, "auroc": 0.0001}


def sample(n: int = 50_000, seed: int = 0, anomaly_rate: float = 0.1, shift: float = 1.5):
    """Labels (0/1) and scores in (0, 1) where anomalies score higher on average."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < anomaly_rate).astype(np.uint8)
    raw = rng.normal(size=n) + shift * labels
    return (1.0 / (1.0 + np.exp(-raw))).astype(np.float32), labels


def sklearn_metrics(scores: np.ndarray, labels: np.ndarray) -> dict:
    precision, recall, _ = precision_recall_curve(labels, scores)
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    return {
        "ap": average_precision_score(labels, scores),
        "auprc_trapz": auc(recall, precision),
        "fpr95": float(fpr[tpr >= 0.95].min()),
        "auroc": roc_auc_score(labels, scores),
    }


def assert_equal_metrics(ours: dict, reference: dict) -> None:
    for key in PIXEL_KEYS:
        assert ours[key] == pytest.approx(reference[key], rel=1e-12, abs=1e-15), key


@pytest.mark.parametrize("decimals", [None, 1, 2])
def test_exact_equals_sklearn_on_random_and_tied_scores(decimals):
    scores, labels = sample(seed=3)
    if decimals is not None:
        scores = np.round(scores, decimals)  # heavy ties: 11 or 101 distinct values
    ours = exact_metrics(scores, labels)
    assert_equal_metrics(ours, sklearn_metrics(scores, labels))
    assert ours["num_pixels"] == scores.size


def test_exact_drops_void_and_accepts_torch_images():
    scores, labels = sample(n=4 * 60 * 80, seed=4)
    labels = labels.copy()
    labels[::7] = 255
    ours = exact_metrics(torch.from_numpy(scores).view(4, 60, 80), torch.from_numpy(labels).view(4, 60, 80))
    keep = labels != 255
    assert ours["num_pixels"] == int(keep.sum())
    assert_equal_metrics(ours, sklearn_metrics(scores[keep], labels[keep]))


def test_exact_accumulates_frames_like_one_call():
    scores, labels = sample(seed=5)
    whole = exact_metrics(scores, labels)
    acc = ExactMetrics()
    for part in np.array_split(np.arange(scores.size), 3):
        acc.update(scores[part], labels[part])
    assert acc.compute() == whole


def test_exact_best_f1_threshold_matches_sklearn_curve():
    scores, labels = sample(n=5000, seed=6)
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-300)
    acc = ExactMetrics()
    acc.update(scores, labels)
    assert acc.best_f1_threshold() == pytest.approx(thresholds[np.argmax(f1[:-1])])


@pytest.mark.parametrize(
    "scores, labels, message",
    [
        (np.random.rand(10), np.zeros(10, np.uint8), "anomaly and inlier"),
        (np.random.rand(10), np.ones(10, np.uint8), "anomaly and inlier"),
        (np.random.rand(10), np.full(10, 255, np.uint8), "anomaly and inlier"),
        (np.random.rand(10), np.array([0, 1, 2] + [0] * 7, np.uint8), r"found \[2\]"),
        (np.random.rand(10), np.zeros(9, np.uint8), "differ in shape"),
        (np.array([np.nan] + [0.5] * 9), np.array([0, 1] * 5, np.uint8), "NaN"),
        (np.random.rand(10), np.random.rand(10), "integers"),
    ],
)
def test_bad_inputs_are_refused_with_a_clear_message(scores, labels, message):
    with pytest.raises(ValueError, match=message):
        exact_metrics(scores, labels)
    with pytest.raises(ValueError, match=message):
        binned = BinnedMetrics(bins=10)
        binned.update(scores, labels)
        binned.compute()


def test_binned_within_stated_tolerance_of_exact():
    for seed in range(3):
        scores, labels = sample(n=200_000, seed=seed)
        binned = BinnedMetrics(bins=2000)
        binned.update(scores, labels)
        ours, exact = binned.compute(), exact_metrics(scores, labels)
        assert ours["num_pixels"] == exact["num_pixels"]
        for key, tol in BINNED_TOLERANCE.items():
            assert abs(ours[key] - exact[key]) < tol, (key, ours[key], exact[key])


def test_binned_counts_equal_torchmetrics_confusion_matrices():
    scores, labels = sample(n=20_000, seed=7)
    reference = BinaryPrecisionRecallCurve(thresholds=50)
    reference.update(torch.from_numpy(scores), torch.from_numpy(labels).long())
    confmat = reference.confmat  # thresholds x [[tn, fp], [fn, tp]]
    binned = BinnedMetrics(bins=50)
    binned.update(scores, labels)
    _, inlier, anomaly = binned.histograms()
    np.testing.assert_array_equal(np.cumsum(anomaly[::-1])[::-1], confmat[:, 1, 1].numpy())
    np.testing.assert_array_equal(np.cumsum(inlier[::-1])[::-1], confmat[:, 0, 1].numpy())


def test_binned_equals_exact_when_scores_sit_on_the_grid():
    rng = np.random.default_rng(8)
    grid = torch.linspace(0, 1, 11).numpy()  # the float32 bin edges of BinnedMetrics(11)
    labels = (rng.random(5000) < 0.3).astype(np.uint8)
    scores = grid[np.clip(rng.integers(0, 8, 5000) + 3 * labels, 0, 10)]
    binned = BinnedMetrics(bins=11)
    binned.update(scores, labels)
    assert_equal_metrics(binned.compute(), sklearn_metrics(scores, labels))


def test_merging_two_halves_equals_one_pass():
    scores, labels = sample(seed=9)
    whole, first, second = BinnedMetrics(), BinnedMetrics(), BinnedMetrics()
    whole.update(scores, labels)
    first.update(scores[:20_000], labels[:20_000])
    second.update(scores[20_000:], labels[20_000:])
    # as after an all-reduce with SUM of the state tensors
    reduced = BinnedMetrics()
    reduced.load_state(first.state() + second.state())
    assert torch.equal(reduced.state(), whole.state())
    assert reduced.compute() == whole.compute()
    assert first.merge(second).compute() == whole.compute()
    with pytest.raises(ValueError, match="same bins"):
        whole.merge(BinnedMetrics(bins=100))
    with pytest.raises(ValueError, match="shape"):
        whole.load_state(torch.zeros(2, 5, dtype=torch.int64))


def test_threshold_at_fpr_calibrates_on_inlier_pixels_only():
    rng = np.random.default_rng(10)
    scores = rng.beta(2, 5, size=100_000).astype(np.float32)
    binned = BinnedMetrics(bins=2000)
    binned.update(scores, np.zeros(scores.size, np.uint8))
    for target in (0.05, 0.01, 0.2):
        threshold = binned.threshold_at_fpr(target)
        achieved = float(np.mean(scores >= threshold))
        assert achieved <= target
        assert achieved > target - 0.002  # the next bin down would exceed the target
        assert binned.fpr_at(threshold) == pytest.approx(achieved)
    assert binned.threshold_at_fpr(1.0) == 0.0
    with pytest.raises(ValueError, match="fpr"):
        binned.threshold_at_fpr(1.5)


def test_threshold_at_fpr_when_scores_pile_up_at_one():
    binned = BinnedMetrics(bins=100)
    binned.update(np.ones(100, np.float32), np.zeros(100, np.uint8))
    assert binned.threshold_at_fpr(0.05) == 1.0
    assert binned.fpr_at(1.0) == 1.0


def test_best_f1_threshold_binned_close_to_exact():
    scores, labels = sample(n=100_000, seed=11)
    binned, exact = BinnedMetrics(bins=2000), ExactMetrics()
    binned.update(scores, labels)
    exact.update(scores, labels)

    def f1(t):
        predicted = scores >= t
        tp = np.sum(predicted & (labels == 1))
        return 2 * tp / (predicted.sum() + labels.sum())

    assert f1(binned.best_f1_threshold()) == pytest.approx(f1(exact.best_f1_threshold()), abs=1e-3)


def test_out_of_range_scores_need_sigmoid():
    rng = np.random.default_rng(12)
    labels = (rng.random(50_000) < 0.2).astype(np.uint8)
    raw = (rng.normal(size=labels.size) * 2 + 2 * labels).astype(np.float32)
    with pytest.raises(ValueError, match=r"\[0, 1\].*sigmoid=True"):
        BinnedMetrics().update(raw, labels)
    squashed = BinnedMetrics(sigmoid=True)
    squashed.update(raw, labels)
    exact = exact_metrics(raw, labels)  # monotone squashing leaves exact metrics unchanged
    # the sigmoid crowds wide raw scores into the end bins: looser than BINNED_TOLERANCE
    assert squashed.compute()["ap"] == pytest.approx(exact["ap"], abs=0.005)
    threshold = squashed.threshold_at_fpr(0.05)  # in raw units
    assert np.mean(raw[labels == 0] >= threshold) <= 0.05
    assert threshold > 1.0


def test_component_metrics_on_hand_made_frame():
    label = np.zeros((20, 30), np.uint8)
    label[2:6, 2:6] = 1  # gt A, 16 px
    label[2:6, 10:14] = 1  # gt B, 16 px
    label[15, 15] = 1  # gt C, 1 px: below min_gt_size, becomes void
    label[18:20] = 255  # void rows
    score = np.zeros((20, 30), np.float32)
    score[2:6, 2:12] = 0.9  # P1: covers A and half of B, 40 px ...
    score[6, 2:4] = 0.9  # ... plus 2 px: 42 px
    score[2:5, 13] = 0.8  # P2: 3 px of B
    score[8:10, 20:26] = 0.7  # P3: false positive, 12 px
    score[12, 5] = 0.9  # P4: 1 px, below min_pred_size, dropped
    score[15, 15:18] = 0.9  # P5: 3 px, one on the voided gt C
    score[18:20] = 1.0  # predictions in void are ignored
    score[0, 0] = 0.4  # below the threshold
    metrics = ComponentMetrics("obstacle", min_pred_size=3, min_gt_size=4)
    metrics.update(score, label, threshold=0.5)
    result = metrics.compute()
    # sIoU(A) = 16 / (42 + 16 - 16 - 8 [P1 on B]) ; sIoU(B) = 11 / (45 + 16 - 11 - 16 [P1 on A])
    assert result["siou_gt"] == pytest.approx((16 / 34 + 11 / 34) / 2)
    # sIoU(P1) = 24 / (32 + 42 - 24 - 3 [B on P2]); sIoU(P2) = 3 / (16 + 3 - 3 - 8); P3, P5: 0
    assert result["ppv"] == pytest.approx((24 / 47 + 3 / 8) / 4)
    # tau .25,.30: F1 4/6; .35: 2/5; .40,.45: 2/6; .50 and above: 0
    assert result["f1_mean"] == pytest.approx((2 * 4 / 6 + 2 / 5 + 2 * 2 / 6) / 11)
    assert result["f1_25"] == pytest.approx(2 / 3) and result["f1_50"] == 0 and result["f1_75"] == 0
    assert (result["num_gt_components"], result["num_pred_components"]) == (2, 4)
    # pooled over frames: the same frame twice changes no mean
    metrics.update(torch.from_numpy(score), torch.from_numpy(label), threshold=0.5)
    assert metrics.compute()["f1_mean"] == pytest.approx(result["f1_mean"])


def test_component_track_sizes_and_degenerate_input():
    label = np.zeros((40, 40), np.uint8)
    label[5:13, 5:13] = 1  # 64 px: evaluated on the obstacle track (>= 10), void on anomaly (< 100)
    score = (label == 1).astype(np.float32)
    obstacle = ComponentMetrics("obstacle")
    obstacle.update(score, label, 0.5)
    assert obstacle.compute()["siou_gt"] == 1.0 and obstacle.compute()["f1_mean"] == 1.0
    anomaly = ComponentMetrics("anomaly")
    anomaly.update(score, label, 0.5)
    with pytest.raises(ValueError, match="100 px"):
        anomaly.compute()
    with pytest.raises(ValueError, match="track"):
        ComponentMetrics("lane")
    missed = ComponentMetrics("obstacle")
    missed.update(np.zeros_like(score), label, 0.5)
    assert missed.compute()["ppv"] is None and missed.compute()["f1_mean"] == 0.0


def test_plots_are_written(tmp_path):
    scores, labels = sample(n=20_000, seed=13)
    binned = BinnedMetrics(bins=500)
    binned.update(scores, labels)
    paths = [
        plot_pr_curve(binned, tmp_path / "pr.png", label="AP 50"),
        plot_roc_curve(binned, tmp_path / "roc.png"),
        plot_score_histogram(binned, tmp_path / "sub" / "hist.png", threshold=0.6),
    ]
    for path in paths:
        with Image.open(path) as img:
            assert img.format == "PNG" and img.width > 200 and img.height > 200


def test_percentages_and_metrics_json(tmp_path):
    metrics = {"ap": 0.5, "auprc_trapz": 0.25, "fpr95": 0.125, "auroc": 0.75, "num_pixels": 10,
               "component": {"f1_mean": 0.5, "siou_gt": 0.25, "ppv": None, "num_gt_components": 3}}
    pct = as_percentages(metrics)
    assert pct["ap"] == 50.0 and pct["fpr95"] == 12.5 and pct["num_pixels"] == 10
    assert pct["component"] == {"f1_mean": 50.0, "siou_gt": 25.0, "ppv": None, "num_gt_components": 3}
    assert metrics["ap"] == 0.5  # not modified in place
    path = write_metrics_json(tmp_path / "metrics.json", metrics, num_images=2, dataset="folder")
    data = json.loads(path.read_text())
    assert data["auroc"] == 75.0 and data["num_images"] == 2 and data["component"]["f1_mean"] == 50.0
    with pytest.raises(ValueError, match="fpr95"):
        write_metrics_json(tmp_path / "bad.json", {"ap": 0.1, "auprc_trapz": 0.1, "auroc": 0.1})
