"""The fully convolutional normalizing flow of FlowCLAS (docs/method.md, section 2.3).

Hand-written instead of taken from FrEIA or normflows: we need one-sided couplings with the
authors' exact clamp and subnets, per-sample log-determinants, an exact inverse for tests,
and a forward that ``torch.export`` / ONNX / TensorRT trace without graph breaks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ActNorm(nn.Module):
    """Per-channel affine ``y = x * exp(log_scale) + bias``, data-initialised.

    The first training forward sets the parameters so that its batch comes out with zero
    mean and unit variance per channel. In eval mode (inference, export) there is no
    branch on data: the check only happens while ``self.training`` is true.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set scale and bias from the statistics of batch ``x``."""
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        square = (x * x).mean(dim=(0, 2, 3), keepdim=True)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # every process initialises from the statistics of the whole global batch
            stats = torch.cat([mean, square]) / torch.distributed.get_world_size()
            torch.distributed.all_reduce(stats)
            mean, square = stats[:1], stats[1:]
        std = (square - mean * mean).clamp(min=0).sqrt()
        self.log_scale.copy_(-torch.log(std + 1e-6))
        self.bias.copy_(-mean * torch.exp(self.log_scale))
        self.initialized.fill_(True)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.training and not bool(self.initialized):
            self.initialize(x)
        y = x * torch.exp(self.log_scale) + self.bias
        logdet = self.log_scale.sum() * (x.shape[2] * x.shape[3])
        return y, logdet.expand(x.shape[0])

    def inverse(self, y: Tensor) -> Tensor:
        return (y - self.bias) * torch.exp(-self.log_scale)


class Permutation(nn.Module):
    """A fixed random channel permutation (seeded; log-det 0)."""

    def __init__(self, channels: int, seed: int) -> None:
        super().__init__()
        perm = torch.randperm(channels, generator=torch.Generator().manual_seed(seed))
        self.register_buffer("perm", perm)
        self.register_buffer("inv", torch.argsort(perm))

    def forward(self, x: Tensor) -> Tensor:
        return x.index_select(1, self.perm)

    def inverse(self, y: Tensor) -> Tensor:
        return y.index_select(1, self.inv)


class SampleNorm(nn.GroupNorm):
    """GroupNorm with one group (normalise each sample over C, H, W), written as reductions.

    Same parameters and numbers as ``nn.GroupNorm(1, c)``; the ONNX exporter turns the
    built-in op into Reshape + InstanceNormalization wrapped in layout conversions, which
    cost ONNX Runtime about an eighth of the model's time, while these reductions run fused.
    """

    def __init__(self, channels: int) -> None:
        super().__init__(1, channels)

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        centred = x - mean
        var = (centred * centred).mean(dim=(1, 2, 3), keepdim=True)
        scale = self.weight.view(1, -1, 1, 1) * torch.rsqrt(var + self.eps)
        return centred * scale + self.bias.view(1, -1, 1, 1)


class ResidualSubnet(nn.Module):
    """Pre-activation residual CNN (the authors' "residual" subnet).

    GroupNorm(1) + ReLU before each conv: 3x3 (c -> c), 1x1 (c -> hidden), 3x3 (hidden ->
    hidden), plus the input as skip (1x1 conv when hidden != c), then GroupNorm + ReLU and a
    zero-initialised 1x1 conv to ``cout``. No biases.
    """

    def __init__(self, cin: int, cout: int, hidden: int) -> None:
        super().__init__()
        self.norms = nn.ModuleList(SampleNorm(c) for c in (cin, cin, hidden, hidden))
        self.convs = nn.ModuleList(
            [
                nn.Conv2d(cin, cin, 3, padding=1, bias=False),
                nn.Conv2d(cin, hidden, 1, bias=False),
                nn.Conv2d(hidden, hidden, 3, padding=1, bias=False),
            ]
        )
        self.skip = nn.Conv2d(cin, hidden, 1, bias=False) if hidden != cin else nn.Identity()
        self.out = nn.Conv2d(hidden, cout, 1, bias=False)
        nn.init.zeros_(self.out.weight)

    def forward(self, x: Tensor) -> Tensor:
        h = x
        for norm, conv in zip(self.norms[:3], self.convs):
            h = conv(F.relu(norm(h)))
        h = h + self.skip(x)
        return self.out(F.relu(self.norms[3](h)))


class SimpleSubnet(nn.Module):
    """conv - ReLU - conv with kernel ``k`` (FastFlow's subnet); last conv zero-initialised."""

    def __init__(self, cin: int, cout: int, hidden: int, kernel: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, hidden, kernel, padding=kernel // 2)
        self.conv2 = nn.Conv2d(hidden, cout, kernel, padding=kernel // 2)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(F.relu(self.conv1(x)))


class AffineCoupling(nn.Module):
    """One-sided affine coupling: ``x2' = x2 * exp(clamp * tanh(s)) + t`` with (s, t) = subnet(x1)."""

    def __init__(self, channels: int, subnet: nn.Module, clamp: float) -> None:
        super().__init__()
        self.split = channels // 2
        self.subnet = subnet
        self.clamp = clamp

    def _scale_shift(self, x1: Tensor) -> tuple[Tensor, Tensor]:
        s_raw, t = self.subnet(x1).chunk(2, dim=1)
        return self.clamp * torch.tanh(s_raw), t

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x1, x2 = x[:, : self.split], x[:, self.split :]
        s, t = self._scale_shift(x1)
        return torch.cat([x1, x2 * torch.exp(s) + t], dim=1), s.sum(dim=(1, 2, 3))

    def inverse(self, y: Tensor) -> Tensor:
        y1, y2 = y[:, : self.split], y[:, self.split :]
        s, t = self._scale_shift(y1)
        return torch.cat([y1, (y2 - t) * torch.exp(-s)], dim=1)


class FlowStep(nn.Module):
    """ActNorm -> fixed permutation -> affine coupling."""

    def __init__(self, channels: int, subnet: nn.Module, clamp: float, seed: int) -> None:
        super().__init__()
        self.actnorm = ActNorm(channels)
        self.permute = Permutation(channels, seed)
        self.coupling = AffineCoupling(channels, subnet, clamp)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x, ld_act = self.actnorm(x)
        x, ld_coupling = self.coupling(self.permute(x))
        return x, ld_act + ld_coupling

    def inverse(self, y: Tensor) -> Tensor:
        return self.actnorm.inverse(self.permute.inverse(self.coupling.inverse(y)))


class Flow(nn.Module):
    """A stack of flow steps on a ``B x C x H x W`` map; returns (z, log-det per sample).

    subnet: ``"residual"`` (FlowCLAS) or ``"simple"`` (FastFlow: kernels 3, 1, 3, ...).
    """

    def __init__(
        self,
        channels: int,
        steps: int = 16,
        subnet: str = "residual",
        hidden_ratio: float = 1.0,
        clamp: float = 2.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if channels < 2:
            raise ValueError(f"a coupling flow needs at least 2 channels, got {channels}")
        c1 = channels // 2
        cout = 2 * (channels - c1)
        hidden = max(1, int(round(c1 * hidden_ratio)))
        layers = []
        for i in range(steps):
            if subnet == "residual":
                net: nn.Module = ResidualSubnet(c1, cout, hidden)
            elif subnet == "simple":
                net = SimpleSubnet(c1, cout, hidden, 3 if i % 2 == 0 else 1)
            else:
                raise ValueError(f"unknown subnet {subnet!r}; use 'residual' or 'simple'")
            layers.append(FlowStep(channels, net, clamp, seed * 1000 + i))
        self.steps = nn.ModuleList(layers)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logdet = x.new_zeros(x.shape[0])
        for step in self.steps:
            x, ld = step(x)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, z: Tensor) -> Tensor:
        for step in reversed(self.steps):
            z = step.inverse(z)
        return z


class ChannelLayerNorm(nn.Module):
    """LayerNorm over channels at every pixel of a ``B x C x H x W`` map (no permutes)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(dim=1, keepdim=True)
        var = (x - mean).pow(2).mean(dim=1, keepdim=True)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias


class DiagonalGaussian(nn.Module):
    """Base distribution N(mu, exp(ls)^2) per channel; learnable or fixed standard normal."""

    def __init__(self, channels: int, learnable: bool = True) -> None:
        super().__init__()
        self.mu = nn.Parameter(torch.zeros(1, channels, 1, 1), requires_grad=learnable)
        self.ls = nn.Parameter(torch.zeros(1, channels, 1, 1), requires_grad=learnable)

    def _u(self, z: Tensor) -> Tensor:
        return (z - self.mu) * torch.exp(-self.ls)

    def log_density(self, z: Tensor) -> Tensor:
        """Training log-density per pixel, ``B x H x W``: the full Gaussian log-pdf summed over channels."""
        c = z.shape[1]
        return -0.5 * c * math.log(2 * math.pi) - self.ls.sum() - 0.5 * self._u(z).pow(2).sum(dim=1)

    def score_log_density(self, z: Tensor) -> Tensor:
        """Scoring log-density per pixel, ``B x H x W``: ``mean_c(-u^2/2 - ls)``, no 2*pi constant."""
        return (-0.5 * self._u(z).pow(2) - self.ls).mean(dim=1)


class ProjectionHead(nn.Module):
    """1x1 conv on the latent (C -> dim), then L2 normalisation per pixel (contrastive loss)."""

    def __init__(self, channels: int, dim: int = 128) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, dim, 1)

    def forward(self, z: Tensor) -> Tensor:
        return F.normalize(self.conv(z), dim=1)
