"""Torch modules: encoders, flows, scoring, and the model bundle."""

from flowclas_ros.model.bundle import BundleError, load_bundle, read_bundle_config, save_bundle
from flowclas_ros.model.config import ConfigError, FlowConfig, ModelConfig
from flowclas_ros.model.encoders import EncoderConfig, WeightsError
from flowclas_ros.model.network import FlowCLASNet

__all__ = [
    "BundleError",
    "ConfigError",
    "EncoderConfig",
    "FlowCLASNet",
    "FlowConfig",
    "ModelConfig",
    "WeightsError",
    "load_bundle",
    "read_bundle_config",
    "save_bundle",
]
