"""Counters, rates and latencies of a running detector (node, replay), thread-safe.

One :class:`FrameStats` counts every frame event once: the caller records arrivals, drops,
publications and latencies; the frame pipeline records rejections (by reason) and processed
frames. The node's subscription callback, its worker and its diagnostics timer all touch the
same object, so every update and every read holds one lock.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable

import numpy as np


class RateMeter:
    """Events per second over the last ``window`` seconds of a caller-given clock (not locked)."""

    def __init__(self, window: float = 5.0) -> None:
        self.window = window
        self._times: deque[float] = deque()

    def tick(self, now: float) -> None:
        """Record one event at ``now`` (seconds)."""
        self._times.append(now)
        self._trim(now)

    def rate(self, now: float) -> float:
        """Events per second in the window ending at ``now``."""
        self._trim(now)
        if len(self._times) < 2:
            return 0.0
        span = self._times[-1] - self._times[0]
        return (len(self._times) - 1) / span if span > 0 else 0.0

    def _trim(self, now: float) -> None:
        while self._times and self._times[0] < now - self.window:
            self._times.popleft()


class Latencies:
    """Latency samples (seconds), the last ``maxlen`` of them (all when None; not locked)."""

    def __init__(self, maxlen: int | None = 1000) -> None:
        self._samples: deque[float] = deque(maxlen=maxlen)

    def add(self, seconds: float) -> None:
        """Record one sample."""
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


MAX_STAMP_AGE = 60.0  # seconds; a larger (or negative) header-stamp age means unsynchronised clocks


class FrameStats:
    """Frame counters of one detector, on a caller-given clock (seconds).

    Rates and latencies take ``now`` from the caller. Rejections are remembered on ``clock``
    (default ``time.monotonic``) for ``reject_window`` seconds: :meth:`level` warns only about
    rejections that recent, so one bad frame does not keep the diagnostics at WARN forever.
    """

    def __init__(self, backend: str = "", device: str = "", latency_samples: int | None = 1000,
                 reject_window: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.backend = backend
        self.device = device
        self.received = self.processed = self.dropped = self.rejected = 0
        self.rejected_by_reason: Counter[str] = Counter()
        self.input_rate = RateMeter()
        self.output_rate = RateMeter()
        self.latency = Latencies(latency_samples)
        self.stamp_age = Latencies(latency_samples)
        self.reject_window = reject_window
        self.clock = clock
        self._recent_rejects: deque[float] = deque()
        self._lock = threading.Lock()

    def receive(self, now: float) -> None:
        """A frame arrived."""
        with self._lock:
            self.received += 1
            self.input_rate.tick(now)

    def drop(self, count: int = 1) -> None:
        """Frames replaced by a newer one before they ran."""
        with self._lock:
            self.dropped += count

    def reject(self, reason: str) -> int:
        """A frame refused for ``reason``; returns how many have been refused for it so far."""
        with self._lock:
            self.rejected += 1
            self.rejected_by_reason[reason] += 1
            self._recent_rejects.append(self.clock())
            return self.rejected_by_reason[reason]

    def _recent(self, now: float) -> int:
        while self._recent_rejects and self._recent_rejects[0] < now - self.reject_window:
            self._recent_rejects.popleft()
        return len(self._recent_rejects)

    def process(self) -> None:
        """A frame went through the model and produced its messages."""
        with self._lock:
            self.processed += 1

    def publish(self, now: float, latency: float | None = None, stamp_age: float | None = None) -> None:
        """A frame's outputs went out at ``now``; ``latency`` in seconds (receipt to publish)
        when known; ``stamp_age`` (now minus the header stamp) is kept only when plausible
        (0..60 s: the camera's clock is then close enough to ours to mean something)."""
        with self._lock:
            self.output_rate.tick(now)
            if latency is not None:
                self.latency.add(latency)
            if stamp_age is not None and 0.0 <= stamp_age <= MAX_STAMP_AGE:
                self.stamp_age.add(stamp_age)

    def values(self, now: float) -> dict[str, str]:
        """Key/value strings for a diagnostic_msgs/DiagnosticStatus."""
        with self._lock:
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
            if len(self.stamp_age):
                values["stamp_age_ms"] = f"{self.stamp_age.percentiles_ms((50,))['p50']:.1f}"
        return values

    def level(self, now: float | None = None) -> tuple[int, str]:
        """DiagnosticStatus level (0 OK, 1 WARN) and message; ``now`` on ``clock`` (default: its time)."""
        with self._lock:
            recent = self._recent(self.clock() if now is None else now)
            if self.received and not self.processed:
                return 1, "no frame processed yet"
            if recent:
                return 1, f"{recent} malformed frame(s) rejected in the last {self.reject_window:g} s"
            return 0, "running"
