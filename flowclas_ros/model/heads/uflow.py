"""The ``uflow`` head: U-Flow's U-shaped multi-scale flow (Tailanian et al., 2022).

The flow runs from the coarsest feature scale to the finest. At each scale a stage of
``flow.steps`` coupling blocks (:class:`CouplingBlock`, convolutional subnets
``conv k - ReLU - conv k`` with k alternating 3, 1, ...) transforms its input; except at the
finest scale, the stage's output is split along channels: the second part is that scale's
latent, the first part (about half, a multiple of ``r^2``) is moved to the next finer grid by
a pixel shuffle (factor ``r``, the stride ratio between the two scales: channels / r^2, height
and width * r; volume preserving, log-det 0) and concatenated after that scale's features as
the input of its stage. The finest stage's whole output is the finest latent. The whole map
``features -> latents`` is one bijection with one log-determinant per sample.

Score (U-Flow's likelihood map): per scale ``exp(-1/2 * mean_c z^2)`` (the scoring
log-density of the standard-normal base), bilinearly upsampled, ``1 - mean over scales``.

Objectives: the total log-det is shared out over the scales in proportion to their number of
latent dimensions, so each scale's ``(z, logdet)`` plugs into the project's losses
(``training/objectives.py``) and their sum over scales is the likelihood of the whole flow.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowclas_ros.model.config import ModelConfig
from flowclas_ros.model.flow import DiagonalGaussian, ProjectionHead
from flowclas_ros.model.heads.blocks import CouplingBlock
from flowclas_ros.model.heads.cflow import frozen_layer_norm


class ConvSubnet(nn.Module):
    """U-Flow's subnet: ``conv k (cin -> hidden) - ReLU - conv k (hidden -> cout)``, "same"
    padding, with biases, PyTorch's default initialisation (the block scales its output by 0.1)."""

    def __init__(self, cin: int, cout: int, hidden: int, kernel: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, hidden, kernel, padding=kernel // 2)
        self.conv2 = nn.Conv2d(hidden, cout, kernel, padding=kernel // 2)

    def forward(self, x1: Tensor, condition=None) -> Tensor:
        """The module's output for ``x`` (a flow returns its latent and log-det)."""
        return self.conv2(F.relu(self.conv1(x1)))


class Stage(nn.Module):
    """``steps`` coupling blocks on one scale; log-det per sample."""

    def __init__(self, channels: int, steps: int, hidden_ratio: float, clamp: float, seed: int) -> None:
        super().__init__()
        passive = channels - channels // 2
        hidden = max(1, int(passive * hidden_ratio))
        self.blocks = nn.ModuleList(
            CouplingBlock(channels, ConvSubnet(passive, 2 * (channels // 2), hidden, 3 if i % 2 == 0 else 1),
                          clamp, seed * 1000 + i)
            for i in range(steps)
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The module's output for ``x`` (a flow returns its latent and log-det)."""
        logdet = x.new_zeros(x.shape[0])
        for block in self.blocks:
            x, ld = block(x)
            logdet = logdet + ld.sum(dim=(1, 2))
        return x, logdet

    def inverse(self, z: Tensor) -> Tensor:
        """Invert :meth:`forward` exactly."""
        for block in reversed(self.blocks):
            z = block.inverse(z)
        return z


def stride_ratios(strides: list[int]) -> list[int]:
    """Ratio of each scale's stride to the next finer one's (1 for the finest): each must be
    a power of two (1 included: scales on one grid are concatenated without resampling)."""
    ratios = [1]
    for fine, coarse in zip(strides, strides[1:]):
        r = coarse // fine
        if coarse % fine or r & (r - 1):
            raise ValueError(f"uflow needs each feature stride to be a power-of-two multiple of the previous, got {strides}")
        ratios.append(r)
    return ratios


class UFlow(nn.Module):
    """The invertible U-shaped flow: feature maps (fine to coarse) -> latents (fine to coarse)."""

    def __init__(self, channels: list[int], strides: list[int], steps: int = 4, hidden_ratio: float = 1.0,
                 clamp: float = 2.0, seed: int = 0) -> None:
        super().__init__()
        self.ratios = stride_ratios(list(strides))
        n = len(channels)
        stages: list[Stage | None] = [None] * n
        self.up = [0] * n  # channels moved from scale i's output to scale i - 1
        self.out_channels = [0] * n
        width = channels[-1]
        for i in reversed(range(n)):
            stages[i] = Stage(width, steps, hidden_ratio, clamp, seed * 100 + i)
            if i == 0:
                self.out_channels[0] = width
                break
            cells = self.ratios[i] ** 2
            self.up[i] = (width // (2 * cells)) * cells
            if self.up[i] == 0:
                raise ValueError(f"uflow: {width} channels at scale {i} are too few to move any to the finer scale")
            self.out_channels[i] = width - self.up[i]
            width = channels[i - 1] + self.up[i] // cells
        self.in_channels = list(channels)
        self.stages = nn.ModuleList(stages)

    def forward(self, feats: list[Tensor]) -> tuple[list[Tensor], Tensor]:
        """``(latents per scale, log-det per sample)``."""
        n = len(self.stages)
        latents: list[Tensor] = [feats[0]] * n
        x = feats[-1]
        logdet = x.new_zeros(x.shape[0])
        for i in reversed(range(n)):
            x, ld = self.stages[i](x)
            logdet = logdet + ld
            if i == 0:
                latents[0] = x
                break
            moved, latents[i] = x[:, : self.up[i]], x[:, self.up[i] :]
            if self.ratios[i] > 1:
                moved = F.pixel_shuffle(moved, self.ratios[i])
            x = torch.cat([feats[i - 1], moved], dim=1)
        return latents, logdet

    def inverse(self, latents: list[Tensor]) -> list[Tensor]:
        """Feature maps whose latents are ``latents``."""
        n = len(self.stages)
        feats: list[Tensor] = [latents[0]] * n
        x = latents[0]
        for i in range(n):
            x = self.stages[i].inverse(x)
            if i == n - 1:
                feats[i] = x
                break
            feats[i], moved = x[:, : self.in_channels[i]], x[:, self.in_channels[i] :]
            if self.ratios[i + 1] > 1:
                moved = F.pixel_unshuffle(moved, self.ratios[i + 1])
            x = torch.cat([moved, latents[i + 1]], dim=1)
        return feats


class UFlowHead(nn.Module):
    """Frozen LayerNorm per input scale, the U-shaped flow, and per output scale a
    standard-normal base (learnable if ``flow.learnable_base``) and a projection."""

    def __init__(self, config: ModelConfig, channels: list[int], strides: list[int]) -> None:
        super().__init__()
        fc = config.flow
        self.score_variant = config.score
        self.norms = nn.ModuleList(frozen_layer_norm(c) for c in channels)
        self.flow = UFlow(channels, strides, fc.steps, fc.hidden_ratio, fc.clamp, fc.seed)
        outs = self.flow.out_channels
        self.bases = nn.ModuleList(DiagonalGaussian(c, fc.learnable_base) for c in outs)
        self.projections = nn.ModuleList(
            ProjectionHead(c, config.projection_dim) for c in outs if config.projection_dim
        )

    def latents(self, feats: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
        """Per scale ``(z, share of the log-det)``; the shares sum to the flow's log-det."""
        zs, logdet = self.flow([norm(f) for f, norm in zip(feats, self.norms)])
        dims = [z.shape[1] * z.shape[2] * z.shape[3] for z in zs]
        total = sum(dims)
        return [(z, logdet * (d / total)) for z, d in zip(zs, dims)]

    def score(self, feats: list[Tensor], size: tuple[int, int]) -> Tensor:
        """Unsquashed score ``B x H x W`` at ``size`` (the padded input size)."""
        zs, _ = self.flow([norm(f) for f, norm in zip(feats, self.norms)])
        values = []
        for z, base in zip(zs, self.bases):
            logp = base.score_log_density(z)
            value = torch.exp(logp) if self.score_variant == "prob" else logp
            values.append(F.interpolate(value[:, None], size=size, mode="bilinear", align_corners=False))
        mean = torch.cat(values, dim=1).mean(dim=1)
        return 1.0 - mean if self.score_variant == "prob" else -mean
