"""Live-camera logic shared by the ROS node and the realtime replay, free of ROS.

Both follow one policy: a single worker runs the model; a frame arriving while it is busy
waits in a slot of depth one, and a newer arrival replaces the waiting frame (it is
dropped, never queued). ``LatestSlot`` is that slot for threads (the node);
``KeepLatestScheduler`` replays it on a simulated clock (``flowclas replay --realtime``).
``LiveStats`` holds the counters, rates and latencies that go to /diagnostics, and
``PARAMETERS`` the node's parameters with their ranges.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Processed(Generic[T, R]):
    """One frame the worker ran: when it arrived, started and finished (seconds)."""

    item: T
    result: R
    arrival: float
    start: float
    finish: float

    @property
    def latency(self) -> float:
        """Arrival to publish, seconds."""
        return self.finish - self.arrival


class KeepLatestScheduler(Generic[T, R]):
    """The node's frame dropping on a simulated clock.

    ``run(item) -> (result, seconds)`` processes a frame and says how long it took
    (measured wall time in a replay, fixed numbers in a test). No real waiting happens: the
    worker's clock advances by those durations, so a replay is as fast as the model and
    deterministic given the durations. ``min_interval`` (1 / max_rate) spaces the starts.
    Feed arrivals in time order with ``offer``; call ``flush`` at the end.
    """

    def __init__(self, run: Callable[[T], tuple[R, float]], min_interval: float = 0.0) -> None:
        self.run = run
        self.min_interval = min_interval
        self.free_at = -math.inf
        self.waiting: tuple[float, T] | None = None
        self.last_arrival = -math.inf
        self.offered = self.dropped = 0

    def offer(self, arrival: float, item: T) -> list[Processed[T, R]]:
        """A frame arrives; returns the frames that ran before or because of it (0 to 2)."""
        if arrival < self.last_arrival:
            raise ValueError(f"arrivals must be in time order ({arrival} after {self.last_arrival})")
        self.last_arrival = arrival
        self.offered += 1
        done = []
        if self.waiting is not None and self.free_at <= arrival:
            done.append(self._start(*self.waiting, self.free_at))
            self.waiting = None
        if self.free_at <= arrival:
            done.append(self._start(arrival, item, arrival))
        else:
            self.dropped += self.waiting is not None
            self.waiting = (arrival, item)
        return done

    def flush(self) -> list[Processed[T, R]]:
        """Run the frame still waiting when the input ends."""
        if self.waiting is None:
            return []
        waiting, self.waiting = self.waiting, None
        return [self._start(*waiting, self.free_at)]

    def _start(self, arrival: float, item: T, start: float) -> Processed[T, R]:
        result, seconds = self.run(item)
        finish = start + max(0.0, seconds)
        self.free_at = max(finish, start + self.min_interval)
        return Processed(item, result, arrival, start, finish)


class LatestSlot(Generic[T]):
    """A thread-safe slot of depth one: ``put`` replaces a waiting item, ``take`` blocks."""

    def __init__(self) -> None:
        self._item: T | None = None
        self._closed = False
        self._ready = threading.Condition()

    def put(self, item: T) -> bool:
        """Leave ``item`` for the worker; True when it replaced (dropped) a waiting one."""
        with self._ready:
            replaced = self._item is not None
            self._item = item
            self._ready.notify()
            return replaced

    def take(self, timeout: float | None = None) -> T | None:
        """The waiting item (emptying the slot); None on timeout or once closed."""
        with self._ready:
            self._ready.wait_for(lambda: self._item is not None or self._closed, timeout)
            item, self._item = self._item, None
            return None if self._closed else item

    def close(self) -> None:
        """Wake and stop every ``take``."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()


class RateMeter:
    """Events per second over the last ``window`` seconds of a caller-given clock."""

    def __init__(self, window: float = 5.0) -> None:
        self.window = window
        self._times: deque[float] = deque()

    def tick(self, now: float) -> None:
        self._times.append(now)
        self._trim(now)

    def rate(self, now: float) -> float:
        self._trim(now)
        if len(self._times) < 2:
            return 0.0
        span = self._times[-1] - self._times[0]
        return (len(self._times) - 1) / span if span > 0 else 0.0

    def _trim(self, now: float) -> None:
        while self._times and self._times[0] < now - self.window:
            self._times.popleft()


class Latencies:
    """Latency samples (seconds), the last ``maxlen`` of them (all when None)."""

    def __init__(self, maxlen: int | None = 1000) -> None:
        self._samples: deque[float] = deque(maxlen=maxlen)

    def add(self, seconds: float) -> None:
        self._samples.append(seconds)

    def __len__(self) -> int:
        return len(self._samples)

    def percentiles_ms(self, qs: tuple[int, ...] = (50, 90, 99)) -> dict[str, float]:
        """``{"p50": ms, ..., "max": ms}``; empty without samples."""
        if not self._samples:
            return {}
        samples = np.fromiter(self._samples, dtype=np.float64, count=len(self._samples)) * 1e3
        out = {f"p{q}": float(v) for q, v in zip(qs, np.percentile(samples, qs))}
        out["max"] = float(samples.max())
        return out


@dataclass
class LiveStats:
    """Counters, rates and latencies of a running detector, on a caller-given clock."""

    backend: str = ""
    device: str = ""
    received: int = 0
    processed: int = 0
    dropped: int = 0
    rejected: int = 0
    input_rate: RateMeter = field(default_factory=RateMeter)
    output_rate: RateMeter = field(default_factory=RateMeter)
    latency: Latencies = field(default_factory=Latencies)

    def values(self, now: float) -> dict[str, str]:
        """Key/value strings for a diagnostic_msgs/DiagnosticStatus."""
        values = {
            "backend": self.backend,
            "device": self.device,
            "input_rate_hz": f"{self.input_rate.rate(now):.2f}",
            "output_rate_hz": f"{self.output_rate.rate(now):.2f}",
            "received": str(self.received),
            "processed": str(self.processed),
            "dropped": str(self.dropped),
            "rejected": str(self.rejected),
        }
        values.update({f"latency_{k}_ms": f"{v:.1f}" for k, v in self.latency.percentiles_ms().items()})
        return values

    def level(self) -> tuple[int, str]:
        """DiagnosticStatus level (0 OK, 1 WARN) and message."""
        if self.received and not self.processed:
            return 1, "no frame processed yet"
        if self.rejected:
            return 1, f"{self.rejected} malformed frame(s) rejected"
        return 0, "running"


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
    "backend": Parameter(
        "auto", "inference backend", choices=("auto", "torch", "torch-export", "onnxruntime", "tensorrt")
    ),
    "device": Parameter("cpu", "device, e.g. cpu or cuda:0"),
    "precision": Parameter("fp32", "inference precision", choices=("fp32", "fp16", "bf16")),
    "use_compressed": Parameter(False, "subscribe to image/compressed (sensor_msgs/CompressedImage)"),
    "qos_reliability": Parameter("best_effort", "image subscription reliability", choices=("best_effort", "reliable")),
    "qos_depth": Parameter(1, "image subscription queue depth", range=(1, 100)),
    "threshold": Parameter(-1.0, "mask threshold; -1 = the bundle's calibrated value", (-1.0, 1.0), dynamic=True),
    "min_hazard_area": Parameter(0, "smallest reported hazard region, pixels", range=(0, 100_000_000)),
    "smoothing": Parameter("none", "score smoothing over regions", choices=("none", "superpixels", "components")),
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
