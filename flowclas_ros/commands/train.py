"""``flowclas train``: a recipe plus overrides in, a run directory with a bundle out."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from flowclas_ros.commands.common import add_threads_argument, device_value, number_type
from flowclas_ros.limits import Range

# Everyday flags and the config keys they set.
FLAGS = {
    "data_root": "data.root",
    "outliers": "data.outliers",
    "objective": "objective.name",
    "head": "model.head",
    "encoder": "model.encoder.name",
    "steps": "optim.steps",
    "batch_size": "optim.batch_size",
    "devices": "run.devices",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The command's flags."""
    from flowclas_ros.model.config import HEADS
    from flowclas_ros.training.objectives import OBJECTIVES

    p.add_argument("--config", required=True,
                   help="recipe YAML, or a built-in recipe name (synthetic, folder, allo, cityscapes)")
    p.add_argument("--output", required=True, help="run directory: new, empty, or an earlier run of the same recipe (resumed)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key")
    p.add_argument("--data-root", help="inlier dataset root (data.root)")
    p.add_argument("--outliers", help="outlier source root (data.outliers)")
    p.add_argument("--objective", choices=OBJECTIVES)
    p.add_argument("--head", choices=HEADS)
    p.add_argument("--encoder", help="encoder name, e.g. efficientnet_lite0, dinov2_vitb14")
    p.add_argument("--steps", type=int, help="optimiser steps")
    p.add_argument("--batch-size", type=int, help="global batch size")
    p.add_argument("--devices", type=int, help="processes on this machine (one per GPU; gloo on CPU)")
    p.add_argument("--device", type=device_value, help="cpu or cuda (default: cuda when available)")
    add_threads_argument(p)
    p.add_argument("--restart", action="store_true", help="start over: remove the checkpoints and logs of the run in --output")
    p.add_argument("--preview", type=number_type(int, Range(0, 64)), default=8, metavar="N",
                   help="save N pasted training samples to RUN/pasting_preview.png first (0: off)")


def overrides(args: argparse.Namespace) -> list[str | tuple[str, Any]]:
    """``--set`` values (YAML) plus the everyday flags as (key, value) pairs, flags last (they win)."""
    return [*args.set, *((key, getattr(args, flag)) for flag, key in FLAGS.items() if getattr(args, flag) is not None)]


def run(args: argparse.Namespace) -> int:
    """Train (or resume) and write the bundle."""
    from flowclas_ros.training.config import load_train_config
    from flowclas_ros.training.data import write_pasting_preview
    from flowclas_ros.training.run_folder import open_run
    from flowclas_ros.training.trainer import launching_process, train

    config = load_train_config(args.config, overrides(args))
    out = Path(args.output)
    if launching_process():  # under torchrun, rank 0 prepares the folder
        open_run(config, out, restart=args.restart)
        if args.preview and (preview := write_pasting_preview(config, out / "pasting_preview.png", args.preview)):
            print(f"flowclas train: pasted samples -> {preview}")
    bundle = train(config, out, device=args.device)
    print(f"flowclas train: bundle -> {bundle} (logs in {out / 'logs'})")
    return 0
