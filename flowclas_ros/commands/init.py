"""``flowclas init``: an untrained bundle from a model config (to try the pipeline before training)."""

from __future__ import annotations

import argparse
from pathlib import Path

from flowclas_ros.commands.common import output_folder


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The command's flags."""
    p.add_argument("--config", default=None, help="model config YAML (default: EfficientNet-Lite0 defaults)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--output", required=True, help="bundle directory to write (new or empty)")


def run(args: argparse.Namespace) -> int:
    """Write the bundle into a new (or empty) folder."""
    from flowclas_ros.model import FlowCLASNet, save_bundle
    from flowclas_ros.model.config import load_model_config

    config = load_model_config(args.config, args.set or [])
    path = save_bundle(FlowCLASNet(config), output_folder(Path(args.output), empty=True))
    print(f"flowclas init: untrained bundle ({config.encoder.name}, head {config.head}) -> {path}")
    return 0
