"""The score-map network: frozen encoder, per-scale LayerNorm + flow + base, scoring.

``FlowCLASNet`` is the one module used by training, the detector, replay and export. Its
``forward`` maps a normalised ``B x 3 x H x W`` batch to a ``B x H x W`` score map in [0, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowclas_ros.model.config import ModelConfig
from flowclas_ros.model.encoders import Encoder, build_encoder
from flowclas_ros.model.flow import ChannelLayerNorm, DiagonalGaussian, Flow, ProjectionHead
from flowclas_ros.model.heads import HEAD_MODULES


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Zero-pad height and width at the bottom/right up to a multiple of ``multiple``."""
    h, w = x.shape[-2:]
    return F.pad(x, (0, (-w) % multiple, 0, (-h) % multiple))


class FlowCLASNet(nn.Module):
    """Encoder + one (LayerNorm, flow, base distribution[, projection]) per feature scale."""

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
                Flow(c, fc.steps, fc.subnet, fc.hidden_ratio, fc.clamp, seed=fc.seed + i)
                for i, c in enumerate(chans)
            )
            self.bases = nn.ModuleList(DiagonalGaussian(c, fc.learnable_base) for c in chans)
            self.projections = nn.ModuleList(
                ProjectionHead(c, config.projection_dim) for c in chans if config.projection_dim
            )

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
            return self.head.latents(feats)
        return [flow(norm(f)) for f, norm, flow in zip(feats, self.norms, self.flows)]

    def raw_score(self, x: Tensor) -> Tensor:
        """Unsquashed score map ``B x H x W`` (method.md 2.5) for a normalised batch."""
        h, w = x.shape[-2:]
        padded = pad_to_multiple(x, self.encoder.pad_multiple)
        size = padded.shape[-2:]
        if self.head is not None:
            score = self.head.score(self.features(padded), size)
        else:
            score = self._conv_flow_score(self.features(padded), size)
        return score[:, :h, :w]

    def _conv_flow_score(self, feats: list[Tensor], size) -> Tensor:
        """The flowclas / fastflow score at the padded size (method.md 2.5)."""
        maps = []
        for (z, _), base in zip(self.latents(feats), self.bases):
            logp = base.score_log_density(z)
            value = torch.exp(logp) if self.config.score == "prob" else logp
            maps.append(F.interpolate(value[:, None], size=size, mode="bilinear", align_corners=False))
        mean = torch.cat(maps, dim=1).mean(dim=1)
        return 1.0 - mean if self.config.score == "prob" else -mean

    def forward(self, x: Tensor) -> Tensor:
        """Score map ``B x H x W`` in [0, 1] (higher = more anomalous)."""
        score = self.raw_score(x)
        if self.config.squash == "sigmoid":
            return torch.sigmoid(score)
        return score.clamp(0.0, 1.0)
