"""Training configuration: a YAML recipe plus ``--set key=value`` overrides."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowclas_ros.limits import TRAINING, out_of_range
from flowclas_ros.model.config import (
    ConfigError,
    ModelConfig,
    apply_overrides,
    check_free_form,
    dataclass_from_dict,
    read_config_file,
    with_head_defaults,
)
from flowclas_ros.training.objectives import ObjectiveConfig

RECIPES = Path(__file__).parent / "recipes"


@dataclass
class DataConfig:
    """Where images come from.

    dataset: inlier training set (``folder``, ``allo``, ``cityscapes``); outliers: outlier
    source root (``folder`` layout or prepared COCO, per ``outlier_dataset``), or None for
    the ``ml`` objective; resize: factor applied to inlier images before cropping to the
    model input size (e.g. 0.5 so that crops match full frames resized at inference);
    val_fraction: share of training images held out, with outliers pasted
    deterministically, for validation, checkpoint selection and calibration; options:
    extra arguments of the inlier dataset (e.g. ``image_topic`` of a ``rosbag``).
    """

    dataset: str = "folder"
    root: str = ""
    outliers: str | None = None
    outlier_dataset: str = "folder"
    paste_recipe: str = "default"
    resize: float = 1.0
    val_fraction: float = 0.1
    max_val_images: int = 64
    workers: int = 0
    options: dict = field(default_factory=dict)
    auto_size: bool = False  # recipe without model.encoder.input_size: adopt the images' own (see adopt_input_size)


@dataclass
class OptimConfig:
    """AdamW (weight decay by the authors' name rule, ``trainer.decays``); linear warm-up then cosine decay."""

    lr: float = 1e-5
    weight_decay: float = 1e-5
    warmup: float = 0.1
    batch_size: int = 8
    steps: int = 1000
    precision: str = "auto"
    grad_clip: float | None = None
    eps: float = 1e-8
    data_init: int = 0  # inlier training images that initialise whitening and ActNorms (0: first batch)


@dataclass
class RunConfig:
    """Bookkeeping: seed, intervals in steps, processes, calibration target FPR."""

    seed: int = 0
    devices: int = 1
    log_every: int = 10
    val_every: int = 200
    checkpoint_every: int = 100
    calibrate_fpr: float = 0.05
    bins: int = 2000
    validate_init: bool = False  # validate the data-initialised model (optim.data_init) as step 0


@dataclass
class TrainConfig:
    """A whole training recipe."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        if problem := out_of_range(self, TRAINING):
            raise ConfigError(problem)
        check_free_form(self.data.options, "data.options")
        checks = [
            (self.optim.precision in ("auto", "fp32", "bf16", "fp16"), "optim.precision: auto, fp32, bf16 or fp16"),
            (self.optim.batch_size % self.run.devices == 0, "optim.batch_size (global) must divide by run.devices"),
            (self.objective.name == "ml" or bool(self.data.outliers), f"objective {self.objective.name} needs data.outliers"),
            (not self.objective.use_seg or self.model.seg_classes > 0,
             "objective.use_seg needs model.seg_classes > 0 (the segmentation head's class count)"),
            (not self.objective.use_seg or bool(self.data.options.get("semantic")),
             "objective.use_seg needs semantic labels: data.options.semantic: true (Cityscapes)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def to_dict(self) -> dict[str, Any]:
        """The recipe as plain values (for ``RUN/config.yaml``)."""
        return dataclasses.asdict(self)


def load_train_config(path: str | Path | None, overrides: Sequence[str | tuple[str, Any]] = ()) -> TrainConfig:
    """A recipe by file path or by name (``synthetic``, ``folder``, ``allo``, ``cityscapes``)."""
    data: dict[str, Any] = {}
    if path:
        file = Path(path)
        if not file.is_file() and (RECIPES / f"{path}.yaml").is_file():
            file = RECIPES / f"{path}.yaml"
        if not file.is_file():
            names = ", ".join(sorted(p.stem for p in RECIPES.glob("*.yaml")))
            raise ConfigError(f"cannot read recipe {path}: no such file or not a file (built-in recipes: {names})")
        data = read_config_file(file, "recipe")
    data = apply_overrides(data, list(overrides))
    adopt_input_size(data)
    if isinstance(data.get("model"), dict):
        data["model"] = with_head_defaults(data["model"])
    return dataclass_from_dict(TrainConfig, data, "")


AUTO_SIZE_DEFAULT = (240, 320)
AUTO_SIZE_MAX_SIDE = 1024


def adopt_input_size(data: dict[str, Any]) -> None:
    """With ``data.auto_size`` and no ``model.encoder.input_size`` given (recipe or override):
    the size of the ``folder`` training images when they are all one size with no side over
    1024 px, else 240x320 (small data trains in minutes on a CPU at that size)."""
    section = data.get("data")
    if not isinstance(section, dict) or not section.get("auto_size"):
        return
    model = data.setdefault("model", {})
    encoder = model.setdefault("encoder", {}) if isinstance(model, dict) else None
    if not isinstance(encoder, dict) or "input_size" in encoder:
        return
    size = AUTO_SIZE_DEFAULT
    folder = Path(str(section.get("root") or "")).expanduser() / "train" / "images"
    if section.get("dataset", "folder") == "folder" and folder.is_dir():
        from PIL import Image

        sizes = set()
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"):
                try:
                    with Image.open(path) as image:
                        sizes.add((image.height, image.width))
                except (OSError, Image.DecompressionBombError):  # unusable files are skipped when loaded
                    continue
            if len(sizes) > 1:
                break
        if len(sizes) == 1:
            (h, w), = sizes
            if 16 <= min(h, w) and max(h, w) <= AUTO_SIZE_MAX_SIDE:
                size = (h, w)
    encoder["input_size"] = list(size)
