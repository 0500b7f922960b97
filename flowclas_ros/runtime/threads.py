"""CPU threads for torch and ONNX Runtime, chosen in one place.

On a robot computer the cores are shared with other processes. Two settings decide how
badly a torch process suffers from that (``benchmarks/contention.py``, numbers in
``benchmarks/README.md``):

* OpenMP's wait policy. torch's CPU build runs its intra-op threads on GNU OpenMP, whose
  threads busy-wait at the end of every parallel region before sleeping. When one of
  them has lost its core to another process, its partners spin in the barrier for the
  rest of their time slice: frame latency went up 5-8x and training steps 5x beside one
  other torch process. ``OMP_WAIT_POLICY=PASSIVE`` makes waiting threads sleep at once;
  a sleeping thread also gets its core back sooner when it wakes. OpenMP reads the
  variable once, when torch loads: :func:`prepare_environment` must run before
  ``import torch``, which is why the entry points (``flowclas``, ``flowclas_node``) call
  it first. A value the user set is kept.
* The thread count: one intra-op thread per CPU this process may use (its affinity mask,
  capped by a cgroup CPU quota), not ``os.cpu_count()``: a container or a ``taskset``
  limited to 2 of 8 cores must not start 8 threads; ``OMP_NUM_THREADS``, when set, wins.
  Fewer threads than CPUs do not help: beside a busy neighbour one thread lost more than
  two passive ones. Both torch and ONNX Runtime sessions take the count from
  :func:`configure_threads` / :func:`configured_threads`.

This module does not import torch at import time.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path

log = logging.getLogger(__name__)

MAX_THREADS = 256  # the ``threads`` node parameter's and ``--threads`` flag's range is 0..256 (0: auto)
# What the entry points set before torch loads (kept when the user set them).
ENVIRONMENT = {"OMP_WAIT_POLICY": "PASSIVE"}

_configured: int | None = None


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        count = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    if quota is not None:
        count = min(count, math.ceil(quota))
    return max(1, count)


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs granted by the cgroup (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``); None when unlimited."""
    try:
        text_quota, text_period = (root / "cpu.max").read_text().split()[:2]
        return None if text_quota == "max" else int(text_quota) / int(text_period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def auto_threads() -> int:
    """The intra-op thread count used when none is given: ``OMP_NUM_THREADS`` when the user
    (or torchrun, which sets 1 per process) set it, else :func:`usable_cpus`."""
    value = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if value.isdigit() and 0 < int(value) <= MAX_THREADS:
        return int(value)
    return usable_cpus()


def prepare_environment() -> bool:
    """Set :data:`ENVIRONMENT` (values the user set win); True when torch was not loaded yet,
    i.e. when the settings take effect in this process (children inherit them either way)."""
    for key, value in ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    if "torch" in sys.modules:
        log.debug("torch was imported before prepare_environment: OpenMP keeps its wait policy in this process")
        return False
    return True


def check_threads(threads: int | None) -> int:
    """``threads`` as an int in 0..MAX_THREADS (None: 0, auto); ValueError otherwise."""
    if threads is None:
        return 0
    if isinstance(threads, bool) or not isinstance(threads, int) or not 0 <= threads <= MAX_THREADS:
        raise ValueError(f"threads must be an integer in 0..{MAX_THREADS} (0: one per usable CPU), got {threads!r}")
    return threads


def configure_threads(threads: int | None = None) -> int:
    """Give torch ``threads`` intra-op threads (None or 0: :func:`auto_threads`); returns the count.

    Inter-op parallelism (``torch.jit.fork``) is not used here: its pool is set to one
    thread where torch still allows it (before the first parallel work). ONNX Runtime
    sessions created afterwards get the same count (:func:`configured_threads`).
    """
    global _configured
    import torch

    n = check_threads(threads) or auto_threads()
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # only settable once, before any inter-op work
        pass
    if _configured is not None and _configured != n:
        log.debug("intra-op threads %d -> %d", _configured, n)
    _configured = n
    return n


def configured_threads() -> int:
    """The count :func:`configure_threads` set, else torch's current one."""
    if _configured is not None:
        return _configured
    import torch

    return torch.get_num_threads()


def describe() -> dict[str, object]:
    """The settings in force, for reports: threads, usable CPUs, wait policy."""
    return {"threads": configured_threads(), "usable_cpus": usable_cpus(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset")}
