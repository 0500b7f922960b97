"""``flowclas import-checkpoint``: the authors' released FlowCLAS checkpoint as our bundle.

    flowclas import-checkpoint --checkpoint state_dict.pt --output models/flowclas_city
    flowclas import-checkpoint --checkpoint state_dict.pt --output models/flowclas_allo --config allo_model.yaml

``--config`` is a model YAML (the ``model:`` part of a recipe) for what the tensors do not
decide: the encoder and its weight files, input size, normalisation and score variant.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from flowclas_ros.commands.common import output_folder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's flags."""
    parser.add_argument("--checkpoint", required=True,
                        help="the authors' state dict: .pt/.pth (read weights-only) or .safetensors")
    parser.add_argument("--output", required=True, help="bundle directory to write (new or empty)")
    parser.add_argument("--config", help="model YAML: encoder (and weight paths), input size, mean/std, score")


def run(args: argparse.Namespace) -> int:
    """Import into a new (or empty) folder and say where the bundle went."""
    from flowclas_ros.model.import_checkpoint import import_checkpoint

    bundle = import_checkpoint(args.checkpoint, output_folder(Path(args.output), empty=True), args.config)
    print(f"flowclas import-checkpoint: {args.checkpoint} -> {bundle}")
    return 0
