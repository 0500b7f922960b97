"""The three objectives for the heads of ``flowclas_ros.model.heads`` (docs/heads.md).

``compute_loss`` (objectives.py) hands over here after encoding the batch. Each function
takes the features of ``x_mix`` (first ``n`` images) followed, for the flowclas objective,
by those of ``x_out``, and adds its terms to ``parts``.

* ``uflow``: the U-shaped flow gives per-scale ``(z, share of the log-det)`` maps, so the
  project's map losses apply unchanged (ML over inlier pixels, contrastive on the projected
  latents, outlier likelihood on outlier pixels), summed over scales.
* ``cflow``: the flow runs on sampled feature vectors, not maps (CFLOW-AD trains on random
  batches of vectors): per scale, ``cflow.vectors`` inlier vectors of the mixed images for the
  likelihood terms (and as many outlier vectors for the outlier-likelihood term), and for the
  contrastive term the same four pools and K as ``contrastive_loss``, all through the flow in
  one pass.
"""

from __future__ import annotations

import torch
from torch import Tensor

from flowclas_ros.training.objectives import (
    HEAD_LOSSES,
    INLIER,
    OUTLIER,
    ObjectiveConfig,
    contrastive_loss,
    labels_to_grid,
    ml_loss,
    outlier_nll_loss,
    supcon_loss,
)


def uflow_loss(net, feats: list[Tensor], n: int, labels_mix: Tensor, labels_out: Tensor | None,
               objective: ObjectiveConfig, generator: torch.Generator | None, parts: dict) -> Tensor:
    """The selected objective of the U-Flow head, summed over its output scales."""
    head = net.head
    total = feats[0].new_zeros(())
    for i, ((z, logdet), base) in enumerate(zip(head.latents(feats), head.bases)):
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
        proj = head.projections[i](z)
        con = contrastive_loss(proj[:n], labels_mix, proj[n:], labels_out, objective.temperature,
                               objective.max_samples, generator)
        parts["contrastive"] += float(con.detach())
        total = total + objective.alpha * ml + con
    return total


def _pick(pool: Tensor, k: int, generator: torch.Generator | None) -> Tensor:
    """``k`` distinct random entries of ``pool`` (all of them when it has fewer)."""
    order = torch.randperm(pool.numel(), generator=generator, device="cpu")[:k]
    return pool[order.to(pool.device)]


def _per_vector_nll(logp: Tensor, channels: int, form: str) -> Tensor:
    """Loss of each vector from its per-dimension log-likelihood: ``nll`` = ``-log p`` =
    ``-C * logp``; ``logsigmoid`` = ``-C * logsigmoid(logp)`` (CFLOW-AD's, scaled by C so that
    both agree where ``logp`` is very negative)."""
    if form == "logsigmoid":
        return -channels * torch.nn.functional.logsigmoid(logp)
    return -channels * logp


def cflow_loss(net, feats: list[Tensor], n: int, labels_mix: Tensor, labels_out: Tensor | None,
               objective: ObjectiveConfig, generator: torch.Generator | None, parts: dict) -> Tensor:
    """The selected objective of the CFLOW head on sampled vectors, summed over scales.

    ML term: an unbiased estimate, from ``cflow.vectors`` sampled inlier vectors, of the
    per-image sum over all inlier pixels of the per-vector loss (``cflow.ml_form``) -- the
    same quantity as ``ml_loss`` of the map heads, so ``objective.alpha`` keeps its meaning.
    Outlier likelihood: ``outlier_nll_loss``'s formula on sampled inlier and outlier vectors.
    """
    head = net.head
    options = net.config.cflow
    total = feats[0].new_zeros(())
    for s, (f, norm, flow, base) in enumerate(zip(feats, head.norms, head.flows, head.bases)):
        b, c, h, w = f.shape
        vectors = norm(f).permute(0, 2, 3, 1).reshape(-1, c)  # (b h w) x C
        grid_mix = labels_to_grid(labels_mix, (h, w)).reshape(-1)
        inliers = (grid_mix == INLIER).nonzero()[:, 0]
        outliers = (grid_mix == OUTLIER).nonzero()[:, 0]
        groups = {"ml": _pick(inliers, options.vectors, generator)}
        if objective.name == "outlier_nll":
            groups["out"] = _pick(outliers, options.vectors, generator)
        contrast = None
        if objective.name == "flowclas" and labels_out is not None:
            contrast = _contrast_indices(grid_mix, labels_to_grid(labels_out, (h, w)).reshape(-1), n * h * w,
                                         objective.max_samples, generator)
            if contrast is not None:
                groups["con"] = contrast[0]
        index = torch.cat(list(groups.values()))
        z, logdet = flow.vectors(vectors[index], (index // w) % h, index % w)
        logp = head.per_dimension(base, z[:, :, None, None], logdet[:, None, None])[:, 0, 0]
        pieces = dict(zip(groups, logp.split([g.numel() for g in groups.values()])))
        zs = dict(zip(groups, z.split([g.numel() for g in groups.values()])))
        if net.training:
            head.observe(s, pieces["ml"])
        if objective.name == "outlier_nll":
            term = -pieces["ml"].mean() if pieces["ml"].numel() else logp.sum() * 0.0
            if pieces["out"].numel():
                term = term + pieces["out"].clamp(min=objective.epsilon).mean()
            parts["outlier_nll"] += float(term.detach())
            total = total + term
            continue
        per_vector = _per_vector_nll(pieces["ml"], c, options.ml_form)
        ml = per_vector.mean() * (inliers.numel() / n) if per_vector.numel() else logp.sum() * 0.0
        parts["ml"] += float(ml.detach())
        if objective.name == "ml":
            total = total + ml
            continue
        con = logp.sum() * 0.0
        if contrast is not None:
            emb = head.projections[s](zs["con"][:, :, None, None])[:, :, 0, 0]
            k = contrast[1]
            labels = torch.cat([torch.full((k,), OUTLIER), torch.full((k,), INLIER)]).to(emb.device)
            con = supcon_loss(emb[: 2 * k], labels, emb, contrast[2], objective.temperature)
        parts["contrastive"] += float(con.detach())
        total = total + objective.alpha * ml + con
    return total


def _contrast_indices(grid_mix: Tensor, grid_out: Tensor, offset: int, max_samples: int,
                      generator: torch.Generator | None) -> tuple[Tensor, int, Tensor] | None:
    """Flat indices (into the whole batch's vectors) of the contrastive anchors (K mixed-image
    outliers, K mixed-image inliers) followed by the extra contrast samples (K outlier-image
    outliers and K outlier-image inliers), with K and the labels of all of them; None when
    the mixed images lack either class. K as ``contrastive_loss``: the smallest of
    ``max_samples`` and every non-empty pool."""
    pools = [
        (grid_mix == OUTLIER).nonzero()[:, 0],
        (grid_mix == INLIER).nonzero()[:, 0],
        (grid_out == OUTLIER).nonzero()[:, 0] + offset,
        (grid_out == INLIER).nonzero()[:, 0] + offset,
    ]
    if pools[0].numel() == 0 or pools[1].numel() == 0:
        return None
    k = min([max_samples] + [p.numel() for p in pools if p.numel() > 0])
    picked = [_pick(p, k, generator) for p in pools]
    labels = torch.cat([
        torch.full((picked[0].numel(),), OUTLIER), torch.full((picked[1].numel(),), INLIER),
        torch.full((picked[2].numel(),), OUTLIER), torch.full((picked[3].numel(),), INLIER),
    ]).to(grid_mix.device)
    return torch.cat(picked), k, labels


HEAD_LOSSES.update({"cflow": cflow_loss, "uflow": uflow_loss})
