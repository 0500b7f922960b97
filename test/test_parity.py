"""Parity with the authors' released code (TRAILab/FlowCLAS) where it decides (issue 10).

Every test compares our implementation with an independent restatement written here in
plain torch / numpy from the formula (docs/method.md, "Parity with the authors' code"),
mostly in float64. None of these restatements import the module under test's helpers.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import randomize_head, small_config

from flowclas_ros.model import FlowCLASNet, ModelConfig
from flowclas_ros.model.flow import ActNorm, ChannelLayerNorm, Flow, ProjectionHead, ResidualSubnet, SegmentationHead
from flowclas_ros.model.network import crop_padding, pad_labels, pad_to_multiple, squash_batch
from flowclas_ros.runtime.smoothing import smooth_labels, smooth_masks
from flowclas_ros.training.objectives import (
    ObjectiveConfig,
    compute_loss,
    contrastive_loss,
    lovasz_softmax_loss,
    ml_loss,
    segmentation_loss,
)
from flowclas_ros.training.trainer import decays, parameter_groups


def _fill(module: torch.nn.Module, seed: int, scale: float = 0.3) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return module


# --------------------------------------------------------------------------- network


def _residual_reference(x, w):
    """The authors' ResidualSubnet.forward as formulas: three pre-activated convs, the skip
    (normalised only when widths differ), the sum straight into the output conv."""
    h = F.conv2d(F.relu(F.group_norm(x, 1, w["n0w"], w["n0b"], 1e-5)), w["c0"], padding=1)
    h = F.conv2d(F.relu(F.group_norm(h, 1, w["n1w"], w["n1b"], 1e-5)), w["c1"])
    h = F.conv2d(F.relu(F.group_norm(h, 1, w["n2w"], w["n2b"], 1e-5)), w["c2"], padding=1)
    skip = x if "s" not in w else F.conv2d(F.relu(F.group_norm(x, 1, w["snw"], w["snb"], 1e-5)), w["s"])
    return F.conv2d(h + skip, w["out"])


@pytest.mark.parametrize("cin,hidden", [(6, 6), (6, 4)])
def test_residual_subnet_has_no_norm_before_its_output_conv(cin, hidden):
    net = _fill(ResidualSubnet(cin, 2 * cin, hidden), 0).double()
    w = {"n0w": net.norms[0].weight, "n0b": net.norms[0].bias, "n1w": net.norms[1].weight, "n1b": net.norms[1].bias,
         "n2w": net.norms[2].weight, "n2b": net.norms[2].bias, "c0": net.convs[0].weight, "c1": net.convs[1].weight,
         "c2": net.convs[2].weight, "out": net.out.weight}
    if hidden != cin:
        w.update(snw=net.skip[0].weight, snb=net.skip[0].bias, s=net.skip[2].weight)
    x = torch.randn(2, cin, 5, 7, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(net(x), _residual_reference(x, w), rtol=1e-12, atol=1e-12)
    assert len(net.norms) == 3 and all(not conv.bias for conv in net.convs) and net.out.bias is None
    fresh = ResidualSubnet(cin, 2 * cin, hidden)
    assert torch.count_nonzero(fresh.out.weight) == 0


def test_actnorm_init_and_forward_match_the_authors():
    """FrEIA ActNorm with the authors' initialize: loc = mean, log_scale = log(unbiased std),
    a zero-spread channel takes the mean spread of the others; y = (x - loc) * exp(-log_scale)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 4, 5, 6, generator=g, dtype=torch.float64) * torch.tensor([2.0, 0.5, 1.0, 3.0]).view(1, 4, 1, 1)
    x[:, 2] = 1.5  # no spread
    act = ActNorm(4).double().train()
    y, logdet = act(x)
    mean = x.permute(1, 0, 2, 3).reshape(4, -1).mean(dim=1)
    flat = x.permute(1, 0, 2, 3).reshape(4, -1)
    std = torch.sqrt(((flat - mean[:, None]) ** 2).sum(dim=1) / (flat.shape[1] - 1))
    std[2] = (std[0] + std[1] + std[3]) / 3
    torch.testing.assert_close(act.loc.view(-1), mean)
    torch.testing.assert_close(act.log_scale.view(-1), torch.log(std))
    expected = (x - mean.view(1, 4, 1, 1)) / std.view(1, 4, 1, 1)
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(logdet, torch.full((3,), -5 * 6 * float(torch.log(std).sum()), dtype=torch.float64))
    torch.testing.assert_close(act.inverse(y), x)


def test_feature_layernorm_is_torch_layernorm_with_eps_1e5():
    norm = _fill(ChannelLayerNorm(8), 4, 1.0)
    reference = torch.nn.LayerNorm(8)
    assert reference.eps == 1e-5 and norm.eps == 1e-5
    with torch.no_grad():
        reference.weight.copy_(norm.weight.view(-1))
        reference.bias.copy_(norm.bias.view(-1))
    x = torch.randn(2, 8, 3, 4) * 1e-3  # small spread: the epsilon matters
    torch.testing.assert_close(norm(x), reference(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2), rtol=1e-5, atol=1e-6)


def test_coupling_split_rounds_like_freia():
    # FrEIA's split_len = round(C * 0.5): 6 -> 3, 7 -> 4 (half to even: 3.5 -> 4), 5 -> 2
    for channels, passive in ((6, 3), (7, 4), (5, 2)):
        flow = Flow(channels, steps=1)
        assert flow.steps[0].coupling.split == passive
        assert flow.steps[0].coupling.subnet.out.out_channels == 2 * (channels - passive)


def test_projection_head_kaiming_fan_out_and_zero_bias():
    head = ProjectionHead(512, 256)
    w = head.conv.weight.detach()
    assert torch.count_nonzero(head.conv.bias) == 0
    # kaiming normal, fan_out = 256 outputs x 1 x 1, gain sqrt(2): std sqrt(2 / 256)
    assert float(w.mean()) == pytest.approx(0.0, abs=2e-3)
    assert float(w.std()) == pytest.approx(math.sqrt(2 / 256), rel=0.02)


def test_segmentation_head_shape_and_default_init():
    head = SegmentationHead(16, 20)
    assert [type(m).__name__ for m in head] == ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d"]
    assert head[0].kernel_size == (3, 3) and head[0].out_channels == 8 and head[3].out_channels == 20
    # PyTorch's default conv init (kaiming uniform, a = sqrt(5)): |w| <= 1 / sqrt(fan_in)
    assert float(head[0].weight.detach().abs().max()) <= 1 / math.sqrt(16 * 9)
    assert float(head[0].bias.detach().abs().max()) > 0  # not zeroed: the authors' kaiming_init missed it


def test_padding_is_centred_with_black_pixels_and_crop_undoes_it():
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    image = torch.randint(0, 256, (1, 3, 31, 41)).double()
    x = (image / 255 - torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)) / torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)
    # the authors pad the 0..255 image with 0 (albumentations PadIfNeeded, centred), then normalise
    pad_rows, pad_cols = 42 - 31, 42 - 41
    top, left = pad_rows // 2, pad_cols // 2
    raw = torch.zeros(1, 3, 42, 42, dtype=torch.float64)
    raw[..., top : top + 31, left : left + 41] = image
    expected = (raw / 255 - torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)) / torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)
    black = (-torch.tensor(mean, dtype=torch.float64) / torch.tensor(std, dtype=torch.float64)).view(1, 3, 1, 1)
    padded = pad_to_multiple(x, 14, black)
    assert (top, 42 - 31 - top, left, 42 - 41 - left) == (5, 6, 0, 1)
    torch.testing.assert_close(padded, expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(padded[..., top : top + 31, left : left + 41], x)  # inside: bit for bit
    assert torch.equal(crop_padding(padded, 31, 41, 14), x)
    labels = pad_labels(torch.zeros(1, 31, 41, dtype=torch.long), 14)
    assert int(labels[0, :top].min()) == 255 and int(labels[0, -6:].min()) == 255 and int(labels[0, :, -1].min()) == 255
    assert int(labels[0, top : top + 31, : 41].max()) == 0


def test_network_pads_with_black_and_scores_the_centred_crop():
    config = small_config(mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    net = randomize_head(FlowCLASNet(config)).eval()
    m = net.encoder.pad_multiple
    h, w = 3 * m - 5, 2 * m + 3  # odd padding on both axes
    x = torch.randn(1, 3, h, w)
    ph, pw = (-h) % m, (-w) % m
    top, left = ph // 2, pw // 2
    padded = torch.full((1, 3, h + ph, w + pw), -2.0)  # black: -mean / std = -2 in every channel
    padded[..., top : top + h, left : left + w] = x
    with torch.no_grad():
        full = net.raw_score(padded)
        torch.testing.assert_close(net.raw_score(x), full[:, top : top + h, left : left + w])


def test_score_squashing_per_batch():
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    inside = torch.tensor([[0.0, 0.3, 1.0]], dtype=torch.float64)
    assert torch.equal(squash_batch(inside), inside)
    batch = torch.tensor([[0.2, 0.9, 1.4]], dtype=torch.float64)
    expected = torch.tensor([[(sig(v) - sig(0)) / (sig(1) - sig(0)) for v in (0.2, 0.9, 1.4)]], dtype=torch.float64)
    torch.testing.assert_close(squash_batch(batch), expected.clamp(0, 1))
    config = ModelConfig()
    assert config.squash == "batch_sigmoid"


# --------------------------------------------------------------------------- losses


def test_ml_loss_resizes_labels_nearest_exact():
    """Labels 0..15 on a 16-wide row resized to 5 cells: the cell centre's label decides."""
    z = torch.randn(1, 2, 1, 5, dtype=torch.float64)
    logdet = torch.tensor([1.7], dtype=torch.float64)
    from flowclas_ros.model.flow import DiagonalGaussian

    base = DiagonalGaussian(2).double()
    labels = torch.zeros(1, 1, 16, dtype=torch.long)
    labels[0, 0, 4:7] = 1  # nearest-exact reads columns floor((j + 0.5) * 16 / 5) = 1, 4, 8, 11, 14
    valid = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0], dtype=torch.float64)  # column 4 is an outlier
    # (plain nearest reads floor(j * 16 / 5) = 0, 3, 6, 9, 12: column 6, the third cell)
    logp = -math.log(2 * math.pi) - 0.5 * (z[0] ** 2).sum(dim=0)[0]
    expected = -((logp * valid).sum() + 1.7 * valid.mean())
    with torch.no_grad():
        assert float(ml_loss(z, logdet, base, labels)) == pytest.approx(float(expected), rel=1e-12)


def _their_info_nce(a, a_lab, c, c_lab, tau):
    """The authors' _info_nce restated: every anchor counts in the mean, one without
    positives adds 0."""
    same = (a_lab[:, None] == c_lab[None, :]).double()
    logits = a @ c.t() / tau
    logits = logits - logits.max(dim=1, keepdim=True).values
    neg = ((1 - same) * logits.exp()).sum(dim=1, keepdim=True)
    log_prob = logits - torch.log(logits.exp() + neg)
    pos = same.clone()
    pos[:, : a.shape[0]] -= torch.eye(a.shape[0], dtype=torch.float64)
    return float(-((pos * log_prob).sum(dim=1) / pos.sum(dim=1).clamp(min=1e-8)).mean())


def test_contrastive_k_counts_empty_outlier_pools():
    g = torch.Generator().manual_seed(5)
    emb_mix = F.normalize(torch.randn(1, 4, 2, 2, generator=g, dtype=torch.float64), dim=1)
    emb_out = F.normalize(torch.randn(1, 4, 2, 2, generator=g, dtype=torch.float64), dim=1)
    lab_mix = torch.tensor([[[1, 1], [0, 0]]])
    # an outlier image whose object fell between grid cells: K = 0, loss 0
    no_object = torch.tensor([[[0, 0], [0, 255]]])
    assert float(contrastive_loss(emb_mix, lab_mix, emb_out, no_object)) == 0.0
    # an ignored outlier-image background does not limit K: K = min(512, 2, 2, 2) = 2, every
    # pixel is used, and the order of the samples does not change the loss
    ignored_background = torch.tensor([[[1, 255], [255, 1]]])
    got = float(contrastive_loss(emb_mix, lab_mix, emb_out, ignored_background, temperature=0.1,
                                 generator=torch.Generator().manual_seed(0)))
    fm, fo = emb_mix[0].reshape(4, -1).t(), emb_out[0].reshape(4, -1).t()
    anchors = torch.stack([fm[0], fm[1], fm[2], fm[3]])
    a_lab = torch.tensor([1, 1, 0, 0])
    contrast = torch.cat([anchors, fo[[0, 3]]])
    c_lab = torch.tensor([1, 1, 0, 0, 1, 1])
    assert got == pytest.approx(_their_info_nce(anchors, a_lab, contrast, c_lab, 0.1), rel=1e-9)


def test_contrastive_anchor_without_positives_counts_as_zero():
    g = torch.Generator().manual_seed(6)
    emb_mix = F.normalize(torch.randn(1, 3, 1, 2, generator=g, dtype=torch.float64), dim=1)
    emb_out = F.normalize(torch.randn(1, 3, 1, 2, generator=g, dtype=torch.float64), dim=1)
    lab_mix = torch.tensor([[[1, 0]]])
    lab_out = torch.tensor([[[1, 255]]])  # K = 1: the inlier anchor has no positive
    got = float(contrastive_loss(emb_mix, lab_mix, emb_out, lab_out, temperature=0.13))
    fm, fo = emb_mix[0].reshape(3, -1).t(), emb_out[0].reshape(3, -1).t()
    contrast = torch.cat([fm, fo[[0]]])
    expected = _their_info_nce(fm, torch.tensor([1, 0]), contrast, torch.tensor([1, 0, 1]), 0.13)
    assert got == pytest.approx(expected, rel=1e-9)


def _their_lovasz(probs, target, classes, ignore=255):
    """Lovasz-softmax as in the authors' LovaszLoss, with Python loops over the sorted errors."""
    keep = target != ignore
    probs, target = probs[keep], target[keep]
    total = 0.0
    for c in range(classes):
        fg = (target == c).double()
        if fg.sum() == 0:
            continue
        errors = (fg - probs[:, c]).abs()
        order = torch.argsort(errors, descending=True)
        e, f = errors[order].tolist(), fg[order].tolist()
        gts = sum(f)
        jaccard, cum_fg, cum_bg = [], 0.0, 0.0
        for v in f:
            cum_fg += v
            cum_bg += 1 - v
            jaccard.append(1 - (gts - cum_fg) / (gts + cum_bg))
        grad = [jaccard[0]] + [jaccard[i] - jaccard[i - 1] for i in range(1, len(jaccard))]
        total += sum(a * b for a, b in zip(e, grad))
    return total / classes


def test_segmentation_loss_is_half_lovasz_half_cross_entropy():
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(2, 5, 3, 4, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, (2, 6, 8), generator=g)  # class 4 absent: still divides by 5
    labels[0, :2] = 255
    up = F.interpolate(logits, size=(6, 8), mode="bilinear", align_corners=False)
    probs = up.softmax(dim=1).permute(0, 2, 3, 1).reshape(-1, 5)
    lovasz = _their_lovasz(probs, labels.reshape(-1), 5)
    assert float(lovasz_softmax_loss(up, labels)) == pytest.approx(lovasz, rel=1e-9)
    logp = up.log_softmax(dim=1).permute(0, 2, 3, 1).reshape(-1, 5)
    flat = labels.reshape(-1)
    keep = flat != 255
    ce = float(-logp[keep].gather(1, flat[keep][:, None]).mean())
    assert float(segmentation_loss(logits, labels)) == pytest.approx(0.5 * lovasz + 0.5 * ce, rel=1e-9)


def test_use_seg_adds_the_head_loss_with_batchnorm_over_both_halves():
    net = randomize_head(FlowCLASNet(small_config(seg_classes=4))).train()
    g = torch.Generator().manual_seed(8)
    x_mix, x_out = torch.randn(2, 3, 64, 96, generator=g), torch.randn(2, 3, 64, 96, generator=g)
    y_mix = torch.zeros(2, 64, 96, dtype=torch.long)
    y_mix[:, 10:30, 10:40] = 1
    y_out = torch.full_like(y_mix, 255)
    y_out[:, 5:40, 5:50] = 1
    y_seg = torch.randint(0, 4, (2, 64, 96), generator=g)
    y_seg[y_mix == 1] = 255
    plain = ObjectiveConfig()
    with_seg = ObjectiveConfig(use_seg=True)
    loss0, _ = compute_loss(net, x_mix, y_mix, x_out, y_out, plain, torch.Generator().manual_seed(0))
    state = {k: v.clone() for k, v in net.seg_head.state_dict().items()}
    loss1, parts = compute_loss(net, x_mix, y_mix, x_out, y_out, with_seg, torch.Generator().manual_seed(0), labels_seg=y_seg)
    # the same term by hand: the head on the whole batch's last latent, loss on the mixed half
    net.seg_head.load_state_dict(state)
    z_last = net.latents(net.features(torch.cat([x_mix, x_out])))[-1][0]
    expected = segmentation_loss(net.seg_head(z_last)[:2], y_seg)
    assert float((loss1 - loss0).detach()) == pytest.approx(float(expected.detach()), rel=1e-4)
    assert parts["segmentation"] == pytest.approx(float(expected.detach()), rel=1e-4)


# --------------------------------------------------------------------------- optimiser


def test_weight_decay_follows_the_authors_name_rule():
    net = randomize_head(FlowCLASNet(small_config(seg_classes=3)))
    names = {n for n, p in net.named_parameters() if p.requires_grad}
    decayed = {n for n in names if decays(n)}
    assert decayed == {n for n in names
                       if n.startswith("bases.") or (n.endswith(".weight") and n.startswith(("projections.", "seg_head.")))}
    assert "seg_head.1.weight" in decayed  # BatchNorm weight: "seg_heads.0.1.weight" has no "norm"
    groups = parameter_groups(net, 1e-5)
    assert groups[0]["weight_decay"] == 1e-5 and groups[1]["weight_decay"] == 0.0
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(
        p.numel() for p in net.parameters() if p.requires_grad)


# --------------------------------------------------------------------------- smoothing


def _their_smoothing(score, masks, bins=20):
    """The authors' post_process_w_sam_masks restated (numpy, float32 map, one mask at a time)."""
    out = score.copy()
    for mask in masks:
        values = out[mask]
        edges = np.linspace(values.min(), values.max(), bins + 1)
        hist, edges = np.histogram(values, bins=edges)
        k = int(np.argmax(hist))
        lo, hi = edges[k], edges[k + 1]
        mode = values[(values >= lo) & (values < hi)]
        if len(mode) > 0:
            replace = mask & ((out < np.float32(lo)) | (out > np.float32(hi)))
            out[replace] = np.float32(mode.mean())
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_smoothing_uses_the_authors_bin_edges(seed):
    rng = np.random.default_rng(seed)
    # scores on a coarse grid: many values sit exactly on bin edges and on the maximum
    score = (rng.integers(0, 41, (30, 40)) / 40).astype(np.float32)
    labels = rng.integers(1, 6, (30, 40))
    masks = [labels == k for k in range(1, 6)]
    expected = _their_smoothing(score, masks)
    np.testing.assert_allclose(smooth_labels(score, labels), expected, rtol=0, atol=2e-7)
    np.testing.assert_allclose(smooth_masks(score, masks), expected, rtol=0, atol=2e-7)


def test_smoothing_keeps_values_equal_to_the_upper_edge():
    # 20 bins over 0..1: fullest bin is the last, [0.95, 1.0); the value 1.0 is neither
    # replaced nor part of the mean
    values = np.array([0.0, 0.96, 0.97, 1.0], dtype=np.float32)
    out = smooth_labels(values.reshape(1, 4), np.ones((1, 4), np.int64)).ravel()
    np.testing.assert_allclose(out, [0.965, 0.96, 0.97, 1.0], atol=1e-7)
