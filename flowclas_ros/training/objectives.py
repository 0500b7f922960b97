"""Training objectives of docs/method.md sections 3-4, as functions of the network's outputs.

Labels follow the training convention: 0 inlier, 1 outlier (pasted object), 255 ignore.
All losses take per-scale latents ``(z, logdet)`` from ``FlowCLASNet.latents`` and labels at
image resolution; labels are resized to each latent grid by nearest neighbour: the ML
losses with ``nearest-exact`` (the label at each cell's centre), the contrastive loss with
``nearest`` (the label at each cell's top-left pixel), as the authors' code does.
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
# Losses of the heads in model/heads, by head name: filled by training/head_losses.py, which
# the training package imports (so this module never imports it back).
HEAD_LOSSES: dict = {}


def labels_to_grid(labels: Tensor, size: tuple[int, int], mode: str = "nearest") -> Tensor:
    """Nearest-neighbour resize of ``B x H x W`` integer labels to ``size`` (``nearest`` or
    ``nearest-exact``)."""
    return F.interpolate(labels[:, None].float(), size=size, mode=mode)[:, 0].long()


def ml_loss(z: Tensor, logdet: Tensor, base: DiagonalGaussian, labels: Tensor) -> Tensor:
    """Maximum-likelihood loss of one scale over inlier pixels (docs/method.md section 3).

    Per sample: the training log-density summed over inlier pixels plus the total log-det
    scaled by the fraction of inlier pixels, negated; then the mean over the batch.
    """
    grid = labels_to_grid(labels, tuple(z.shape[-2:]), "nearest-exact")
    valid = (grid == INLIER).to(z.dtype)
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
    """Pixel InfoNCE in supervised-contrastive form (docs/method.md section 3).

    ``emb_*``: unit-norm embeddings ``B x D x h x w``; ``labels_*``: labels at image size.
    Anchors are K outlier and K inlier pixels of the mixed images; the contrast set is the
    anchors plus K outlier and K inlier pixels of the outlier images, with the authors'
    K = min(max_samples, |mix outlier|, |mix inlier|, |out-image outlier|, and |out-image
    inlier| only when that pool is non-empty). K = 0 (e.g. an outlier image with no outlier
    pixel on the grid) gives a loss of 0.
    """
    d = emb_mix.shape[1]
    flat_mix = emb_mix.permute(0, 2, 3, 1).reshape(-1, d)
    flat_out = emb_out.permute(0, 2, 3, 1).reshape(-1, d)
    lab_mix = labels_to_grid(labels_mix, tuple(emb_mix.shape[-2:])).reshape(-1)
    lab_out = labels_to_grid(labels_out, tuple(emb_out.shape[-2:])).reshape(-1)
    pools = {
        ("mix", c): (lab_mix == c).nonzero()[:, 0] for c in (OUTLIER, INLIER)
    } | {("out", c): (lab_out == c).nonzero()[:, 0] for c in (OUTLIER, INLIER)}
    sizes = [max_samples] + [pools[key].numel() for key in (("mix", OUTLIER), ("mix", INLIER), ("out", OUTLIER))]
    if pools[("out", INLIER)].numel() > 0:
        sizes.append(pools[("out", INLIER)].numel())
    k = min(sizes)
    if k == 0:
        return emb_mix.sum() * 0.0
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
    their own positives); ``e = exp(dot / temperature)``. An anchor without positives adds 0
    and still counts in the mean (as the authors' code averages).
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
    return per_anchor.mean()


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


def lovasz_softmax_loss(logits: Tensor, labels: Tensor, ignore: int = IGNORE) -> Tensor:
    """Lovasz-softmax loss as the authors compute it: over non-ignored pixels, for every
    class present, the Lovasz extension of its Jaccard loss on ``|1[y = c] - p_c|``;
    summed over present classes and divided by the number of classes (present or not).

    ``logits``: ``B x K x H x W``; ``labels``: ``B x H x W`` class indices or ``ignore``.
    """
    classes = logits.shape[1]
    probs = logits.softmax(dim=1).permute(0, 2, 3, 1).reshape(-1, classes)
    flat = labels.reshape(-1)
    valid = flat != ignore
    probs, flat = probs[valid], flat[valid]
    loss = logits.sum() * 0.0
    if flat.numel() == 0:
        return loss
    for c in range(classes):
        fg = (flat == c).to(probs.dtype)
        if not bool(fg.any()):
            continue
        errors, order = (fg - probs[:, c]).abs().sort(descending=True)
        fg_sorted = fg[order]
        total = fg_sorted.sum()
        intersection = total - fg_sorted.cumsum(0)
        union = total + (1 - fg_sorted).cumsum(0)
        jaccard = 1.0 - intersection / union
        grad = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
        loss = loss + errors @ grad
    return loss / classes


def segmentation_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """The authors' ``use_seg`` term: logits upsampled bilinearly to the label size, then
    ``0.5 * Lovasz-softmax + 0.5 * cross-entropy`` over the inlier classes (255 ignored)."""
    logits = F.interpolate(logits, size=tuple(labels.shape[-2:]), mode="bilinear", align_corners=False)
    labels = labels.long()
    if bool((labels != IGNORE).any()):
        ce = F.cross_entropy(logits, labels, ignore_index=IGNORE)
    else:
        ce = logits.sum() * 0.0
    return 0.5 * lovasz_softmax_loss(logits, labels) + 0.5 * ce


@dataclass
class ObjectiveConfig:
    """Which objective and its weights: ``flowclas`` (alpha * ML + contrastive), ``ml``, ``outlier_nll``.

    ``use_seg``: add the authors' segmentation term (``segmentation_loss`` of the model's
    segmentation head on the mixed images' inlier classes; needs ``model.seg_classes`` and
    semantic labels, i.e. ``data.options.semantic`` on Cityscapes).
    """

    name: str = "flowclas"
    alpha: float = 1e-6
    temperature: float = 0.13
    max_samples: int = 512
    epsilon: float = -5.0
    use_seg: bool = False

    def __post_init__(self) -> None:
        if self.name not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.name!r}")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if self.use_seg and self.name != "flowclas":
            raise ConfigError(f"objective.use_seg needs the flowclas objective, got {self.name!r}")


def compute_loss(
    net,
    x_mix: Tensor,
    labels_mix: Tensor,
    x_out: Tensor | None,
    labels_out: Tensor | None,
    objective: ObjectiveConfig,
    generator: torch.Generator | None = None,
    chunk: int = 0,
    labels_seg: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """The selected objective summed over scales; returns (loss, its parts as floats).

    The encoder sees ``x_mix`` and ``x_out`` in one batch (docs/method.md section 3); inputs are
    normalised and already padded to the encoder's multiple; ``chunk`` as in
    ``FlowCLASNet.features``. With ``objective.use_seg``, ``labels_seg`` holds the mixed
    images' semantic classes (pasted pixels and void 255); the segmentation head runs on the
    whole batch's last-scale latent (so its BatchNorm sees both halves, as the authors') and
    its loss on the mixed half is added once.
    """
    use_out = objective.name == "flowclas" and x_out is not None
    batch = torch.cat([x_mix, x_out]) if use_out else x_mix
    n = x_mix.shape[0]
    total = x_mix.new_zeros(())
    parts = {"ml": 0.0, "contrastive": 0.0, "outlier_nll": 0.0, "segmentation": 0.0}
    feats = net.features(batch, chunk)
    if net.head is not None:  # heads of model/heads (cflow, uflow): training/head_losses.py
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
    if objective.use_seg:
        if net.seg_head is None or labels_seg is None:
            raise ValueError("objective.use_seg needs model.seg_classes > 0 and semantic labels (y_seg)")
        seg = segmentation_loss(net.seg_head(latents[-1][0])[:n], labels_seg)
        parts["segmentation"] = float(seg.detach())
        total = total + seg
    return total, parts
