"""The ROS-free detector: any frame size in, maps at that size out; hazards; input checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flowclas_ros.errors import UserError
from flowclas_ros.runtime import Detector, find_hazards


@pytest.fixture
def detector(small_net):
    return Detector(small_net, threshold=0.5, min_area=3)


@pytest.mark.parametrize("shape", [(64, 96, 3), (37, 51, 3), (120, 80, 3), (40, 60), (40, 60, 1), (40, 60, 4)])
def test_score_has_frame_size_and_unit_range(detector, shape):
    frame = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    score = detector.score(frame)
    assert score.shape == shape[:2] and score.dtype == np.float32
    assert 0.0 <= score.min() and score.max() <= 1.0


def test_batch_equals_single_frames(detector):
    frames = np.random.default_rng(1).integers(0, 256, (3, 64, 96, 3), dtype=np.uint8)
    batch = detector.score(frames)
    singles = np.stack([detector.score(f) for f in frames])
    np.testing.assert_allclose(batch, singles, atol=1e-5)
    assert len(detector.detect_batch(frames)) == 3


def test_score_equals_network_on_model_sized_frame(detector, small_net):
    frame = np.random.default_rng(2).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    x = torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255
    mean, std = torch.tensor(small_net.config.mean), torch.tensor(small_net.config.std)
    with torch.no_grad():
        expected = small_net((x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1))[0].numpy()
    np.testing.assert_allclose(detector.score(frame), expected, atol=1e-6)


def test_detect_mask_follows_threshold(detector):
    frame = np.random.default_rng(3).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    det = detector.detect(frame)
    np.testing.assert_array_equal(det.mask, det.score >= 0.5)
    detector.threshold = 0.0
    assert detector.detect(frame).mask.all()
    with pytest.raises(UserError, match="threshold"):
        detector.threshold = 1.5


@pytest.mark.parametrize(
    "bad,message",
    [
        (np.zeros((10, 10, 3), np.float32), "uint8"),
        (np.zeros((0, 10, 3), np.uint8), "outside"),
        (np.zeros((2, 2, 10, 10, 3), np.uint8), "shape"),
        ([[1, 2]], "numpy"),
    ],
)
def test_bad_frames_are_rejected_clearly(detector, bad, message):
    with pytest.raises(UserError, match=message):
        detector.score(bad)


def test_bf16_precision_runs_close_to_fp32(small_net):
    frame = np.random.default_rng(4).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    fp32 = Detector(small_net).score(frame)
    bf16 = Detector(small_net, precision="bf16").score(frame)
    assert np.abs(fp32 - bf16).max() < 0.1


def test_hazards_boxes_areas_peaks_and_min_area():
    score = np.zeros((20, 30), np.float32)
    score[2:6, 3:8] = 0.9  # 20 px
    score[4, 5] = 0.95
    score[10:12, 20:21] = 0.7  # 2 px
    score[15, 15] = 0.8
    score[16, 16] = 0.8  # diagonal neighbour: one 8-connected region of 2 px
    hazards = find_hazards(score > 0.5, score, min_area=0)
    assert [(h.x, h.y, h.width, h.height, h.area) for h in hazards] == [
        (3, 2, 5, 4, 20),
        (15, 15, 2, 2, 2),
        (20, 10, 1, 2, 2),
    ]
    assert hazards[0].peak_score == pytest.approx(0.95)
    assert [h.area for h in find_hazards(score > 0.5, score, min_area=3)] == [20]
