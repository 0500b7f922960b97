"""Outlier pasting invariants: labels match pixels, scale set respected, ignore handled."""

from __future__ import annotations

import numpy as np
import pytest

from flowclas_ros.training.pasting import SCALES, PasteRecipe, fit_to, paste_outlier, save_grid


def _inputs(rng):
    inlier = np.full((60, 80, 3), 100, np.uint8)
    labels = np.zeros((60, 80), np.uint8)
    labels[:5] = 255
    outlier = rng.integers(150, 256, (120, 160, 3), dtype=np.uint8)
    mask = np.zeros((120, 160), np.uint8)
    mask[30:90, 40:120] = 254
    mask[0:10] = 255
    return inlier, labels, outlier, mask


@pytest.mark.parametrize("recipe", [PasteRecipe(), PasteRecipe.for_dataset("allo")])
def test_labels_match_pasted_pixels(recipe):
    rng = np.random.default_rng(0)
    for _ in range(20):
        inlier, labels, outlier, mask = _inputs(rng)
        s = paste_outlier(inlier, labels, outlier, mask, recipe, rng)
        assert s.scale in SCALES
        changed = np.any(s.mix != 100, axis=2)
        np.testing.assert_array_equal(changed, s.mix_labels == 1)  # every pasted pixel, and only those
        assert set(np.unique(s.mix_labels)) <= {0, 1, 255}
        # the 5 ignore rows survive (at the bottom when flipped vertically), except where pasted over
        ignored = s.mix_labels == 255
        edge_rows = np.zeros_like(ignored)
        edge_rows[:5] = edge_rows[-5:] = True
        assert not (ignored & ~edge_rows).any()
        assert ignored.sum() <= 400 <= ignored.sum() + (s.mix_labels[edge_rows] == 1).sum()
        assert (s.mix_labels == 1).sum() == (s.out_labels == 1).sum()
        # the inlier's own labels, flipped alike, with pasted pixels ignored (segmentation head)
        np.testing.assert_array_equal(s.mix_classes, np.where(s.mix_labels == 1, 255, s.mix_labels))
        bg = 255 if recipe.ignore_outlier_background else 0
        assert set(np.unique(s.out_labels)) <= {1, 255, bg}


def test_scale_set_respected_and_object_size_follows_scale():
    rng = np.random.default_rng(1)
    seen = set()
    for _ in range(60):
        inlier, labels, outlier, mask = _inputs(rng)
        s = paste_outlier(inlier, labels, outlier, mask, PasteRecipe(hflip_p=0), rng)
        seen.add(s.scale)
        expected = 60 * 80 * s.scale**2  # the object is 60 x 80 px at scale 1
        assert abs((s.out_labels == 1).sum() - expected) <= 0.15 * expected + 4 * (60 + 80) * s.scale + 4
    assert seen == set(SCALES)


def test_ignore_background_and_pad_value():
    rng = np.random.default_rng(2)
    inlier, labels, outlier, mask = _inputs(rng)
    recipe = PasteRecipe(scales=(0.25,), ignore_outlier_background=True)
    s = paste_outlier(inlier, labels, outlier, mask, recipe, rng)
    assert (s.out_labels[s.out.sum(axis=2) == 0] == 255).all()  # padding is ignore
    assert 0 not in np.unique(s.out_labels)
    keep = paste_outlier(inlier, labels, outlier, mask, PasteRecipe(scales=(0.25,)), rng)
    assert 0 in np.unique(keep.out_labels)


def test_fit_to_pads_and_crops_centred():
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    np.testing.assert_array_equal(fit_to(a, (1, 2), 9), [[5, 6]])
    padded = fit_to(a, (5, 6), 9)
    assert padded.shape == (5, 6) and (padded[1:4, 1:5] == a).all() and padded[0, 0] == 9


def test_grid_preview_is_written(tmp_path):
    rng = np.random.default_rng(3)
    samples = [paste_outlier(*_inputs(rng), PasteRecipe(), rng) for _ in range(5)]
    save_grid(samples, str(tmp_path / "grid.png"), columns=2)
    from PIL import Image

    assert Image.open(tmp_path / "grid.png").size == (2 * 160, 3 * 60)
