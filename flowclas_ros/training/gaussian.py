"""A closed-form baseline: one Gaussian (mean, full covariance) per feature scale, no training.

The reference every trained head must beat. Per scale, the raw encoder features (no
LayerNorm) of all inlier training pixels give a mean and a full covariance (shrunk by a
small ridge so it inverts); a pixel's score is its squared Mahalanobis distance, bilinearly
upsampled to the padded input size and summed over scales, then squashed into [0, 1] by
``d / (d + D)`` with ``D`` the total feature dimension (the expected distance of an inlier),
a monotone map that leaves the exact metrics unchanged.

``GaussianScorer`` is a score-map module like ``FlowCLASNet`` (normalised ``B x 3 x H x W``
in, ``B x H x W`` in [0, 1] out, a ``config``), so ``runtime.Detector`` and
``training.evaluate`` run it unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowclas_ros.model.config import ModelConfig
from flowclas_ros.model.encoders import Encoder, build_encoder
from flowclas_ros.model.network import pad_to_multiple

log = logging.getLogger(__name__)


def _offset(h: int, w: int, multiple: int) -> tuple[int, int]:
    """Where ``pad_to_multiple`` puts an ``h x w`` image inside its padded canvas."""
    mark = pad_to_multiple(torch.ones(1, 1, h, w), multiple)[0, 0]
    rows, cols = mark.any(1).nonzero()[:, 0], mark.any(0).nonzero()[:, 0]
    return int(rows[0]), int(cols[0])


def _valid_grid(labels: np.ndarray | None, size: tuple[int, int], multiple: int, grid: tuple[int, int]) -> Tensor | None:
    """Inlier pixels (label 0) of ``labels`` resized to ``size``, padded like images, on ``grid``."""
    if labels is None:
        return None
    lab = torch.from_numpy(np.asarray(labels, np.uint8).copy())[None, None].float()
    lab = F.interpolate(lab, size=size, mode="nearest")
    inlier = pad_to_multiple((lab == 0).float(), multiple)  # padding is 0: not inlier
    return F.interpolate(inlier, size=grid, mode="nearest").reshape(-1) > 0.5


class GaussianScorer(nn.Module):
    """Frozen encoder + per-scale (mean, precision matrix); ``forward`` as ``FlowCLASNet``'s."""

    def __init__(self, config: ModelConfig, means: list[Tensor], precisions: list[Tensor],
                 encoder: Encoder | None = None) -> None:
        super().__init__()
        self.config = config
        self.encoder = encoder if encoder is not None else build_encoder(config.encoder)
        for i, (m, p) in enumerate(zip(means, precisions)):
            self.register_buffer(f"mean{i}", m.float().clone())
            self.register_buffer(f"precision{i}", p.float().clone())
        self.scales = len(means)
        self.dims = float(sum(m.numel() for m in means))

    def distance(self, x: Tensor) -> Tensor:
        """Summed squared Mahalanobis distance ``B x H x W`` (input size) of a normalised batch."""
        h, w = x.shape[-2:]
        padded = pad_to_multiple(x, self.encoder.pad_multiple)
        top, left = _offset(h, w, self.encoder.pad_multiple)
        total = x.new_zeros(x.shape[0], *padded.shape[-2:])
        for i, f in enumerate(self.encoder(padded)):
            mean, precision = getattr(self, f"mean{i}"), getattr(self, f"precision{i}")
            d = f - mean.view(1, -1, 1, 1)
            m = torch.einsum("bchw,cd,bdhw->bhw", d, precision, d)
            total = total + F.interpolate(m[:, None], size=padded.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        return total[:, top : top + h, left : left + w]

    def forward(self, x: Tensor) -> Tensor:
        """Score map ``B x H x W`` in [0, 1]: ``d / (d + D)``."""
        d = self.distance(x).clamp(min=0.0)
        return d / (d + self.dims)


@torch.no_grad()
def fit_gaussian(config: ModelConfig, images: Sequence, ridge: float = 0.01, batch: int = 4,
                 encoder: Encoder | None = None) -> GaussianScorer:
    """Fit the per-scale Gaussians on ``images`` (items ``(image, labels, ...)`` or H x W x 3 uint8).

    Images are resized to ``config.encoder.input_size`` as the detector does; pixels whose
    label is not 0 (ignore, outlier) on a scale's grid are left out. ``ridge``: added to the
    covariance diagonal, as a fraction of its mean variance.
    """
    from flowclas_ros.runtime.detector import Detector

    encoder = encoder if encoder is not None else build_encoder(config.encoder)
    encoder.eval()
    prep = Detector(GaussianScorer(config, [torch.zeros(c) for c in encoder.channels],
                                   [torch.eye(c) for c in encoder.channels], encoder))
    sums = [torch.zeros(c, dtype=torch.float64) for c in encoder.channels]
    outer = [torch.zeros(c, c, dtype=torch.float64) for c in encoder.channels]
    counts = [0] * len(encoder.channels)

    def items():
        for item in images:
            if isinstance(item, np.ndarray):
                yield item, None
            else:
                yield item[0], item[1]

    pending: list[tuple[np.ndarray, np.ndarray | None]] = []

    def flush() -> None:
        x = torch.cat([prep.preprocess(np.ascontiguousarray(img)[None]) for img, _ in pending])
        feats = encoder(pad_to_multiple(x, encoder.pad_multiple))
        for s, f in enumerate(feats):
            for j, (_, labels) in enumerate(pending):
                v = f[j].reshape(f.shape[1], -1).t().double()
                keep = _valid_grid(labels, tuple(x.shape[-2:]), encoder.pad_multiple, tuple(f.shape[-2:]))
                if keep is not None:
                    v = v[keep]
                sums[s] += v.sum(0)
                outer[s] += v.t() @ v
                counts[s] += v.shape[0]
        pending.clear()

    for image, labels in items():
        pending.append((image, labels))
        if len(pending) == batch:
            flush()
    if pending:
        flush()
    if min(counts) < 2:
        raise ValueError("fit_gaussian needs inlier pixels from at least one image")
    means, precisions = [], []
    for s in range(len(counts)):
        mean = sums[s] / counts[s]
        cov = outer[s] / counts[s] - torch.outer(mean, mean)
        cov = cov * counts[s] / max(1, counts[s] - 1)
        cov = cov + ridge * cov.diagonal().mean() * torch.eye(cov.shape[0], dtype=cov.dtype)
        means.append(mean.float())
        precisions.append(torch.linalg.inv(cov).float())
        log.info("gaussian scale %d: %d pixels, %d channels", s, counts[s], cov.shape[0])
    return GaussianScorer(config, means, precisions, encoder)
