"""Objectives: hand-computed values on small tensors, finite gradients through the network."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flowclas_ros.model.flow import DiagonalGaussian
from flowclas_ros.model.network import pad_to_multiple
from flowclas_ros.training.objectives import (
    ObjectiveConfig,
    compute_loss,
    contrastive_loss,
    ml_loss,
    outlier_nll_loss,
    supcon_loss,
)


def test_ml_loss_by_hand():
    base = DiagonalGaussian(2)
    z = torch.tensor([[[[1.0, 0.0], [2.0, 0.5]], [[0.0, 1.0], [1.0, -1.0]]]])  # 1 x 2 x 2 x 2
    labels = torch.tensor([[[0, 255], [0, 1]]])
    logdet = torch.tensor([3.0])
    c = -math.log(2 * math.pi)  # -C/2 log(2 pi) with C = 2
    # inlier pixels (0,0): z = (1, 0); (1,0): z = (2, 1)
    expected = -((c - 0.5 * 1) + (c - 0.5 * 5) + 3.0 * 0.5)
    assert ml_loss(z, logdet, base, labels).item() == pytest.approx(expected, rel=1e-6)


def _supcon_reference(anchors, a_lab, contrast, c_lab, tau):
    """Straight loops over the formula of docs/method.md section 3."""
    total, counted = 0.0, 0
    for i in range(len(anchors)):
        sims = [float(np.dot(anchors[i], c)) / tau for c in contrast]
        pos = [j for j in range(len(contrast)) if c_lab[j] == a_lab[i] and j != i]
        neg = [j for j in range(len(contrast)) if c_lab[j] != a_lab[i]]
        if not pos:
            continue
        neg_sum = sum(math.exp(sims[j]) for j in neg)
        terms = [math.log(math.exp(sims[p]) / (math.exp(sims[p]) + neg_sum)) for p in pos]
        total += -sum(terms) / len(terms)
        counted += 1
    return total / counted


def test_supcon_matches_reference_loops():
    g = torch.Generator().manual_seed(0)
    anchors = F.normalize(torch.randn(6, 4, generator=g), dim=1)
    extra = F.normalize(torch.randn(5, 4, generator=g), dim=1)
    a_lab = torch.tensor([1, 1, 1, 0, 0, 0])
    e_lab = torch.tensor([1, 1, 0, 0, 0])
    contrast, c_lab = torch.cat([anchors, extra]), torch.cat([a_lab, e_lab])
    got = supcon_loss(anchors, a_lab, contrast, c_lab, 0.13).item()
    expected = _supcon_reference(anchors.numpy(), a_lab.numpy(), contrast.numpy(), c_lab.numpy(), 0.13)
    assert got == pytest.approx(expected, rel=1e-5)


def test_contrastive_loss_uses_all_pixels_when_pools_equal_k():
    g = torch.Generator().manual_seed(1)
    emb_mix = F.normalize(torch.randn(1, 3, 2, 2, generator=g), dim=1)
    emb_out = F.normalize(torch.randn(1, 3, 2, 2, generator=g), dim=1)
    lab_mix = torch.tensor([[[1, 1], [0, 0]]])
    lab_out = torch.tensor([[[0, 1], [255, 0]]])  # pools: 1 outlier, 2 inlier -> K = 1
    loss = contrastive_loss(emb_mix, lab_mix, emb_out, lab_out, temperature=0.1, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
    # K = 1: one outlier and one inlier anchor; check against the reference for every choice
    flat_mix, flat_out = emb_mix[0].reshape(3, -1).t(), emb_out[0].reshape(3, -1).t()
    candidates = []
    for o in (0, 1):
        for i in (2, 3):
            for oi in (0, 3):
                anchors = torch.stack([flat_mix[o], flat_mix[i]])
                contrast = torch.cat([anchors, flat_out[[1]], flat_out[[oi]]])
                labels = np.array([1, 0, 1, 0])
                candidates.append(_supcon_reference(anchors.numpy(), labels[:2], contrast.numpy(), labels, 0.1))
    assert min(abs(loss.item() - c) for c in candidates) < 1e-5


def test_contrastive_loss_is_zero_without_outliers():
    emb = F.normalize(torch.randn(1, 3, 2, 2), dim=1)
    zeros = torch.zeros(1, 2, 2, dtype=torch.long)
    assert contrastive_loss(emb, zeros, emb, zeros).item() == 0.0


def test_outlier_nll_by_hand():
    base = DiagonalGaussian(2)
    z = torch.zeros(1, 2, 1, 2)
    z[0, :, 0, 1] = torch.tensor([3.0, 3.0])
    labels = torch.tensor([[[0, 1]]])
    logdet = torch.tensor([0.4])
    c = -math.log(2 * math.pi)
    per_dim = lambda sq: (c - 0.5 * sq + 0.4 / 2) / 2  # noqa: E731
    inlier, outlier = per_dim(0.0), per_dim(18.0)
    assert outlier_nll_loss(z, logdet, base, labels, epsilon=-100).item() == pytest.approx(-inlier + outlier, rel=1e-6)
    # below epsilon the outlier term is flat: it contributes epsilon and no gradient
    assert outlier_nll_loss(z, logdet, base, labels, epsilon=0.0).item() == pytest.approx(-inlier + 0.0, rel=1e-6)


@pytest.mark.parametrize("name", ["flowclas", "ml", "outlier_nll"])
def test_gradients_are_finite_through_the_network(small_net, name):
    net = small_net.train()
    g = torch.Generator().manual_seed(2)
    x_mix = pad_to_multiple(torch.randn(2, 3, 64, 96, generator=g), net.encoder.pad_multiple)
    x_out = pad_to_multiple(torch.randn(2, 3, 64, 96, generator=g), net.encoder.pad_multiple)
    labels_mix = torch.zeros(2, *x_mix.shape[-2:], dtype=torch.long)
    labels_mix[:, 10:40, 20:60] = 1
    labels_out = torch.full_like(labels_mix, 255)
    labels_out[:, 5:50, 5:50] = 1
    loss, parts = compute_loss(net, x_mix, labels_mix, x_out, labels_out, ObjectiveConfig(name=name), g)
    loss.backward()
    grads = [p.grad for n, p in net.named_parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(gr).all() for gr in grads)
    assert any(gr.abs().sum() > 0 for gr in grads)
    assert not any(p.grad is not None for p in net.encoder.parameters())
    assert parts[{"flowclas": "contrastive", "ml": "ml", "outlier_nll": "outlier_nll"}[name]] != 0.0
