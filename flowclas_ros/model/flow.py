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
    """Per-channel affine ``y = (x - loc) * exp(-log_scale)``, data-initialised.

    The authors' ActNorm (FrEIA at the commit they pin, with their zero-spread fix): the
    first training forward sets ``loc`` to the batch mean and ``log_scale`` to the log of
    the unbiased standard deviation per channel, with no epsilon; a channel of zero spread
    takes the mean spread of the others. Log-det per sample: ``-H * W * sum(log_scale)``.
    In eval mode (inference, export) there is no branch on data: the check only happens
    while ``self.training`` is true.
    """

    initialized: Tensor

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set ``loc`` and ``log_scale`` from the statistics of batch ``x``."""
        dims = (0, 2, 3)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # every process initialises from the statistics of the whole global batch
            xd = x.double()
            count = torch.tensor([float(x.shape[0] * x.shape[2] * x.shape[3])], dtype=torch.float64, device=x.device)
            stats = torch.cat([count, xd.sum(dim=dims), (xd * xd).sum(dim=dims)])
            torch.distributed.all_reduce(stats)
            n, sums, squares = stats[0], stats[1 : 1 + x.shape[1]], stats[1 + x.shape[1] :]
            mean = sums / n
            std = ((squares - n * mean * mean).clamp(min=0) / (n - 1)).sqrt()
            mean, std = mean.to(x.dtype).view(1, -1, 1, 1), std.to(x.dtype).view(1, -1, 1, 1)
        else:
            mean = x.mean(dim=dims, keepdim=True)
            std = x.std(dim=dims, keepdim=True)
        flat = torch.isclose(std, torch.zeros_like(std))
        if bool(flat.any()):
            std = torch.where(flat, std[~flat].mean(), std)
        self.loc.copy_(mean)
        self.log_scale.copy_(torch.log(std))
        self.initialized.fill_(True)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Apply the module (see the class docstring)."""
        if self.training and not bool(self.initialized):
            self.initialize(x)
        y = (x - self.loc) * torch.exp(-self.log_scale)
        logdet = -self.log_scale.sum() * (x.shape[2] * x.shape[3])
        return y, logdet.expand(x.shape[0])

    def inverse(self, y: Tensor) -> Tensor:
        """Invert :meth:`forward` exactly."""
        return y * torch.exp(self.log_scale) + self.loc


class Permutation(nn.Module):
    """A fixed random channel permutation (seeded; log-det 0)."""

    perm: Tensor
    inv: Tensor

    def __init__(self, channels: int, seed: int) -> None:
        super().__init__()
        perm = torch.randperm(channels, generator=torch.Generator().manual_seed(seed))
        self.register_buffer("perm", perm)
        self.register_buffer("inv", torch.argsort(perm))

    def forward(self, x: Tensor) -> Tensor:
        """Apply the module (see the class docstring)."""
        return x.index_select(1, self.perm)

    def inverse(self, y: Tensor) -> Tensor:
        """Invert :meth:`forward` exactly."""
        return y.index_select(1, self.inv)

    def check(self) -> None:
        """Raise ValueError unless ``perm`` (as loaded) is a permutation of the channels and ``inv`` its inverse."""
        n = self.perm.numel()
        if self.perm.dim() != 1 or not torch.equal(torch.sort(self.perm).values, torch.arange(n, device=self.perm.device)):
            raise ValueError(f"perm is not a permutation of 0..{n - 1}")
        if self.inv.shape != self.perm.shape or not torch.equal(self.inv, torch.argsort(self.perm)):
            raise ValueError("inv is not the inverse of perm")


def _exporting() -> bool:
    is_exporting = getattr(torch.compiler, "is_exporting", None)  # torch >= 2.5
    return bool(is_exporting and is_exporting())


class SampleNorm(nn.GroupNorm):
    """GroupNorm with one group (normalise each sample over C, H, W); written as reductions when exported.

    Same parameters and numbers as ``nn.GroupNorm(1, c)``. Eager torch runs the built-in
    kernel: the reductions below cost several times more there, forward and backward
    (benchmarks/flow_vs_freia.py). Under ``torch.export`` (ONNX, TensorRT) they are traced
    instead: the ONNX exporter turns the built-in op into Reshape + InstanceNormalization
    wrapped in layout conversions, which cost ONNX Runtime about an eighth of the model's
    time, while these reductions run fused.
    """

    def __init__(self, channels: int) -> None:
        super().__init__(1, channels)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the module (see the class docstring)."""
        if not _exporting():
            return F.group_norm(x, 1, self.weight, self.bias, self.eps)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        centred = x - mean
        var = (centred * centred).mean(dim=(1, 2, 3), keepdim=True)
        scale = self.weight.view(1, -1, 1, 1) * torch.rsqrt(var + self.eps)
        return centred * scale + self.bias.view(1, -1, 1, 1)


class ResidualSubnet(nn.Module):
    """Pre-activation residual CNN (the authors' "residual" subnet, supplement Fig. 5).

    GroupNorm(1) + ReLU before each conv: 3x3 (c -> c), 1x1 (c -> hidden), 3x3 (hidden ->
    hidden); plus the input as skip (through GroupNorm + ReLU + 1x1 conv when hidden != c);
    the sum goes straight into a zero-initialised 1x1 conv to ``cout``. No biases.
    """

    def __init__(self, cin: int, cout: int, hidden: int) -> None:
        super().__init__()
        self.norms = nn.ModuleList(SampleNorm(c) for c in (cin, cin, hidden))
        self.convs = nn.ModuleList(
            [
                nn.Conv2d(cin, cin, 3, padding=1, bias=False),
                nn.Conv2d(cin, hidden, 1, bias=False),
                nn.Conv2d(hidden, hidden, 3, padding=1, bias=False),
            ]
        )
        if hidden != cin:
            self.skip: nn.Module = nn.Sequential(SampleNorm(cin), nn.ReLU(), nn.Conv2d(cin, hidden, 1, bias=False))
        else:
            self.skip = nn.Identity()
        self.out = nn.Conv2d(hidden, cout, 1, bias=False)
        nn.init.zeros_(self.out.weight)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the module (see the class docstring)."""
        h = x
        for norm, conv in zip(self.norms, self.convs):
            h = conv(F.relu(norm(h)))
        return self.out(h + self.skip(x))


class SimpleSubnet(nn.Module):
    """conv - ReLU - conv with kernel ``k`` (FastFlow's subnet); last conv zero-initialised."""

    def __init__(self, cin: int, cout: int, hidden: int, kernel: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, hidden, kernel, padding=kernel // 2)
        self.conv2 = nn.Conv2d(hidden, cout, kernel, padding=kernel // 2)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)  # type: ignore[arg-type]  # the conv has a bias

    def forward(self, x: Tensor) -> Tensor:
        """Apply the module (see the class docstring)."""
        return self.conv2(F.relu(self.conv1(x)))


def split_channels(channels: int) -> int:
    """Channels of the passive half: ``round(C / 2)`` as FrEIA rounds it (half to even)."""
    return round(channels * 0.5)


class AffineCoupling(nn.Module):
    """One-sided affine coupling: ``x2' = x2 * exp(clamp * tanh(s)) + t`` with (s, t) = subnet(x1)."""

    def __init__(self, channels: int, subnet: nn.Module, clamp: float) -> None:
        super().__init__()
        self.split = split_channels(channels)
        self.subnet = subnet
        self.clamp = clamp

    def _scale_shift(self, x1: Tensor) -> tuple[Tensor, Tensor]:
        s_raw, t = self.subnet(x1).chunk(2, dim=1)
        return self.clamp * torch.tanh(s_raw), t

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Apply the module (see the class docstring)."""
        x1, x2 = x[:, : self.split], x[:, self.split :]
        s, t = self._scale_shift(x1)
        return torch.cat([x1, x2 * torch.exp(s) + t], dim=1), s.sum(dim=(1, 2, 3))

    def inverse(self, y: Tensor) -> Tensor:
        """Invert :meth:`forward` exactly."""
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
        """Apply the module (see the class docstring)."""
        x, ld_act = self.actnorm(x)
        x, ld_coupling = self.coupling(self.permute(x))
        return x, ld_act + ld_coupling

    def inverse(self, y: Tensor) -> Tensor:
        """Invert :meth:`forward` exactly."""
        return self.actnorm.inverse(self.permute.inverse(self.coupling.inverse(y)))


class Whitening(nn.Module):
    """A fixed linear map ``y = W (x - m)`` set once from inlier data so that ``y`` is white.

    ``W`` is the inverse Cholesky factor of the (ridge-shrunk) channel covariance: a data
    initialisation of the flow's first layer that makes the untrained flow the closed-form
    full-covariance Gaussian (what a diagonal ActNorm cannot give). Buffers only (nothing
    trains); its log-det is the constant ``H*W*log|det W|``. Until ``initialize`` runs it is
    the identity.
    """

    weight: Tensor
    mean: Tensor
    log_det: Tensor

    def __init__(self, channels: int, ridge: float = 0.01) -> None:
        super().__init__()
        self.ridge = ridge
        self.register_buffer("weight", torch.eye(channels))
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("log_det", torch.zeros(()))

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set ``W`` and ``m`` from the pixels of ``x`` (``B x C x H x W``, or ``N x C`` vectors)."""
        v = (x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]) if x.dim() == 4 else x).double()
        mean = v.mean(0)
        cov = torch.cov(v.t()).reshape(v.shape[1], v.shape[1])
        cov = cov + self.ridge * cov.diagonal().mean().clamp(min=1e-12) * torch.eye(v.shape[1], dtype=cov.dtype)
        chol = torch.linalg.cholesky(cov)
        weight = torch.linalg.inv(chol)
        self.weight.copy_(weight.float())
        self.mean.copy_(mean.float())
        self.log_det.fill_(float(-torch.log(chol.diagonal()).sum()))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(W (x - m), log-det per sample)``."""
        y = F.conv2d(x - self.mean.view(1, -1, 1, 1), self.weight[:, :, None, None])
        return y, (self.log_det * (x.shape[2] * x.shape[3])).expand(x.shape[0])

    def inverse(self, y: Tensor) -> Tensor:
        """``W^-1 y + m``."""
        return F.conv2d(y, torch.linalg.inv(self.weight)[:, :, None, None]) + self.mean.view(1, -1, 1, 1)


class Flow(nn.Module):
    """A stack of flow steps on a ``B x C x H x W`` map; returns (z, log-det per sample).

    subnet: ``"residual"`` (FlowCLAS) or ``"simple"`` (FastFlow: kernels 3, 1, 3, ...);
    whiten: a data-initialised ``Whitening`` before the steps.
    """

    def __init__(
        self,
        channels: int,
        steps: int = 16,
        subnet: str = "residual",
        hidden_ratio: float = 1.0,
        clamp: float = 2.0,
        seed: int = 0,
        whiten: bool = False,
    ) -> None:
        super().__init__()
        self.whiten: Whitening | None = Whitening(channels) if whiten else None
        if channels < 2:
            raise ValueError(f"a coupling flow needs at least 2 channels, got {channels}")
        c1 = split_channels(channels)
        cout = 2 * (channels - c1)
        hidden = max(1, int(c1 * hidden_ratio))
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
        """Apply the module (see the class docstring)."""
        logdet = x.new_zeros(x.shape[0])
        if self.whiten is not None:
            x, logdet = self.whiten(x)
        for step in self.steps:
            x, ld = step(x)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, z: Tensor) -> Tensor:
        """Invert :meth:`forward` exactly."""
        for step in reversed(self.steps):
            z = step.inverse(z)  # type: ignore[operator]  # ModuleList items are FlowSteps
        return z if self.whiten is None else self.whiten.inverse(z)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over channels at every pixel of a ``B x C x H x W`` map (no permutes).

    Equal to ``nn.LayerNorm(C)`` on channels-last features (eps 1e-5, as the authors').
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        """Apply the module (see the class docstring)."""
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
    """1x1 conv on the latent (C -> dim), then L2 normalisation per pixel (contrastive loss).

    Initialised like the authors' (mmengine ``kaiming_init``): Kaiming normal weights
    (fan_out, ReLU gain), bias 0.
    """

    def __init__(self, channels: int, dim: int = 128) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, dim, 1)
        nn.init.kaiming_normal_(self.conv.weight, a=0, mode="fan_out", nonlinearity="relu")
        bias = self.conv.bias
        assert bias is not None
        nn.init.zeros_(bias)

    def forward(self, z: Tensor) -> Tensor:
        """Apply the module (see the class docstring)."""
        return F.normalize(self.conv(z), dim=1)


class SegmentationHead(nn.Sequential):
    """Inlier semantic segmentation on the latent (the authors' ``use_seg``, Cityscapes).

    3x3 conv C -> C/2, BatchNorm, ReLU, 1x1 conv -> ``classes`` logits. PyTorch's default
    initialisation: the authors' ``kaiming_init`` call on the ``nn.Sequential`` touches
    nothing (the container has no ``weight``). Training only; never part of the score.
    """

    def __init__(self, channels: int, classes: int) -> None:
        super().__init__(
            nn.Conv2d(channels, channels // 2, 3, padding=1),
            nn.BatchNorm2d(channels // 2),
            nn.ReLU(),
            nn.Conv2d(channels // 2, classes, 1),
        )
