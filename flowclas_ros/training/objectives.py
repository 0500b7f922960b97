"""Training objectives of method.md sections 3-4, as functions of the network's outputs.

Labels follow the training convention: 0 inlier, 1 outlier (pasted object), 255 ignore.
All losses take per-scale latents ``(z, logdet)`` from ``FlowCLASNet.latents`` and labels at
image resolution; labels are resized to each latent grid by nearest neighbour.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from flowclas_ros.model.config import ConfigError
from flowclas_ros.model.flow import DiagonalGaussian
from flowclas_ros.vocabulary import Label

INLIER, OUTLIER, IGNORE = int(Label.INLIER), int(Label.ANOMALY), int(Label.VOID)
OBJECTIVES = ("flowclas", "ml", "outlier_nll")


def labels_to_grid(labels: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest-neighbour resize of ``B x H x W`` integer labels to ``size``."""
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()


def ml_loss(z: Tensor, logdet: Tensor, base: DiagonalGaussian, labels: Tensor) -> Tensor:
    """Maximum-likelihood loss of one scale over inlier pixels (method.md section 3).

    Per sample: the training log-density summed over inlier pixels plus the total log-det
    scaled by the fraction of inlier pixels, negated; then the mean over the batch.
    """
    grid = labels_to_grid(labels, tuple(z.shape[-2:]))
    valid = (grid == INLIER).float()
    logp = (base.log_density(z) * valid).sum(dim=(1, 2))
    fraction = valid.mean(dim=(1, 2))
    return -(logp + logdet * fraction).mean()


def _sample(indices: Tensor, k: int, generator: torch.Generator | None) -> Tensor:
    order = torch.randperm(indices.numel(), generator=generator, device="cpu")[:k]
    return indices[order.to(indices.device)]


def contrastive_loss(
    emb_mix: Tensor,
    labels_mix: Tensor,
    emb_out: Tensor,
    labels_out: Tensor,
    temperature: float = 0.13,
    max_samples: int = 512,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Pixel InfoNCE in supervised-contrastive form (method.md section 3).

    ``emb_*``: unit-norm embeddings ``B x D x h x w``; ``labels_*``: labels at image size.
    Anchors are up to K outlier and K inlier pixels of the mixed images; the contrast set is
    the anchors plus up to K outlier and K inlier pixels of the outlier images, with
    K = min(max_samples, size of every non-empty pool). Returns 0 when a class is absent.
    """
    d = emb_mix.shape[1]
    flat_mix = emb_mix.permute(0, 2, 3, 1).reshape(-1, d)
    flat_out = emb_out.permute(0, 2, 3, 1).reshape(-1, d)
    lab_mix = labels_to_grid(labels_mix, tuple(emb_mix.shape[-2:])).reshape(-1)
    lab_out = labels_to_grid(labels_out, tuple(emb_out.shape[-2:])).reshape(-1)
    pools = {
        ("mix", c): (lab_mix == c).nonzero()[:, 0] for c in (OUTLIER, INLIER)
    } | {("out", c): (lab_out == c).nonzero()[:, 0] for c in (OUTLIER, INLIER)}
    if pools[("mix", OUTLIER)].numel() == 0 or pools[("mix", INLIER)].numel() == 0:
        return emb_mix.sum() * 0.0
    k = min([max_samples] + [p.numel() for p in pools.values() if p.numel() > 0])
    picked = {key: _sample(idx, k, generator) for key, idx in pools.items()}
    anchors = torch.cat([flat_mix[picked[("mix", OUTLIER)]], flat_mix[picked[("mix", INLIER)]]])
    anchor_labels = torch.cat([torch.full((k,), OUTLIER), torch.full((k,), INLIER)]).to(anchors.device)
    extra = torch.cat([flat_out[picked[("out", OUTLIER)]], flat_out[picked[("out", INLIER)]]])
    extra_labels = torch.cat([lab_out[picked[("out", OUTLIER)]], lab_out[picked[("out", INLIER)]]])
    contrast = torch.cat([anchors, extra])
    contrast_labels = torch.cat([anchor_labels, extra_labels])
    return supcon_loss(anchors, anchor_labels, contrast, contrast_labels, temperature)


def supcon_loss(
    anchors: Tensor, anchor_labels: Tensor, contrast: Tensor, contrast_labels: Tensor, temperature: float
) -> Tensor:
    """Mean over anchors of -mean over positives of log(e_p / (e_p + sum of negatives' e_n)).

    The first ``len(anchors)`` rows of ``contrast`` are the anchors themselves (excluded as
    their own positives); ``e = exp(dot / temperature)``.
    """
    logits = anchors @ contrast.t() / temperature
    same = anchor_labels[:, None] == contrast_labels[None, :]
    self_mask = torch.zeros_like(same)
    self_mask[:, : anchors.shape[0]] = torch.eye(anchors.shape[0], dtype=torch.bool, device=same.device)
    positives = same & ~self_mask
    negatives = ~same
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()  # stability; ratio unchanged
    exp = logits.exp()
    neg_sum = (exp * negatives).sum(dim=1, keepdim=True)
    log_prob = logits - torch.log(exp + neg_sum)
    count = positives.sum(dim=1)
    per_anchor = -(log_prob * positives).sum(dim=1) / count.clamp(min=1)
    return per_anchor[count > 0].mean()


def pixel_log_likelihood(z: Tensor, logdet: Tensor, base: DiagonalGaussian) -> Tensor:
    """Per-pixel, per-dimension log-likelihood ``B x h x w``: (log N(z) + logdet / (h*w)) / C."""
    c, h, w = z.shape[1:]
    return (base.log_density(z) + logdet[:, None, None] / (h * w)) / c


def outlier_nll_loss(z: Tensor, logdet: Tensor, base: DiagonalGaussian, labels: Tensor, epsilon: float) -> Tensor:
    """Schmier et al.: inlier likelihood up, outlier likelihood down until below ``epsilon``.

    ``mean_in(-log p) + mean_out(max(log p, epsilon))`` on per-dimension log-likelihoods, so
    an outlier pixel stops contributing once its log-likelihood is under ``epsilon``.
    """
    grid = labels_to_grid(labels, tuple(z.shape[-2:]))
    logp = pixel_log_likelihood(z, logdet, base)
    inl, out = grid == INLIER, grid == OUTLIER
    loss = -logp[inl].mean() if inl.any() else logp.sum() * 0.0
    if out.any():
        loss = loss + logp[out].clamp(min=epsilon).mean()
    return loss


@dataclass
class ObjectiveConfig:
    """Which objective and its weights: ``flowclas`` (alpha * ML + contrastive), ``ml``, ``outlier_nll``."""

    name: str = "flowclas"
    alpha: float = 1e-6
    temperature: float = 0.13
    max_samples: int = 512
    epsilon: float = -5.0

    def __post_init__(self) -> None:
        if self.name not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.name!r}")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")


def compute_loss(
    net,
    x_mix: Tensor,
    labels_mix: Tensor,
    x_out: Tensor | None,
    labels_out: Tensor | None,
    objective: ObjectiveConfig,
    generator: torch.Generator | None = None,
    chunk: int = 0,
) -> tuple[Tensor, dict[str, float]]:
    """The selected objective summed over scales; returns (loss, its parts as floats).

    The encoder sees ``x_mix`` and ``x_out`` in one batch (method.md section 3); inputs are
    normalised and already padded to the encoder's multiple; ``chunk`` as in
    ``FlowCLASNet.features``.
    """
    use_out = objective.name == "flowclas" and x_out is not None
    batch = torch.cat([x_mix, x_out]) if use_out else x_mix
    n = x_mix.shape[0]
    total = x_mix.new_zeros(())
    parts = {"ml": 0.0, "contrastive": 0.0, "outlier_nll": 0.0}
    feats = net.features(batch, chunk)
    if net.head is not None:  # heads of model/heads (cflow, uflow): training/head_losses.py
        from flowclas_ros.training.head_losses import HEAD_LOSSES

        loss = HEAD_LOSSES[net.config.head](net, feats, n, labels_mix, labels_out if use_out else None,
                                            objective, generator, parts)
        return loss, parts
    latents = net.latents(feats)
    for i, ((z, logdet), base) in enumerate(zip(latents, net.bases)):
        if objective.name == "outlier_nll":
            term = outlier_nll_loss(z[:n], logdet[:n], base, labels_mix, objective.epsilon)
            parts["outlier_nll"] += float(term.detach())
            total = total + term
            continue
        ml = ml_loss(z[:n], logdet[:n], base, labels_mix)
        parts["ml"] += float(ml.detach())
        if objective.name == "ml":
            total = total + ml
            continue
        proj = net.projections[i](z)
        con = contrastive_loss(
            proj[:n], labels_mix, proj[n:], labels_out, objective.temperature, objective.max_samples, generator
        )
        parts["contrastive"] += float(con.detach())
        total = total + objective.alpha * ml + con
    return total, parts
