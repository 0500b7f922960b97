"""Pieces shared by the CFLOW-AD and U-Flow heads: their coupling block and the 2D
sinusoidal positional encoding.

Both papers build their flows from FrEIA's "all-in-one" block; this is our own rewrite of
what that block computes in the configuration both use (no pre-permutation, no
Householder reflections, hard permutations):

1. one-sided affine coupling on a channel split ``x = (x1, x2)`` with ``|x1| = C - C // 2``:
   ``a = 0.1 * subnet(x1[, condition])``, ``(s_raw, t) = a``, ``s = clamp * tanh(s_raw)``,
   ``x2' = x2 * exp(s) + t``;
2. a learned per-channel global affine ``y = y * g + b`` with ``g = 0.1 * softplus_{1/2}(w)``,
   ``w`` initialised so that ``g = 1``;
3. a fixed random channel permutation (seeded).

The block works on ``B x C x H x W`` maps and returns its log-determinant as a ``B x H x W``
map (per pixel), so a per-vector flow (CFLOW) reads it directly and a map flow (U-Flow)
sums it over pixels. Written with elementary ops only so that ``torch.export`` and ONNX
trace it as a dense graph.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from flowclas_ros.model.flow import Permutation

# w such that 0.1 * softplus_{beta=1/2}(w) = 1: 0.5 * w = log(exp(5) - 1)
GLOBAL_SCALE_INIT = 2.0 * math.log(math.exp(5.0) - 1.0)
COEFFICIENT_SCALE = 0.1  # the subnet's output is scaled down before use (stable start)


def softplus_half(x: Tensor) -> Tensor:
    """``softplus`` with beta 1/2, ``2 * log(1 + exp(x / 2))``, in a stable elementary form."""
    y = 0.5 * x
    return 2.0 * (y.clamp(min=0) + torch.log1p(torch.exp(-y.abs())))


class CouplingBlock(nn.Module):
    """Coupling -> global affine -> permutation; the subnet gets ``(x1, condition)``.

    ``subnet(x1, condition)`` must return ``2 * (C // 2)`` channels at the resolution of
    ``x1`` (``condition`` is passed through untouched; None for an unconditional flow).
    """

    def __init__(self, channels: int, subnet: nn.Module, clamp: float, seed: int) -> None:
        super().__init__()
        if channels < 2:
            raise ValueError(f"a coupling block needs at least 2 channels, got {channels}")
        self.passive = channels - channels // 2
        self.subnet = subnet
        self.clamp = clamp
        self.global_scale = nn.Parameter(torch.full((1, channels, 1, 1), GLOBAL_SCALE_INIT))
        self.global_offset = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.permute = Permutation(channels, seed)

    def _coefficients(self, x1: Tensor, condition) -> tuple[Tensor, Tensor]:
        a = COEFFICIENT_SCALE * self.subnet(x1, condition)
        s_raw, t = a.chunk(2, dim=1)
        return self.clamp * torch.tanh(s_raw), t

    def gain(self) -> Tensor:
        """The global per-channel scale ``0.1 * softplus_{1/2}(w)`` (``1 x C x 1 x 1``)."""
        return 0.1 * softplus_half(self.global_scale)

    def forward(self, x: Tensor, condition=None) -> tuple[Tensor, Tensor]:
        """``(y, log-det per pixel B x H x W)``."""
        x1, x2 = x[:, : self.passive], x[:, self.passive :]
        s, t = self._coefficients(x1, condition)
        y = torch.cat([x1, x2 * torch.exp(s) + t], dim=1)
        gain = self.gain()
        y = self.permute(y * gain + self.global_offset)
        return y, s.sum(dim=1) + torch.log(gain).sum()

    def inverse(self, y: Tensor, condition=None) -> Tensor:
        """Invert :meth:`forward` exactly."""
        x = (self.permute.inverse(y) - self.global_offset) / self.gain()
        x1, y2 = x[:, : self.passive], x[:, self.passive :]
        s, t = self._coefficients(x1, condition)
        return torch.cat([x1, (y2 - t) * torch.exp(-s)], dim=1)


def sinusoid(positions: Tensor, dim: int) -> Tensor:
    """``len(positions) x dim`` encoding of positions: columns ``2k`` = ``sin(p * f_k)``,
    ``2k + 1`` = ``cos(p * f_k)``, with ``f_k = 10000^(-2k / dim)``."""
    k = torch.arange(0, dim, 2, dtype=positions.dtype, device=positions.device)
    angles = positions[:, None] * torch.exp(k * (-math.log(1e4) / dim))[None, :]
    return torch.stack([torch.sin(angles), torch.cos(angles)], dim=2).reshape(positions.shape[0], dim)


def positional_encoding_2d(dim: int, height: int, width: int) -> Tensor:
    """The CFLOW-AD condition, ``dim x height x width``: the first ``dim / 2`` channels encode
    the column (``sinusoid(x, dim / 2)``), the last ``dim / 2`` the row, in grid cells.

    The model never materialises this map (it uses the two 1D parts, see
    :class:`~flowclas_ros.model.heads.cflow.ConditionalSubnet`); it is the reference for tests.
    """
    if dim % 4:
        raise ValueError(f"the positional encoding needs a multiple of 4 channels, got {dim}")
    half = dim // 2
    cols = sinusoid(torch.arange(width, dtype=torch.float32), half)  # W x half
    rows = sinusoid(torch.arange(height, dtype=torch.float32), half)  # H x half
    return torch.cat([
        cols.t()[:, None, :].expand(half, height, width),
        rows.t()[:, :, None].expand(half, height, width),
    ])
