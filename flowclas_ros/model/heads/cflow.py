"""The ``cflow`` head: CFLOW-AD's conditional flow on individual feature vectors.

Per feature scale, a flow of ``flow.steps`` coupling blocks (:class:`CouplingBlock`) maps each
LayerNorm-ed feature vector to a latent vector, conditioned on a 2D sinusoidal encoding of
the vector's grid position. The subnet of every block is CFLOW-AD's fully connected
``Linear(d -> hidden) - ReLU - Linear(hidden -> 2 * (C // 2))`` on ``d = |x1| + condition_dim``
inputs (x1 and the condition concatenated), ``hidden = hidden_ratio * d`` (2d in the paper).

Training evaluates the flow on sampled vectors (``vectors``, ``N x C x 1 x 1``); inference on
whole maps, where a fully connected layer on every vector is a 1x1 convolution, so the
exported graph is dense. Both paths are the same modules and give the same numbers.

Score (method.md section 4): per scale the per-dimension log-likelihood
``log p = (log N(z) + logdet) / C``, ``exp(log p - reference)`` with the reference clamped
from above at 1, bilinearly upsampled, averaged over scales, ``1 - mean``: in [0, 1]. The
paper takes the reference as the largest log-likelihood over the evaluated set; a frame-rate
detector cannot wait for the set, so the reference is a buffer learnt during training
(an EMA of the largest per-dimension log-likelihood among each step's inlier vectors).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowclas_ros.model.config import ModelConfig
from flowclas_ros.model.flow import ChannelLayerNorm, DiagonalGaussian, ProjectionHead
from flowclas_ros.model.heads.blocks import CouplingBlock, sinusoid


class Condition(NamedTuple):
    """The positional condition in separable form: encodings of the columns and of the rows.

    grid True: ``cols`` is ``W x D/2`` and ``rows`` ``H x D/2`` (a whole ``H x W`` map);
    grid False: both are ``N x D/2``, one row per sampled vector.
    """

    cols: Tensor
    rows: Tensor
    grid: bool


def frozen_layer_norm(channels: int) -> ChannelLayerNorm:
    """A per-pixel LayerNorm without trainable affine (docs/heads.md: a trainable scale
    outside the flow would let the likelihood grow without any change of the flow)."""
    return ChannelLayerNorm(channels).requires_grad_(False)


class ConditionalSubnet(nn.Module):
    """``Linear(cin + condition_dim -> hidden) - ReLU - Linear(hidden -> cout)``, as 1x1 convs.

    The first layer is kept in two parts, ``inp`` (acting on x1, with the bias) and ``cond``
    (acting on the condition): one linear layer on the concatenation, initialised like
    ``nn.Linear(cin + condition_dim, hidden)``. Because the encoding's first half depends on
    the column only and its second half on the row only, ``cond(P(y, x))`` is the sum of
    ``cond_cols(enc(x))`` and ``cond_rows(enc(y))``: per map, ``hidden x (H + W)`` work
    instead of ``hidden x condition_dim x H x W``.
    """

    def __init__(self, cin: int, cout: int, condition_dim: int, hidden: int) -> None:
        super().__init__()
        self.inp = nn.Conv2d(cin, hidden, 1)
        self.cond = nn.Linear(condition_dim, hidden, bias=False)
        self.out = nn.Conv2d(hidden, cout, 1)
        bound = 1.0 / math.sqrt(cin + condition_dim)
        with torch.no_grad():
            for p in (self.inp.weight, self.inp.bias, self.cond.weight):
                p.uniform_(-bound, bound)

    def condition(self, condition: Condition) -> Tensor:
        """The condition's contribution to the first layer, broadcastable to its output."""
        half = condition.cols.shape[1]
        weight = self.cond.weight
        cols = condition.cols @ weight[:, :half].t()
        rows = condition.rows @ weight[:, half:].t()
        if condition.grid:
            return (rows[:, None, :] + cols[None, :, :]).permute(2, 0, 1).unsqueeze(0)
        return (cols + rows)[:, :, None, None]

    def forward(self, x1: Tensor, condition: Condition) -> Tensor:
        """The subnet's output (or the flow's latent and log-det) for ``x`` under ``condition``."""
        return self.out(F.relu(self.inp(x1) + self.condition(condition)))


class ConditionalFlow(nn.Module):
    """The conditional flow of one scale; ``forward`` / ``inverse`` on ``B x C x H x W`` with a
    :class:`Condition`, the log-det per pixel (``B x H x W``)."""

    def __init__(self, channels: int, steps: int, hidden_ratio: float, clamp: float,
                 condition_dim: int, seed: int) -> None:
        super().__init__()
        passive = channels - channels // 2
        hidden = max(1, int(round(hidden_ratio * (passive + condition_dim))))
        self.condition_dim = condition_dim
        self.blocks = nn.ModuleList(
            CouplingBlock(channels, ConditionalSubnet(passive, 2 * (channels // 2), condition_dim, hidden),
                          clamp, seed * 1000 + i)
            for i in range(steps)
        )

    def grid_condition(self, x: Tensor) -> Condition:
        """The condition of every cell of ``x``'s ``H x W`` grid."""
        h, w = x.shape[-2:]
        half = self.condition_dim // 2
        cols = sinusoid(torch.arange(w, dtype=x.dtype, device=x.device), half)
        rows = sinusoid(torch.arange(h, dtype=x.dtype, device=x.device), half)
        return Condition(cols, rows, True)

    def point_condition(self, rows: Tensor, cols: Tensor, dtype: torch.dtype) -> Condition:
        """The condition of the cells ``(rows[i], cols[i])``."""
        half = self.condition_dim // 2
        return Condition(sinusoid(cols.to(dtype), half), sinusoid(rows.to(dtype), half), False)

    def forward(self, x: Tensor, condition: Condition) -> tuple[Tensor, Tensor]:
        """The subnet's output (or the flow's latent and log-det) for ``x`` under ``condition``."""
        logdet = x.new_zeros(x.shape[0], x.shape[2], x.shape[3])
        for block in self.blocks:
            x, ld = block(x, condition)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, z: Tensor, condition: Condition) -> Tensor:
        """Invert :meth:`forward` exactly."""
        for block in reversed(self.blocks):
            z = block.inverse(z, condition)
        return z

    def map(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(z, logdet)`` of every vector of the map ``x``."""
        return self(x, self.grid_condition(x))

    def vectors(self, v: Tensor, rows: Tensor, cols: Tensor) -> tuple[Tensor, Tensor]:
        """``(z N x C, logdet N)`` of vectors ``v`` (``N x C``) found at cells ``(rows, cols)``."""
        z, logdet = self(v[:, :, None, None], self.point_condition(rows, cols, v.dtype))
        return z[:, :, 0, 0], logdet[:, 0, 0]


class CFlowHead(nn.Module):
    """Frozen LayerNorm, conditional flow, base distribution and projection per scale."""

    def __init__(self, config: ModelConfig, channels: list[int], strides: list[int]) -> None:
        super().__init__()
        fc, options = config.flow, config.cflow
        assert options is not None  # ModelConfig fills it for head "cflow"
        self.score_variant = config.score
        self.momentum = options.reference_momentum
        self.norms = nn.ModuleList(frozen_layer_norm(c) for c in channels)
        self.flows = nn.ModuleList(
            ConditionalFlow(c, fc.steps, fc.hidden_ratio, fc.clamp, options.condition_dim, fc.seed + i)
            for i, c in enumerate(channels)
        )
        self.bases = nn.ModuleList(DiagonalGaussian(c, fc.learnable_base) for c in channels)
        self.projections = nn.ModuleList(
            ProjectionHead(c, config.projection_dim) for c in channels if config.projection_dim
        )
        self.register_buffer("reference", torch.zeros(len(channels)))
        self.register_buffer("observed", torch.zeros(len(channels), dtype=torch.bool))

    @staticmethod
    def per_dimension(base: DiagonalGaussian, z: Tensor, logdet: Tensor) -> Tensor:
        """``(log N(z) + logdet) / C``: ``z`` is ``B x C x H x W`` (or ``N x C x 1 x 1``)."""
        return (base.log_density(z) + logdet) / z.shape[1]

    def maps(self, feats: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
        """Per scale: ``(z, per-dimension log-likelihood B x h x w)`` of whole maps."""
        out = []
        for f, norm, flow, base in zip(feats, self.norms, self.flows, self.bases):
            z, logdet = flow.map(norm(f))
            out.append((z, self.per_dimension(base, z, logdet)))
        return out

    def latents(self, feats: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
        """Per scale: ``(z, log-det per sample)`` like the conv-flow heads."""
        out = []
        for f, norm, flow in zip(feats, self.norms, self.flows):
            z, logdet = flow.map(norm(f))
            out.append((z, logdet.sum(dim=(1, 2))))
        return out

    def score(self, feats: list[Tensor], size: tuple[int, int]) -> Tensor:
        """Unsquashed score ``B x H x W`` at ``size`` (the padded input size)."""
        values = []
        for i, (_, logp) in enumerate(self.maps(feats)):
            relative = logp - self.reference[i].to(logp.dtype)
            value = torch.exp(relative.clamp(max=0.0)) if self.score_variant == "prob" else relative
            values.append(F.interpolate(value[:, None], size=size, mode="bilinear", align_corners=False))
        mean = torch.cat(values, dim=1).mean(dim=1)
        return 1.0 - mean if self.score_variant == "prob" else -mean

    @torch.no_grad()
    def observe(self, scale: int, logp: Tensor) -> None:
        """Training: move scale ``scale``'s reference towards the largest of ``logp`` (EMA)."""
        if logp.numel() == 0:
            return
        peak = logp.detach().max().to(self.reference.dtype)
        if not bool(self.observed[scale]):
            self.reference[scale] = peak
            self.observed[scale] = True
        else:
            self.reference[scale] = self.momentum * self.reference[scale] + (1 - self.momentum) * peak
