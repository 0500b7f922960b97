"""The ``flowclas`` entry point: the parser over the command modules, and the error policy."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from flowclas_ros import __version__
from flowclas_ros.errors import FlowclasError
from flowclas_ros.logs import LOGGER, configure
from flowclas_ros.runtime.threads import configure_threads, prepare_environment

# Command name -> (module under flowclas_ros.commands, one-line help).
COMMANDS = {
    "demo": ("demo", "offline demo: synthetic bag, bundled model, replay, metrics, pictures"),
    "synth": ("synth", "write a synthetic dataset (folder layout) and a camera rosbag"),
    "train": ("train", "train a model; writes RUN/model (a bundle) and logs"),
    "eval": ("eval", "metrics.json, curves and heatmaps on a dataset"),
    "detect": ("detect", "score maps, masks and overlays for images"),
    "replay": ("replay", "replay a rosbag2 through the pipeline; annotated bag and metrics"),
    "export": ("export", "compiled artefacts (torch-export, ONNX, TensorRT) inside a bundle"),
    "bench": ("bench", "latency and throughput per backend and resolution"),
    "init": ("init", "write an untrained bundle from a model config"),
    "import-checkpoint": ("import_checkpoint", "the authors' released FlowCLAS checkpoint as our bundle"),
    "prepare-coco": ("prepare_coco", "turn COCO train2017 into outlier masks (Meta-OoD filtering)"),
}


def build_parser() -> argparse.ArgumentParser:
    """The ``flowclas`` parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="flowclas", description="FlowCLAS anomaly segmentation for robots.")
    parser.add_argument("--version", action="version", version=f"flowclas {__version__}")
    parser.add_argument("--verbose", action="store_true", help="also print debug log lines")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, what) in COMMANDS.items():
        command = importlib.import_module(f"flowclas_ros.commands.{module}")
        p = sub.add_parser(name, help=what, description=what)
        command.add_arguments(p)
        p.set_defaults(func=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. Expected errors (bad input, unusable files) become one line on stderr
    and exit status 1; anything else is a bug and keeps its traceback.

    The OpenMP environment is set before any command module loads torch, and commands with
    ``--threads`` run with that many intra-op threads (flowclas_ros.runtime.threads)."""
    prepare_environment()
    args = build_parser().parse_args(argv)
    configure(args.command, args.verbose)
    if hasattr(args, "threads"):
        configure_threads(args.threads)
    try:
        return int(args.func(args))
    except FlowclasError as exc:  # logged: one line, control characters in file names escaped
        logging.getLogger(LOGGER).error("%s", exc)
    except OSError as exc:
        where = f"{exc.filename} " if exc.filename else ""
        logging.getLogger(LOGGER).error("%s%s", where, exc.strerror or exc)
    except KeyboardInterrupt:
        print(f"flowclas {args.command}: interrupted", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
