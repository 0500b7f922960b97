"""Algorithm 1 (mask-based score smoothing) and its region sources."""

from __future__ import annotations

import numpy as np
import pytest

from flowclas_ros.runtime.smoothing import (
    ConnectedComponents,
    Smoother,
    SmoothingError,
    Superpixels,
    build_smoother,
    smooth_labels,
    smooth_masks,
)


def algorithm_1(values: np.ndarray, bins: int = 20) -> np.ndarray:
    """The supplement's Algorithm 1 for one region with the authors' edges, the slow, obvious
    way: the fullest bin [lo, hi), mean over [lo, hi), values < lo or > hi replaced."""
    counts, edges = np.histogram(values, bins=np.linspace(values.min(), values.max(), bins + 1))
    best = counts.argmax()
    lo, hi = edges[best], edges[best + 1]
    inside = (values >= lo) & (values < hi)
    if not inside.any():
        return values
    return np.where((values < lo) | (values > hi), values[inside].mean(), values)


def test_hand_made_map_has_known_output():
    score = np.array(
        [
            [0.00, 0.12, 0.13, 0.14, 1.00],
            [0.50, 0.50, 0.90, 0.80, 0.70],
            [0.29, 0.30, 0.90, 0.05, 0.33],
        ],
        dtype=np.float32,
    )
    labels = np.array(
        [
            [1, 1, 1, 1, 1],  # bins of width 0.05: 0.12, 0.13, 0.14 share bin 2 -> others become 0.13
            [2, 2, 0, 0, 0],  # constant region: unchanged; label 0: never touched
            [3, 3, 0, 3, 3],  # 0.05..0.33: bins of 0.014; 0.29, 0.30 share bin 17 -> 0.05, 0.33 become 0.295
        ]
    )
    expected = np.array(
        [
            [0.13, 0.12, 0.13, 0.14, 0.13],
            [0.50, 0.50, 0.90, 0.80, 0.70],
            [0.29, 0.30, 0.90, 0.295, 0.295],
        ],
        dtype=np.float32,
    )
    out = smooth_labels(score, labels)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-6)
    # the same regions as boolean masks give the same result; sparse label ids too
    masks = [labels == k for k in (1, 2, 3)]
    np.testing.assert_allclose(smooth_masks(score, masks), expected, atol=1e-6)
    np.testing.assert_allclose(smooth_labels(score, labels * 1000), expected, atol=1e-6)


def test_vectorised_equals_per_region_reference():
    rng = np.random.default_rng(0)
    score = rng.beta(0.5, 2.0, (60, 80)).astype(np.float32)
    labels = rng.integers(0, 12, (60, 80))
    out = smooth_labels(score, labels)
    expected = score.astype(np.float64)
    for k in range(1, 12):
        expected[labels == k] = algorithm_1(expected[labels == k])
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert not np.allclose(out, score)


def test_overlapping_masks_apply_in_order():
    score = np.array([[0.1, 0.11, 0.9, 0.5]], np.float32)
    first, second = np.array([[1, 1, 1, 0]], bool), np.array([[0, 1, 1, 1]], bool)
    step = smooth_masks(score, [first])
    np.testing.assert_allclose(step, [[0.1, 0.11, 0.105, 0.5]], atol=1e-6)
    np.testing.assert_allclose(smooth_masks(score, [first, second]), smooth_masks(step, [second]))


def scene():
    """Two flat colour halves and a score map that is noisy around two levels."""
    rng = np.random.default_rng(1)
    rgb = np.zeros((96, 128, 3), np.uint8)
    rgb[:, 64:] = (200, 40, 40)
    score = np.where(np.arange(128) < 64, 0.2, 0.8)[None].repeat(96, 0) + rng.normal(0, 0.03, (96, 128))
    return rgb, np.clip(score, 0, 1).astype(np.float32)


def test_superpixels_follow_the_picture():
    rgb, score = scene()
    labels = Superpixels(segments=24, max_side=64).regions(rgb, score, 0.5)
    assert labels.shape == score.shape and labels.min() >= 1 and 8 <= labels.max() <= 60
    left, right = set(np.unique(labels[:, :60])), set(np.unique(labels[:, 68:]))
    assert not left & right  # no superpixel straddles the colour edge by more than a few pixels
    smoothed = build_smoother("superpixels", segments=24, max_side=64)(rgb, score, 0.5)
    assert smoothed.std() < score.std() and ((smoothed >= 0.5) == (score >= 0.5)).mean() > 0.99


def test_connected_components_label_the_mask():
    score = np.zeros((20, 20), np.float32)
    score[2:5, 2:5] = 0.9
    score[10:15, 12:18] = np.linspace(0.6, 0.95, 6)
    labels = ConnectedComponents().regions(None, score, 0.5)
    assert labels.max() == 2 and (labels > 0).sum() == 9 + 30
    smoothed = Smoother(ConnectedComponents())(None, score, 0.5)
    np.testing.assert_array_equal(smoothed[labels == 0], 0)  # outside the mask: untouched
    assert ((smoothed >= 0.5) == (score >= 0.5)).all()  # smoothing inside a component keeps it above


def test_build_smoother_names_and_errors():
    assert build_smoother("none") is None
    assert isinstance(build_smoother("components"), Smoother)
    with pytest.raises(SmoothingError, match="unknown smoothing"):
        build_smoother("watershed")
    with pytest.raises(SmoothingError, match="bad options"):
        build_smoother("superpixels", colour=3)
    with pytest.raises(SmoothingError, match="checkpoint"):
        build_smoother("sam2")


def test_sam2_masks():
    pytest.importorskip("sam2", reason="SAM 2 ('sam2' package, needs torchvision) is not installed here")
    pytest.skip("SAM 2 also needs a checkpoint file, which is not available offline")
