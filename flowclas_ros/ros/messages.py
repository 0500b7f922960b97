"""The node's message factory: the shared ``MessageFactory`` over rclpy's generated classes."""

from __future__ import annotations

import array
import importlib

import numpy as np

from flowclas_ros.runtime.messages import MESSAGE_TYPES, MessageFactory


def _pack(data: np.ndarray) -> array.array:
    return array.array("B", data.tobytes())  # the generated uint8[] setter's fast path


def rclpy_factory() -> MessageFactory:
    """A :class:`MessageFactory` building rclpy messages (imports each ``pkg.msg`` module)."""
    classes = {}
    for name in MESSAGE_TYPES:
        package, _, cls = name.split("/")
        classes[name] = getattr(importlib.import_module(f"{package}.msg"), cls)
    return MessageFactory(classes, pack=_pack)
