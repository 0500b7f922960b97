"""ROS-free frame pipeline: detector, hazards, pictures.

The names below load on first use, so that ``flowclas_ros.runtime.threads`` (which must run
before torch is imported) can be imported without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flowclas_ros.runtime.detector import Detection, Detector, as_rgb_batch
    from flowclas_ros.runtime.hazards import Hazard, find_hazards

_EXPORTS = {"Detection": "detector", "Detector": "detector", "as_rgb_batch": "detector",
            "Hazard": "hazards", "find_hazards": "hazards"}
__all__ = ["Detection", "Detector", "Hazard", "as_rgb_batch", "find_hazards"]


def __getattr__(name: str) -> Any:
    """Import ``name`` from its submodule on first access."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
