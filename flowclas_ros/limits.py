"""The ranges every number in a model config, bundle or training recipe must lie in.

A config or bundle is input from anyone: ``flow.steps: 1000000000`` or ``projection_dim:
1e9`` would allocate or loop without end before anything else fails. The bounds are
generous for real use and sized so that what they allow still fits a Jetson-class board;
they are checked when a config is built (from a file, a bundle or ``--set``), before any
tensor exists. Keys are dotted paths into ``ModelConfig`` (``MODEL``) and ``TrainConfig``
(``TRAINING``); a value of ``None`` (an optional setting left out) is not checked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Range:
    """A closed interval of numbers, optionally open at either end."""

    low: float
    high: float
    low_open: bool = False
    high_open: bool = False

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is a finite number (not a bool) inside the interval."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def __str__(self) -> str:
        low, high = (f"{v:d}" if isinstance(v, int) else f"{v:g}" for v in (self.low, self.high))
        return f"{'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"


FRACTION = Range(0, 1)
POSITIVE_FRACTION = Range(0, 1, low_open=True, high_open=True)
INTERVAL_STEPS = Range(1, 10**8)
# synthetic camera bags: the last stamp (frames / rate seconds) must fit a header's int32 seconds
BAG_RATE = Range(0.01, 10_000)  # Hz
BAG_FRAMES = Range(1, 1_000_000)
METRIC_BINS = Range(2, 1_000_000)  # score bins of eval and replay: two int64 histograms, 16 MB at most

MODEL = {
    "flow.steps": Range(1, 64),
    "flow.hidden_ratio": Range(0, 16, low_open=True),
    "flow.clamp": Range(0, 16, low_open=True),
    "flow.seed": Range(0, 2**31 - 1),
    "projection_dim": Range(0, 4096),
    "seg_classes": Range(0, 1024),
    "threshold": FRACTION,
    "threshold_fpr": POSITIVE_FRACTION,
    "cflow.condition_dim": Range(4, 1024),
    "cflow.vectors": Range(1, 65536),
    "cflow.reference_momentum": Range(0, 1, high_open=True),
}
INPUT_SIDE = Range(16, 8192)  # encoder.input_size, each of height and width
MAX_INPUT_PIXELS = 4096 * 4096  # encoder.input_size, height times width
MAX_LAYERS = 32  # encoder.layers
MEAN = Range(-1000, 1000)  # each of mean's three values
STD = Range(1e-6, 1000)  # each of std's three values
REIN = {"token_length": Range(1, 1024), "rank": Range(1, 1024)}  # encoder.options.rein
MAX_FREE_FORM_VALUES = 10_000  # values, nested ones included, of a free-form mapping (options, training, metrics)

TRAINING = {
    "optim.lr": Range(0, 1, low_open=True),
    "optim.weight_decay": Range(0, 10),
    "optim.warmup": Range(0, 1, high_open=True),
    "optim.batch_size": Range(1, 4096),
    "optim.steps": INTERVAL_STEPS,
    "optim.grad_clip": Range(0, 1e6, low_open=True),
    "optim.eps": Range(0, 1, low_open=True),
    "optim.data_init": Range(0, 10**6),
    "run.seed": Range(0, 2**31 - 1),
    "run.devices": Range(1, 64),
    "run.log_every": INTERVAL_STEPS,
    "run.val_every": INTERVAL_STEPS,
    "run.checkpoint_every": INTERVAL_STEPS,
    "run.calibrate_fpr": POSITIVE_FRACTION,
    "run.bins": Range(2, 10**6),
    "data.resize": Range(0, 8, low_open=True),
    "data.val_fraction": Range(0, 1, high_open=True),
    "data.max_val_images": Range(1, 10**6),
    "data.workers": Range(0, 64),
    "objective.alpha": Range(0, 1e6),
    "objective.temperature": Range(0, 100, low_open=True),
    "objective.max_samples": Range(1, 65536),
    "objective.epsilon": Range(-1e6, 1e6),
}


def out_of_range(obj: Any, bounds: dict[str, Range]) -> str | None:
    """The first ``key must be in RANGE, got VALUE`` of ``obj``'s dotted attributes, or None."""
    for key, bound in bounds.items():
        value: Any = obj
        for part in key.split("."):
            value = getattr(value, part, None)
        if value is not None and not bound.contains(value):
            return f"{key} must be in {bound}, got {value!r}"
    return None
