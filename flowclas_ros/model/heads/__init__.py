"""Heads with their own modules, registered by name (``model.config.HEADS`` lists every head).

Each builds from ``(config, encoder channels, encoder strides)`` and offers
``latents(feats)`` (per scale: ``(z, log-det per sample)``) and ``score(feats, size)`` (the
unsquashed score map at the padded input size); its modules are named ``norms``, ``flows``
or ``flow``, ``bases`` and ``projections``. Their training losses are in
``flowclas_ros.training.head_losses``.
"""

from flowclas_ros.model.heads.cflow import CFlowHead
from flowclas_ros.model.heads.uflow import UFlowHead

HEAD_MODULES = {"cflow": CFlowHead, "uflow": UFlowHead}

__all__ = ["CFlowHead", "HEAD_MODULES", "UFlowHead"]
