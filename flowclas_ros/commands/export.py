"""``flowclas export``: compiled artefacts (torch-export, ONNX, TensorRT) inside a bundle.

    flowclas export --model BUNDLE --format onnx                       # static, bundle input size
    flowclas export --model BUNDLE --format onnx --height 240 --width 320
    flowclas export --model BUNDLE --format torch-export --min 224x320 --opt 480x640 --max 736x960
    flowclas export --model BUNDLE --format tensorrt --device cuda --precision fp16 --max-batch 4
    flowclas export --model BUNDLE --format onnx --precision int8 --calibration DATA/train/images
"""

from __future__ import annotations

import argparse

from flowclas_ros.commands.common import device_value, number_type
from flowclas_ros.deploy.compile import FORMATS
from flowclas_ros.deploy.quantize import DEFAULT_FRAMES
from flowclas_ros.deploy.shapes import InputShape, parse_size
from flowclas_ros.errors import UserError
from flowclas_ros.limits import INPUT_SIDE
from flowclas_ros.model.precision import PRECISIONS, precision_refusal


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's flags."""
    parser.add_argument("--model", required=True, help="model bundle directory (artefacts go to BUNDLE/engines/)")
    parser.add_argument("--format", required=True, choices=FORMATS, help="artefact format")
    parser.add_argument("--height", type=number_type(int, INPUT_SIDE),
                        help="static input height (default: the bundle's input size)")
    parser.add_argument("--width", type=number_type(int, INPUT_SIDE),
                        help="static input width (default: the bundle's input size)")
    parser.add_argument("--min", dest="min_size", metavar="HxW", help="smallest input of a dynamic-size artefact")
    parser.add_argument("--opt", dest="opt_size", metavar="HxW", help="input size to tune for (dynamic; default --max)")
    parser.add_argument("--max", dest="max_size", metavar="HxW", help="largest input of a dynamic-size artefact")
    parser.add_argument("--max-batch", type=int, default=1, help="largest batch (batch 1..N; default 1, static)")
    parser.add_argument("--precision", default="fp32", choices=tuple(PRECISIONS),
                        help="fp16/bf16: tensorrt only (normalisation and log-density stay fp32); "
                             "int8: onnx only (static quantisation calibrated on --calibration frames)")
    parser.add_argument("--calibration", metavar="DIR", default=None,
                        help="int8: inlier images (a folder, or a dataset root with train/images); "
                             "default: the bundle's training data when recorded and present. Given, it always "
                             "recalibrates (rebuilds the artefact)")
    parser.add_argument("--calibration-frames", type=int, default=DEFAULT_FRAMES, metavar="N",
                        help=f"int8: calibrate on up to N frames spread over the folder (default {DEFAULT_FRAMES})")
    parser.add_argument("--device", type=device_value, default="cpu", help="cpu, or cuda[:N] for tensorrt")
    parser.add_argument("--force", action="store_true", help="rebuild even if a valid or corrupt artefact exists")


def input_shape(args: argparse.Namespace, bundle_size: tuple[int, int]) -> InputShape:
    """The InputShape the flags describe (static HxW, or a min/opt/max range)."""
    if args.max_batch < 1:
        raise UserError(f"--max-batch must be >= 1, got {args.max_batch}")
    batch = (1, 1, args.max_batch)
    ranged = args.min_size or args.opt_size or args.max_size
    if ranged and (args.height or args.width):
        raise UserError("give either --height/--width or --min/--opt/--max, not both")
    if ranged:
        if not (args.min_size and args.max_size):
            raise UserError("a dynamic size needs both --min and --max (and optionally --opt)")
        lo, hi = parse_size(args.min_size), parse_size(args.max_size)
        opt = parse_size(args.opt_size) if args.opt_size else hi
        return InputShape(batch, (lo[0], opt[0], hi[0]), (lo[1], opt[1], hi[1]))
    h, w = args.height or bundle_size[0], args.width or bundle_size[1]
    parse_size(f"{h}x{w}")
    return InputShape(batch, (h,) * 3, (w,) * 3)


def run(args: argparse.Namespace) -> int:
    """Build (or verify) the artefact."""
    from flowclas_ros.deploy.cache import MANIFEST, ensure_artefact
    from flowclas_ros.model.bundle import read_bundle_config
    from flowclas_ros.runtime.backends import tensorrt_unavailable

    config, _ = read_bundle_config(args.model)
    shape = input_shape(args, tuple(config.encoder.input_size))
    if args.format == "tensorrt" and (reason := tensorrt_unavailable(args.device)):
        raise UserError(f"cannot build a TensorRT engine here: {reason}")
    if (reason := precision_refusal(args.format, args.precision)) is not None:
        raise UserError(f"no {args.format} {args.precision} artefact: {reason}")
    if args.calibration is not None and args.precision != "int8":
        raise UserError("--calibration is for --precision int8 only")
    if args.calibration_frames < 1:
        raise UserError(f"--calibration-frames must be at least 1, got {args.calibration_frames}")
    print(f"flowclas export: building {args.format} {args.precision} for input {shape.label} (this takes a while)...")
    force = args.force or args.calibration is not None
    path = ensure_artefact(args.model, args.format, args.precision, shape, args.device, force=force,
                           calibration=args.calibration, calibration_frames=args.calibration_frames)
    print(f"flowclas export: {path} (manifest {path.parent / MANIFEST})")
    return 0
