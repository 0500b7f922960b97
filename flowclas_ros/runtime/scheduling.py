"""The live-camera frame policy, shared by the ROS node and ``flowclas replay --realtime``.

A single worker runs the model; a frame arriving while it is busy waits in a slot of depth
one, and a newer arrival replaces the waiting frame (it is dropped, never queued).
:class:`LatestSlot` is that slot for threads (the node); :class:`KeepLatestScheduler`
replays the same policy on a simulated clock (replay).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

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
