"""The model configuration: what a bundle's ``config.json`` holds, with strict validation."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowclas_ros import limits
from flowclas_ros.errors import UserError
from flowclas_ros.model.encoders.base import EncoderConfig, check_encoder
from flowclas_ros.model.encoders.efficientnet import LITE_MEAN, LITE_STD
from flowclas_ros.structured import expect_mapping, load_yaml, read_yaml

# The head registry: ``flowclas_ros.model.heads`` builds the modules of the heads after the
# first two (the conv-flow heads live in network.py); ``FlowConfig.for_head`` holds defaults.
HEADS = ("flowclas", "fastflow", "cflow", "uflow")
CFLOW_ML_FORMS = ("nll", "logsigmoid")
SCORE_VARIANTS = ("prob", "logp")
SQUASHES = ("batch_sigmoid", "clamp", "sigmoid")


class ConfigError(UserError):
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
        """Raise ConfigError on any value out of its range (flowclas_ros.limits)."""
        enc = self.encoder
        checks = [
            (self.head in HEADS, f"head must be one of {HEADS}, got {self.head!r}"),
            (self.score in SCORE_VARIANTS, f"score must be one of {SCORE_VARIANTS}, got {self.score!r}"),
            (self.squash in SQUASHES, f"squash must be one of {SQUASHES}, got {self.squash!r}"),
            (self.flow.subnet in ("residual", "simple"), f"flow.subnet must be residual or simple, got {self.flow.subnet!r}"),
            (len(self.mean) == 3 and len(self.std) == 3, "mean and std need 3 values (RGB)"),
            (all(limits.MEAN.contains(m) for m in self.mean), f"mean values must be in {limits.MEAN}, got {self.mean}"),
            (all(limits.STD.contains(s) for s in self.std), f"std values must be in {limits.STD}, got {self.std}"),
            (len(enc.input_size) == 2 and all(limits.INPUT_SIDE.contains(s) and isinstance(s, int) for s in enc.input_size)
             and enc.input_size[0] * enc.input_size[1] <= limits.MAX_INPUT_PIXELS,
             f"encoder.input_size must be [height, width], each an integer in {limits.INPUT_SIDE} and at most "
             f"{limits.MAX_INPUT_PIXELS} pixels in all, got {enc.input_size}"),
            (1 <= len(enc.layers) <= limits.MAX_LAYERS,
             f"encoder.layers needs 1 to {limits.MAX_LAYERS} layers, got {len(enc.layers)}"),
        ]
        if self.cflow is not None:
            c = self.cflow
            checks += [
                (c.condition_dim % 4 == 0, f"cflow.condition_dim must be a positive multiple of 4, got {c.condition_dim}"),
                (c.ml_form in CFLOW_ML_FORMS, f"cflow.ml_form must be one of {CFLOW_ML_FORMS}, got {c.ml_form!r}"),
            ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        if problem := limits.out_of_range(self, limits.MODEL):
            raise ConfigError(problem)
        check_free_form(enc.options, "encoder.options")
        check_free_form(self.training, "training")
        check_free_form(self.metrics, "metrics")
        try:
            check_encoder(enc)
        except ValueError as exc:
            raise ConfigError(f"encoder: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> "ModelConfig":
        """Build from a dict, rejecting anything else, unknown keys and values of the wrong type."""
        return dataclass_from_dict(cls, data, "")


_TYPE_NAMES = {int: "an integer", str: "a string", bool: "true or false"}


def dataclass_from_dict(cls: type, data: Any, where: str) -> Any:
    """The dataclass ``cls`` from a mapping, every value checked against its type hint; ConfigError names ``where``."""
    name = where.rstrip(".") or "config"
    if not isinstance(data, dict):
        raise ConfigError(f"{name} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in data if k not in names)
    if unknown:
        raise ConfigError(f"unknown key(s) in {name}: {_clip(', '.join(unknown))}")
    kwargs = {k: _coerce(hints[k], v, f"{where}{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def check_free_form(value: dict, where: str) -> None:
    """Raise ConfigError unless the free-form mapping ``value`` holds plain JSON values (names as
    keys, finite numbers) and at most ``limits.MAX_FREE_FORM_VALUES`` of them, nested ones (and
    repeats of a YAML alias) counted."""
    stack: list[Any] = [value]
    count = 0
    while stack:
        item = stack.pop()
        count += 1
        if count > limits.MAX_FREE_FORM_VALUES:
            raise ConfigError(f"{where} holds more than {limits.MAX_FREE_FORM_VALUES} values")
        if isinstance(item, dict):
            if not all(isinstance(k, str) for k in item):
                raise ConfigError(f"{where}: keys must be names, got {_short(next(k for k in item if not isinstance(k, str)))}")
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, float) and not math.isfinite(item):
            raise ConfigError(f"{where}: holds the non-finite number {item}")
        elif item is not None and not isinstance(item, (str, int, float)):
            raise ConfigError(f"{where}: holds {type(item).__name__} {_short(item)}; only names, numbers, lists and mappings")


def _float(value: Any, where: str) -> float:
    """A finite number; also a numeric string, since YAML 1.1 reads ``1e-5`` (no dot) as a string."""
    number = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value) if abs(value) < 1e300 else math.inf
    elif isinstance(value, str) and len(value) <= 64:
        try:
            number = float(value)
        except ValueError:
            pass
    if number is None:
        raise ConfigError(f"{where}: expected a number, got {_short(value)}")
    if not math.isfinite(number):
        raise ConfigError(f"{where}: expected a finite number, got {_short(value)}")
    return number


def _short(value: Any) -> str:
    return _clip(repr(value))


def _clip(text: str) -> str:
    return text if len(text) <= 60 else text[:57] + "..."


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
            raise ConfigError(f"{where}: expected a list, got {_short(value)}")
        fixed = origin is tuple and len(args) > 1 and args[-1] is not Ellipsis
        if fixed and len(value) != len(args):
            raise ConfigError(f"{where}: expected a list of {len(args)} values, got {len(value)}")
        if len(value) > limits.MAX_FREE_FORM_VALUES:
            raise ConfigError(f"{where}: more than {limits.MAX_FREE_FORM_VALUES} values")
        items = [_coerce(args[0], v, where) for v in value] if args else list(value)
        return tuple(items) if origin is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of names to values, got {_short(value)}")
        return value
    if hint is float:
        return _float(value, where)
    if hint in (int, str, bool):
        if type(value) is not hint:
            raise ConfigError(f"{where}: expected {_TYPE_NAMES[hint]}, got {_short(value)}")
        return value
    return value


def apply_overrides(data: dict[str, Any], overrides: list[str | tuple[str, Any]]) -> dict[str, Any]:
    """Apply overrides to a nested dict copy: ``dotted.key=value`` strings (``--set``: the value
    parsed as YAML) or ``(dotted.key, value)`` pairs (a flag's value, taken as it is: a folder
    named ``null`` or ``data #1`` stays that string)."""
    import copy

    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = (item[0], "=", "") if isinstance(item, tuple) else item.partition("=")
        parts = key.split(".")
        if not sep or not all(parts):
            raise ConfigError(f"--set {_short(str(item))} is not of the form dotted.key=value")
        node = data
        *parents, leaf = parts
        for part in parents:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {part} is not a mapping")
        if isinstance(item, tuple):
            node[leaf] = item[1]
            continue
        try:
            node[leaf] = load_yaml(raw, f"--set {key}")
        except UserError as exc:
            raise ConfigError(str(exc)) from None
    return data


def read_config_file(path: str | Path, what: str) -> dict[str, Any]:
    """The mapping in the YAML file ``path`` (empty when the file is); ``what`` names it in errors."""
    try:
        return expect_mapping(read_yaml(path), f"{what} {path}")
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except UserError as exc:
        raise ConfigError(str(exc)) from None


def load_model_config(path: str | None, overrides: Sequence[str] = ()) -> ModelConfig:
    """A ModelConfig from a YAML file (or the defaults) plus ``key=value`` overrides."""
    data = read_config_file(path, "config") if path else {}
    return ModelConfig.from_dict(with_head_defaults(apply_overrides(data, list(overrides))))


def with_head_defaults(model: dict[str, Any]) -> dict[str, Any]:
    """Fill ``flow`` with the named head's defaults, then the flow keys given."""
    if "head" not in model:
        return model
    flow = model.get("flow") or {}
    if not isinstance(flow, dict):
        raise ConfigError("flow must be a mapping")
    return {**model, "flow": {**dataclasses.asdict(FlowConfig.for_head(model["head"])), **flow}}
