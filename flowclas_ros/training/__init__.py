"""Offline training and evaluation of FlowCLAS models (depends on flowclas_ros, never the reverse)."""

from flowclas_ros.training import head_losses as _head_losses  # noqa: F401  (registers the heads' losses)
