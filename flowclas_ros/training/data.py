"""Training and validation samples: crops of inlier images with outliers pasted in.

Every sample is a pure function of (seed, epoch, index), so a run gives the same batches
whatever the number of processes or worker threads, and a resumed run continues exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from flowclas_ros.training.config import TrainConfig
from flowclas_ros.training.datasets import build_dataset, random_crop
from flowclas_ros.training.pasting import PastedSample, PasteRecipe, paste_outlier, save_grid


def to_tensor(image: np.ndarray, mean, std) -> torch.Tensor:
    """H x W x 3 uint8 -> normalised 3 x H x W float32."""
    x = torch.tensor(image).permute(2, 0, 1).float().div_(255.0)  # a copy: decoded images may be read-only
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def _rescale(image: np.ndarray, labels: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    if factor == 1.0:
        return image, labels
    h, w = labels.shape
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
    labels = np.asarray(Image.fromarray(labels).resize(size, Image.Resampling.NEAREST))
    return image, labels


@dataclass
class Split:
    """Indices of the inlier set used for training and for validation."""

    train: np.ndarray
    val: np.ndarray


def split_indices(count: int, val_fraction: float, max_val: int, seed: int) -> Split:
    """A seeded hold-out of ``val_fraction`` of the images (at most ``max_val``, at least 1 if any)."""
    order = np.random.default_rng([seed, 7]).permutation(count)
    n_val = min(max_val, int(round(count * val_fraction))) if val_fraction > 0 else 0
    if val_fraction > 0 and count > 1:
        n_val = max(n_val, 1)
    return Split(train=np.sort(order[n_val:]), val=np.sort(order[:n_val]))


class PastedSamples(Dataset):
    """Item ``(epoch, i)`` -> dict of normalised ``x_mix``, ``y_mix``, ``x_out``, ``y_out``
    (and ``y_seg``, the mixed image's semantic classes, with ``objective.use_seg``).

    ``i`` indexes ``indices`` (the training or validation part of the inlier set); outliers
    are drawn from ``outlier_indices`` of the outlier source. With no outlier source the
    mixed image is the plain crop and the outlier view is absent. An unusable inlier or
    outlier item is replaced by the next usable one of its dataset (``training.datasets``),
    a choice that depends only on the files: every batch is full and a resumed run draws the
    same samples as an uninterrupted one instead of failing at the same step again.
    """

    def __init__(self, config: TrainConfig, indices: np.ndarray, inliers, outliers=None,
                 outlier_indices: np.ndarray | None = None) -> None:
        self.config = config
        self.indices = indices
        self.inliers = inliers
        self.outliers = outliers
        if outliers is not None and outlier_indices is None:
            outlier_indices = np.arange(len(outliers))
        self.outlier_indices = outlier_indices
        self.size = tuple(config.model.encoder.input_size)
        self.recipe = PasteRecipe.for_dataset(config.data.paste_recipe)
        self.scale = config.data.resize

    def __len__(self) -> int:
        return len(self.indices)

    def paste(self, key: tuple[int, int]) -> PastedSample:
        """The uint8 sample of ``key`` before normalisation (no outlier source: nothing pasted)."""
        epoch, i = key
        rng = np.random.default_rng([self.config.run.seed, epoch, int(i)])
        image, labels = self.inliers[int(self.indices[i])][:2]
        image, labels = random_crop(*_rescale(image, labels, self.scale), self.size, rng)
        if self.outliers is None:
            return PastedSample(image, np.where(labels == 255, 255, 0).astype(np.uint8), None, None, 1.0, labels)
        pick = self.outlier_indices[int(rng.integers(len(self.outlier_indices)))]
        out_image, out_mask = self.outliers[int(pick)][:2]
        return paste_outlier(image, labels, out_image, out_mask, self.recipe, rng)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        s = self.paste(key)
        mean, std = self.config.model.mean, self.config.model.std
        item = {"x_mix": to_tensor(s.mix, mean, std), "y_mix": torch.from_numpy(s.mix_labels.astype(np.int64))}
        if s.out is not None:
            item["x_out"] = to_tensor(s.out, mean, std)
            item["y_out"] = torch.from_numpy(s.out_labels.astype(np.int64))
        if self.config.objective.use_seg:
            item["y_seg"] = torch.from_numpy(s.mix_classes.astype(np.int64))
        return item


def build_samples(config: TrainConfig) -> tuple[PastedSamples, PastedSamples]:
    """Training and validation samples for a recipe.

    Validation holds out inlier images and, when there are enough, outlier images too, so
    checkpoints are chosen on objects the model was not trained to push away.
    """
    data, seed = config.data, config.run.seed
    inliers = build_dataset(data.dataset, data.root, "train", **data.options)
    split = split_indices(len(inliers), data.val_fraction, data.max_val_images, seed)
    if not data.outliers:
        return PastedSamples(config, split.train, inliers), PastedSamples(config, split.val, inliers)
    outliers = build_dataset(data.outlier_dataset, data.outliers, "outliers")
    held_out = split_indices(len(outliers), data.val_fraction, len(outliers), seed + 1)
    if len(held_out.train) == 0 or len(held_out.val) == 0:
        held_out = Split(train=np.arange(len(outliers)), val=np.arange(len(outliers)))
    # maximum likelihood trains on plain inlier crops; validation always has pasted outliers
    train = (PastedSamples(config, split.train, inliers) if config.objective.name == "ml"
             else PastedSamples(config, split.train, inliers, outliers, held_out.train))
    return train, PastedSamples(config, split.val, inliers, outliers, held_out.val)


class StepBatches:
    """Batch sampler: for global step ``s`` the keys of this rank's share of the global batch.

    Epoch ``e`` visits a seeded permutation of the training samples; the global batch of
    step ``s`` is its next ``batch_size`` entries (wrapping into the next epoch), and rank
    ``r`` of ``world`` takes the ``r``-th contiguous chunk.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, start: int, stop: int, rank: int, world: int):
        if num_samples < 1:
            raise ValueError("no training samples")
        self.n, self.batch, self.seed = num_samples, batch_size, seed
        self.start, self.stop, self.rank, self.world = start, stop, rank, world
        self._epoch, self._order = -1, np.arange(0)

    def _key(self, position: int) -> tuple[int, int]:
        epoch, offset = divmod(position, self.n)
        if epoch != self._epoch:
            self._epoch, self._order = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return epoch, int(self._order[offset])

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self):
        share = self.batch // self.world
        for step in range(self.start, self.stop):
            first = step * self.batch + self.rank * share
            yield [self._key(p) for p in range(first, first + share)]


def write_pasting_preview(config: TrainConfig, path: Path, count: int) -> Path | None:
    """A grid of ``count`` pasted training samples at ``path``; None without outlier sources."""
    if not config.data.outliers:
        return None
    train_set, _ = build_samples(config)
    samples = [train_set.paste((0, i)) for i in range(min(count, len(train_set)))]
    if not samples or samples[0].out is None:
        return None
    save_grid(samples, str(path))
    return path
