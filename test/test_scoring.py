"""Scoring formulas of docs/method.md 2.4-2.5 on hand-computed tensors, and pixel alignment."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import norm

from flowclas_ros.model import FlowCLASNet, FlowConfig, ModelConfig
from flowclas_ros.model.encoders import Encoder
from flowclas_ros.model.flow import DiagonalGaussian


class PlusMinusEncoder(Encoder):
    """Test encoder: channel 0 of the input average-pooled by each stride, as [v, -v]."""

    def __init__(self, strides=(1, 2), pad_multiple=2):
        super().__init__()
        self.strides = list(strides)
        self.channels = [2] * len(strides)
        self.pad_multiple = pad_multiple

    def forward(self, x):
        out = []
        for s in self.strides:
            v = F.avg_pool2d(x[:, :1], s) if s > 1 else x[:, :1]
            out.append(torch.cat([v, -v], dim=1))
        return out


def _net(score="prob", strides=(1, 2), pad_multiple=2, squash="clamp", mean=None, std=None):
    extra = {} if mean is None else {"mean": mean, "std": std}
    config = ModelConfig(flow=FlowConfig(steps=1), score=score, squash=squash, projection_dim=0, **extra)
    return FlowCLASNet(config, encoder=PlusMinusEncoder(strides, pad_multiple)).eval()


def test_training_log_density_is_the_gaussian_log_pdf():
    base = DiagonalGaussian(3)
    with torch.no_grad():
        base.mu.copy_(torch.tensor([0.5, -1.0, 2.0]).view(1, 3, 1, 1))
        base.ls.copy_(torch.tensor([0.1, -0.3, 0.7]).view(1, 3, 1, 1))
    z = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    mu, sigma = base.mu.detach().double().numpy(), np.exp(base.ls.detach().double().numpy())
    expected = norm.logpdf(z.numpy(), mu, sigma).sum(axis=1)
    np.testing.assert_allclose(base.double().log_density(z).detach().numpy(), expected, rtol=1e-10)


def test_scoring_log_density_is_channel_mean_without_constant():
    base = DiagonalGaussian(2)
    with torch.no_grad():
        base.mu.copy_(torch.tensor([1.0, 0.0]).view(1, 2, 1, 1))
        base.ls.copy_(torch.tensor([math.log(2.0), 0.0]).view(1, 2, 1, 1))
    z = torch.tensor([3.0, 2.0]).view(1, 2, 1, 1)
    # u = ((3-1)/2, 2/1) = (1, 2); mean(-u^2/2 - ls) = mean(-0.5 - ln2, -2) = (-2.5 - ln 2) / 2
    expected = (-2.5 - math.log(2.0)) / 2
    assert base.score_log_density(z).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("variant", ["prob", "logp"])
def test_score_map_matches_formula(variant):
    net = _net(score=variant)
    with torch.no_grad():
        for base in net.bases:
            base.mu.copy_(torch.tensor([0.2, -0.1]).view(1, 2, 1, 1))
            base.ls.copy_(torch.tensor([0.3, -0.2]).view(1, 2, 1, 1))
    x = torch.randn(1, 3, 6, 8)
    got = net.raw_score(x)
    mu = torch.tensor([0.2, -0.1]).view(1, 2, 1, 1)
    ls = torch.tensor([0.3, -0.2]).view(1, 2, 1, 1)
    per_scale = []
    for i, stride in enumerate((1, 2)):
        z = net.norms[i](PlusMinusEncoder([stride])(x)[0])
        z = z[:, net.flows[i].steps[0].permute.perm]  # a fresh flow only permutes channels
        logp = (-0.5 * ((z - mu) * torch.exp(-ls)) ** 2 - ls).mean(dim=1, keepdim=True)
        value = logp.exp() if variant == "prob" else logp
        per_scale.append(F.interpolate(value, size=(6, 8), mode="bilinear", align_corners=False))
    mean = torch.cat(per_scale, dim=1).mean(dim=1)
    expected = 1 - mean if variant == "prob" else -mean
    torch.testing.assert_close(got, expected)


def test_forward_squashes_into_unit_interval():
    x = torch.randn(1, 3, 6, 8) * 5
    clamp, sigmoid = _net(score="logp"), _net(score="logp", squash="sigmoid")
    raw = clamp.raw_score(x)
    torch.testing.assert_close(clamp(x), raw.clamp(0, 1))
    torch.testing.assert_close(sigmoid(x), torch.sigmoid(raw))


# 50 x 70 pads (centred) to 56 x 72: 3 rows on top, 1 column on the left, so cells of the
# stride-8 grid start at rows 13, 21, ... and columns 7, 15, ... of the frame
@pytest.mark.parametrize("size,bump", [((50, 70), (13, 39)), ((50, 70), (37, 55)), ((64, 64), (0, 0))])
def test_feature_bump_lands_on_its_pixels(size, bump):
    """A feature bump (anomalous cell) scores highest where it is, after padding and cropping."""
    # mean 0 / std 1: the black padding pixel is 0 in normalised units, like the background
    net = _net(strides=(8,), pad_multiple=8, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    x = torch.zeros(1, 3, *size)
    r, c = bump
    x[:, 0, r : r + 8, c : c + 8] = 1.0  # one 8x8 feature cell, aligned with the stride
    score = net(x)[0]
    assert score.shape == size
    peak = np.unravel_index(int(score.argmax()), size)
    assert r <= peak[0] < r + 8 and c <= peak[1] < c + 8
    inside = score[r + 3 : r + 5, c + 3 : c + 5].min()
    far = score[(r + 32) % size[0], (c + 32) % size[1]]
    assert inside > far + 0.3
