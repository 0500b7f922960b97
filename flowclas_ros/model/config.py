"""The model configuration: what a bundle's ``config.json`` holds, with strict validation."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from flowclas_ros.errors import FlowclasError
from flowclas_ros.model.encoders.base import EncoderConfig
from flowclas_ros.model.encoders.efficientnet import LITE_MEAN, LITE_STD

# The head registry: ``flowclas_ros.model.heads`` builds the modules of the heads after the
# first two (the conv-flow heads live in network.py); ``FlowConfig.for_head`` holds defaults.
HEADS = ("flowclas", "fastflow", "cflow", "uflow")
CFLOW_ML_FORMS = ("nll", "logsigmoid")
SCORE_VARIANTS = ("prob", "logp")
SQUASHES = ("batch_sigmoid", "clamp", "sigmoid")


class ConfigError(FlowclasError):
    """A configuration value is missing, unknown or out of range."""


@dataclass
class FlowConfig:
    """Flow head settings (docs/method.md 2.3-2.4). ``learnable_base`` False = standard normal."""

    steps: int = 16
    subnet: str = "residual"
    hidden_ratio: float = 1.0
    clamp: float = 2.0
    learnable_base: bool = True
    seed: int = 0
    whiten: bool = False  # a data-initialised whitening before the steps (flow.Whitening); not in the paper

    @classmethod
    def for_head(cls, head: str) -> "FlowConfig":
        """Defaults of a named head: ``flowclas`` (paper) or ``fastflow`` (FastFlow's own)."""
        if head == "fastflow":
            return cls(steps=8, subnet="simple", learnable_base=False)
        if head == "flowclas":
            return cls()
        if head == "cflow":  # CFLOW-AD: 8 blocks, Linear d -> 2d -> out, clamp 1.9, N(0, I)
            return cls(steps=8, subnet="simple", hidden_ratio=2.0, clamp=1.9, learnable_base=False)
        if head == "uflow":  # U-Flow: 4 steps per scale, kernels 3/1, clamp 2, N(0, I)
            return cls(steps=4, subnet="simple", hidden_ratio=1.0, clamp=2.0, learnable_base=False)
        raise ConfigError(f"unknown head {head!r}; use one of {HEADS}")


@dataclass
class CflowOptions:
    """Settings of the ``cflow`` head beyond ``flow`` (docs/heads.md).

    condition_dim: length of the 2D sinusoidal positional encoding (a multiple of 4);
    vectors: feature vectors per scale and training step for the likelihood terms (the
    paper's N = 256; the contrastive term samples its own up to ``objective.max_samples``);
    ml_form: the per-vector likelihood loss, ``nll`` (``-log p``, the project's ML form) or
    ``logsigmoid`` (the paper's ``-logsigmoid`` of the per-dimension log-likelihood, times C);
    reference_momentum: EMA momentum of the reference log-likelihood the score is taken
    relative to (the largest per-dimension log-likelihood of each step's inlier vectors).
    """

    condition_dim: int = 128
    vectors: int = 256
    ml_form: str = "nll"
    reference_momentum: float = 0.9


@dataclass
class ModelConfig:
    """Everything needed to rebuild the network, plus calibration and provenance.

    score: ``prob`` (1 - mean over scales of p) or ``logp`` (-mean of log p);
    squash: how raw scores are mapped into [0, 1]: ``batch_sigmoid`` (the authors': per
        forward batch, only when a value leaves [0, 1]), ``clamp`` or ``sigmoid``;
    seg_classes: > 0 adds the authors' segmentation head (that many classes) on the last
        scale's latent, trained with ``objective.use_seg``; 0 = none;
    threshold / threshold_fpr: calibrated mask threshold and the inlier FPR it was chosen for.
    """

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    mean: tuple[float, float, float] = LITE_MEAN
    std: tuple[float, float, float] = LITE_STD
    head: str = "flowclas"
    flow: FlowConfig = field(default_factory=FlowConfig)
    projection_dim: int = 128
    seg_classes: int = 0
    cflow: CflowOptions | None = None  # head "cflow" only; filled with defaults when missing
    score: str = "prob"
    squash: str = "batch_sigmoid"
    threshold: float = 0.5
    threshold_fpr: float | None = None
    training: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.head == "cflow" and self.cflow is None:
            self.cflow = CflowOptions()
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError on any value out of its range."""
        checks = [
            (self.head in HEADS, f"head must be one of {HEADS}, got {self.head!r}"),
            (self.score in SCORE_VARIANTS, f"score must be one of {SCORE_VARIANTS}, got {self.score!r}"),
            (self.squash in SQUASHES, f"squash must be one of {SQUASHES}, got {self.squash!r}"),
            (self.flow.steps >= 1, f"flow.steps must be >= 1, got {self.flow.steps}"),
            (self.flow.subnet in ("residual", "simple"), f"flow.subnet must be residual or simple, got {self.flow.subnet!r}"),
            (self.flow.clamp > 0, f"flow.clamp must be > 0, got {self.flow.clamp}"),
            (self.flow.hidden_ratio > 0, f"flow.hidden_ratio must be > 0, got {self.flow.hidden_ratio}"),
            (self.projection_dim >= 0, f"projection_dim must be >= 0, got {self.projection_dim}"),
            (self.seg_classes >= 0, f"seg_classes must be >= 0, got {self.seg_classes}"),
            (0.0 <= self.threshold <= 1.0, f"threshold must be in [0, 1], got {self.threshold}"),
            (len(self.mean) == 3 and len(self.std) == 3, "mean and std need 3 values (RGB)"),
            (all(s > 0 for s in self.std), f"std values must be > 0, got {self.std}"),
            (len(self.encoder.input_size) == 2 and all(16 <= s <= 8192 for s in self.encoder.input_size),
             f"encoder.input_size must be [height, width] in 16..8192, got {self.encoder.input_size}"),
            (len(self.encoder.layers) >= 1, "encoder.layers needs at least one layer"),
        ]
        if self.cflow is not None:
            c = self.cflow
            checks += [
                (c.condition_dim > 0 and c.condition_dim % 4 == 0,
                 f"cflow.condition_dim must be a positive multiple of 4, got {c.condition_dim}"),
                (c.vectors >= 1, f"cflow.vectors must be >= 1, got {c.vectors}"),
                (c.ml_form in CFLOW_ML_FORMS, f"cflow.ml_form must be one of {CFLOW_ML_FORMS}, got {c.ml_form!r}"),
                (0.0 <= c.reference_momentum < 1.0, f"cflow.reference_momentum must be in [0, 1), got {c.reference_momentum}"),
            ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        """Build from a dict, rejecting unknown keys and values of the wrong type."""
        return dataclass_from_dict(cls, data, "")


def dataclass_from_dict(cls: type, data: Any, where: str) -> Any:
    """The dataclass ``cls`` from a mapping, every value checked against its type hint; ConfigError names ``where``."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown key(s) in {where or 'config'}: {', '.join(unknown)}")
    kwargs = {k: _coerce(hints[k], v, f"{where}{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where or 'config'}: {exc}") from None


def _float(value: Any, where: str) -> float:
    """A number; also a numeric string, since YAML 1.1 reads ``1e-5`` (no dot) as a string."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    try:
        if isinstance(value, str):
            return float(value)
    except ValueError:
        pass
    raise ConfigError(f"{where}: expected a number, got {value!r}")


def _coerce(hint: Any, value: Any, where: str) -> Any:
    """Check ``value`` against a type hint, converting lists to tuples and dicts to dataclasses."""
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return dataclass_from_dict(hint, value, where + ".")
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: value {value!r} does not fit {hint}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        items = [_coerce(args[0], v, where) for v in value] if args else list(value)
        return tuple(items) if origin is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return value
    if hint is float:
        return _float(value, where)
    if hint in (int, str, bool):
        if type(value) is not hint:
            raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
        return value
    return value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` overrides (values parsed as YAML) to a nested dict copy."""
    import copy

    import yaml

    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a mapping")
        node[leaf] = yaml.safe_load(raw)
    return data


def load_model_config(path: str | None, overrides: Sequence[str] = ()) -> ModelConfig:
    """A ModelConfig from a YAML file (or the defaults) plus ``key=value`` overrides."""
    import yaml

    data: dict[str, Any] = {}
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                data = yaml.safe_load(f) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config {path} is not valid YAML: {exc}") from None
    return ModelConfig.from_dict(with_head_defaults(apply_overrides(data, list(overrides))))


def with_head_defaults(model: dict[str, Any]) -> dict[str, Any]:
    """Fill ``flow`` with the named head's defaults, then the flow keys given."""
    if "head" not in model:
        return model
    flow = model.get("flow") or {}
    if not isinstance(flow, dict):
        raise ConfigError("flow must be a mapping")
    return {**model, "flow": {**dataclasses.asdict(FlowConfig.for_head(model["head"])), **flow}}
