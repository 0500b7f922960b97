"""The node's parameters: defaults, descriptions, ranges and choices, and their checks (no rclpy)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from flowclas_ros.runtime.backends import BACKENDS, PRECISIONS
from flowclas_ros.runtime.smoothing import CHOICES as SMOOTHING_CHOICES
from flowclas_ros.runtime.threads import MAX_THREADS
from flowclas_ros.vocabulary import MAX_FRAME_PIXELS


@dataclass(frozen=True)
class Parameter:
    """A node parameter: default, description, and an inclusive range or choices."""

    default: Any
    description: str
    range: tuple[float, float] | None = None
    choices: tuple[str, ...] = ()
    dynamic: bool = False  # changeable while the node runs

    def check(self, name: str, value: Any) -> str | None:
        """Why ``value`` is refused, or None when acceptable."""
        if isinstance(self.default, bool):
            return None if isinstance(value, bool) else f"{name} must be true or false"
        if isinstance(self.default, (int, float)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                return f"{name} must be a number"
            if isinstance(self.default, int) and not isinstance(value, int):
                return f"{name} must be an integer"
            if self.range and not self.range[0] <= value <= self.range[1]:
                return f"{name} must be in [{self.range[0]}, {self.range[1]}], got {value}"
            return None
        if not isinstance(value, str):
            return f"{name} must be a string"
        if self.choices and value not in self.choices:
            return f"{name} must be one of {', '.join(self.choices)}, got {value!r}"
        return None


PARAMETERS: dict[str, Parameter] = {
    "model": Parameter("", "model bundle directory"),
    "backend": Parameter("auto", "inference backend", choices=BACKENDS),
    "device": Parameter("cpu", "device, e.g. cpu or cuda:0"),
    "precision": Parameter("fp32", "inference precision", choices=tuple(PRECISIONS)),
    "threads": Parameter(0, "CPU threads for torch and ONNX Runtime (process-wide); 0 = one per CPU the process may use",
                         range=(0, MAX_THREADS)),
    "use_compressed": Parameter(False, "subscribe to image/compressed (sensor_msgs/CompressedImage)"),
    "qos_reliability": Parameter("best_effort", "image subscription reliability", choices=("best_effort", "reliable")),
    "qos_depth": Parameter(1, "image subscription queue depth", range=(1, 100)),
    "threshold": Parameter(-1.0, "mask threshold; -1 = the bundle's calibrated value", (-1.0, 1.0), dynamic=True),
    # 16 px (a 4x4 blob): below that a "hazard" is a few noisy pixels of the score map, not an
    # object a robot can act on; 0 reports every connected speck.
    "min_hazard_area": Parameter(16, "smallest reported hazard region, pixels (0 = all)", range=(0, 100_000_000)),
    # 4096 x 3072 = 12.6 MP: above every common robot camera (1080p 2.1 MP, 4K 8.3 MP, 12 MP
    # sensors), and one such frame costs ~38 MB RGB plus ~50 MB of score: a frame claiming
    # more is refused from its header, before anything is decoded.
    "max_input_pixels": Parameter(4096 * 3072, "largest input image accepted, width x height pixels (checked "
                                  "before decoding)", range=(1, MAX_FRAME_PIXELS)),
    "frame_id": Parameter("", "frame_id of label_info until the first image arrives; empty = the namespace"),
    "smoothing": Parameter("none", "score smoothing over regions", choices=SMOOTHING_CHOICES),
    "overlay": Parameter(True, "publish anomaly_overlay (computed only while subscribed)", dynamic=True),
    "max_rate": Parameter(0.0, "most frames processed per second; 0 = as fast as the model", (0.0, 1000.0)),
}


def check_parameters(changes: dict[str, Any], running: bool = True) -> str | None:
    """Why a set of parameter changes is refused (first reason), or None."""
    for name, value in changes.items():
        spec = PARAMETERS.get(name)
        if spec is None:
            continue  # not ours (e.g. use_sim_time)
        if running and not spec.dynamic:
            return f"{name} cannot change while the node runs; restart the node"
        if (reason := spec.check(name, value)) is not None:
            return reason
    return None
