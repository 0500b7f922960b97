"""Frozen feature encoders, built by name through one registry."""

from flowclas_ros.model.encoders import dinov2 as _dinov2  # noqa: F401,E402

# Importing the modules registers their encoders.
from flowclas_ros.model.encoders import efficientnet as _efficientnet  # noqa: F401,E402
from flowclas_ros.model.encoders.base import (
    Encoder,
    EncoderConfig,
    WeightsError,
    available_encoders,
    build_encoder,
    register_encoder,
)

__all__ = [
    "Encoder",
    "EncoderConfig",
    "WeightsError",
    "available_encoders",
    "build_encoder",
    "register_encoder",
]
