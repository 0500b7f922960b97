"""The score-map network: frozen encoder, per-scale LayerNorm + flow + base, scoring.

``FlowCLASNet`` is the one module used by training, the detector, replay and export. Its
``forward`` maps a normalised ``B x 3 x H x W`` batch to a ``B x H x W`` score map in [0, 1].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowclas_ros.model.config import ModelConfig
from flowclas_ros.model.encoders import Encoder, build_encoder
from flowclas_ros.model.flow import (
    ChannelLayerNorm,
    DiagonalGaussian,
    Flow,
    ProjectionHead,
    SegmentationHead,
    Whitening,
)
from flowclas_ros.model.heads import HEAD_MODULES

_SIGMOID_0 = 0.5
_SIGMOID_1 = 1.0 / (1.0 + math.exp(-1.0))


def padding(h: int, w: int, multiple: int) -> tuple[int, int, int, int]:
    """Centred padding ``(left, right, top, bottom)`` of an ``h x w`` frame up to multiples of
    ``multiple``: equal on both sides, the odd pixel at the end (albumentations' PadIfNeeded,
    as the authors pad)."""
    ph, pw = (-h) % multiple, (-w) % multiple
    return pw // 2, pw - pw // 2, ph // 2, ph - ph // 2


def pad_to_multiple(x: Tensor, multiple: int, value: Tensor | float = 0.0) -> Tensor:
    """Pad height and width, centred, up to a multiple of ``multiple`` with ``value``.

    ``value``: a scalar, or per-channel values broadcastable to ``1 x C x 1 x 1`` (the
    network pads with a black pixel in normalised units). Pixels inside keep their exact
    values; no padding needed returns ``x`` itself.
    """
    pads = padding(x.shape[-2], x.shape[-1], multiple)
    if not any(pads):
        return x
    if not isinstance(value, Tensor):
        return F.pad(x, pads, value=float(value))
    border = F.pad(x.new_zeros(1, 1, x.shape[-2], x.shape[-1]), pads, value=1.0)
    return F.pad(x, pads) + border * value.to(x.dtype)


def crop_padding(x: Tensor, h: int, w: int, multiple: int) -> Tensor:
    """Undo :func:`pad_to_multiple` on the last two axes of ``x`` (back to ``h x w``)."""
    left, _, top, _ = padding(h, w, multiple)
    return x[..., top : top + h, left : left + w]


def pad_labels(y: Tensor, multiple: int, ignore: int = 255) -> Tensor:
    """Pad ``B x H x W`` labels like the images (centred), with the ignore label."""
    return pad_to_multiple(y, multiple, ignore)


def squash_batch(score: Tensor) -> Tensor:
    """The authors' squashing before binned metrics: when any value of the batch leaves
    [0, 1], every value becomes ``(sigmoid(s) - sigmoid(0)) / (sigmoid(1) - sigmoid(0))``.

    Written with ``torch.where`` (no Python branch on data, so it exports). Where the
    result still leaves [0, 1] (raw scores below 0) the authors' metrics refuse the batch;
    we clamp it there.
    """
    outside = ((score < 0) | (score > 1)).any()
    squashed = (torch.sigmoid(score) - _SIGMOID_0) / (_SIGMOID_1 - _SIGMOID_0)
    return torch.where(outside, squashed, score).clamp(0.0, 1.0)


class FlowCLASNet(nn.Module):
    """Encoder + one (LayerNorm, flow, base distribution[, projection]) per feature scale."""

    pad_value: Tensor  # 1 x 3 x 1 x 1: a black pixel in normalised units

    def __init__(self, config: ModelConfig, encoder: Encoder | None = None) -> None:
        super().__init__()
        self.config = config
        self.encoder = encoder if encoder is not None else build_encoder(config.encoder)
        fc = config.flow
        chans = self.encoder.channels
        # heads with their own module (model/heads: cflow, uflow) own their norms, flows,
        # bases and projections under ``head.``; the conv-flow heads keep theirs here
        self.head: nn.Module | None = None
        if config.head in HEAD_MODULES:
            self.head = HEAD_MODULES[config.head](config, list(chans), list(self.encoder.strides))
        else:
            self.norms = nn.ModuleList(ChannelLayerNorm(c) for c in chans)
            self.flows = nn.ModuleList(
                Flow(c, fc.steps, fc.subnet, fc.hidden_ratio, fc.clamp, seed=fc.seed + i, whiten=fc.whiten)
                for i, c in enumerate(chans)
            )
            self.bases = nn.ModuleList(DiagonalGaussian(c, fc.learnable_base) for c in chans)
            self.projections = nn.ModuleList(
                ProjectionHead(c, config.projection_dim) for c in chans if config.projection_dim
            )
        # the authors' optional segmentation head, on the last scale's latent (training only)
        self.seg_head = SegmentationHead(chans[-1], config.seg_classes) if config.seg_classes else None
        # a black pixel in normalised units: the authors pad the 0..255 image with 0
        # (computed in float64 so that a float64 network pads exactly; cast where used)
        mean = torch.tensor(config.mean, dtype=torch.float64)
        std = torch.tensor(config.std, dtype=torch.float64)
        self.register_buffer("pad_value", (-mean / std).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> "FlowCLASNet":
        """Train the head only: the encoder always stays frozen in eval mode."""
        super().train(mode)
        self.encoder.eval()
        return self

    def head_state_dict(self) -> dict[str, Tensor]:
        """Trainable head tensors (everything but the encoder)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("encoder.")}

    def features(self, x: Tensor, chunk: int = 0) -> list[Tensor]:
        """Encoder feature maps of a normalised batch already padded to ``pad_multiple``.

        ``chunk`` > 0 encodes that many images at a time (training on a CPU: the encoder runs
        several times faster per image on small batches that stay in cache).
        """
        with torch.no_grad():
            if chunk <= 0 or x.shape[0] <= chunk:
                return self.encoder(x)
            parts = [self.encoder(piece) for piece in x.split(chunk)]
            return [torch.cat(scale) for scale in zip(*parts)]

    def latents(self, feats: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
        """Per scale: (z, log-det per sample) of the LayerNorm-ed features through the flow."""
        if self.head is not None:
            return self.head.latents(feats)  # type: ignore[operator]  # a model/heads module
        return [flow(norm(f)) for f, norm, flow in zip(feats, self.norms, self.flows)]

    def pad(self, x: Tensor) -> Tensor:
        """Pad a normalised batch, centred, to the encoder's multiple with black pixels."""
        return pad_to_multiple(x, self.encoder.pad_multiple, self.pad_value)

    @torch.no_grad()
    def initialize_from_data(self, x: Tensor, chunk: int = 0) -> None:
        """Data initialisation from inlier images (normalised, padded): whitening, then every
        ActNorm, from these pixels rather than from the first (outlier-pasted) training batch."""
        if self.head is not None:
            return  # heads of model/heads initialise themselves on their first training batch
        mode = self.training
        self.train()
        for f, norm, flow in zip(self.features(x, chunk), self.norms, self.flows):
            h = norm(f)
            whiten = getattr(flow, "whiten", None)
            if isinstance(whiten, Whitening):
                whiten.initialize(h)
            flow(h)  # ActNorms initialise on their first training forward
        self.train(mode)

    def raw_score(self, x: Tensor) -> Tensor:
        """Unsquashed score map ``B x H x W`` (docs/method.md 2.5) for a normalised batch."""
        h, w = x.shape[-2:]
        padded = self.pad(x)
        size = padded.shape[-2:]
        if self.head is not None:
            score = self.head.score(self.features(padded), size)  # type: ignore[operator]
        else:
            score = self._conv_flow_score(self.features(padded), size)
        return crop_padding(score, h, w, self.encoder.pad_multiple)

    def _conv_flow_score(self, feats: list[Tensor], size) -> Tensor:
        """The flowclas / fastflow score at the padded size (method.md 2.5)."""
        maps = []
        for (z, _), base in zip(self.latents(feats), self.bases):
            logp = base.score_log_density(z)  # type: ignore[operator]  # ModuleList of DiagonalGaussian
            value = torch.exp(logp) if self.config.score == "prob" else logp
            maps.append(F.interpolate(value[:, None], size=size, mode="bilinear", align_corners=False))
        mean = torch.cat(maps, dim=1).mean(dim=1)
        return 1.0 - mean if self.config.score == "prob" else -mean

    def forward(self, x: Tensor) -> Tensor:
        """Score map ``B x H x W`` in [0, 1] (higher = more anomalous), squashed as the
        config says: ``batch_sigmoid`` (the authors'), ``sigmoid`` or ``clamp``."""
        score = self.raw_score(x)
        if self.config.squash == "batch_sigmoid":
            return squash_batch(score)
        if self.config.squash == "sigmoid":
            return torch.sigmoid(score)
        return score.clamp(0.0, 1.0)
