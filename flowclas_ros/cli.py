"""The ``flowclas`` command line: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import numpy as np

from flowclas_ros.errors import UserError
from flowclas_ros.live import PARAMETERS

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")

# Subcommands implemented in their own modules: each has ``add_arguments(parser)`` and
# ``run(args) -> int`` and imports its heavy dependencies inside ``run``.
COMMANDS = {
    "demo": ("flowclas_ros.demo", "offline demo: synthetic bag, bundled model, replay, metrics, pictures"),
    "synth": ("flowclas_ros.synthetic", "write a synthetic dataset (folder layout) and a camera rosbag"),
    "train": ("training.train", "train a model; writes RUN/model (a bundle) and logs"),
    "eval": ("training.evaluate", "metrics.json, curves and heatmaps on a dataset"),
    "prepare-coco": ("training.coco", "turn COCO train2017 into outlier masks (Meta-OoD filtering)"),
    "replay": ("flowclas_ros.replay", "replay a rosbag2 through the pipeline; annotated bag and metrics"),
    "export": ("flowclas_ros.export", "compiled artefacts (torch-export, ONNX, TensorRT) inside a bundle"),
    "bench": ("flowclas_ros.bench", "latency and throughput per backend and resolution"),
}


def list_images(path: Path) -> list[Path]:
    """One image file, or the images directly inside a folder, sorted by name."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UserError(f"input not found: {path}")
    images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {path}")
    return images


def read_rgb(path: Path) -> np.ndarray:
    """An image file as H x W x 3 uint8 RGB; UserError for an unreadable file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UserError(f"cannot read image {path}: {exc}") from None


def write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(array).save(path)


def cmd_detect(args: argparse.Namespace) -> int:
    """Score maps (.npy, colour PNG), masks and overlays for an image or a folder."""
    from tqdm import tqdm

    from flowclas_ros.runtime import Detector
    from flowclas_ros.runtime.visualize import heatmap, overlay

    detector = Detector.from_bundle(
        args.model, device=args.device, precision=args.precision, backend=args.backend,
        threshold=args.threshold, min_area=args.min_area,
    )
    images = list_images(Path(args.input))
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    summary, failed = {}, []
    for path in tqdm(images, desc="detect", unit="img", disable=len(images) < 2):
        try:
            frame = read_rgb(path)
        except UserError as exc:
            tqdm.write(f"flowclas detect: skipped: {exc}", file=sys.stderr)
            failed.append(str(path))
            continue
        det = detector.detect(frame)
        stem = path.stem
        np.save(out / f"{stem}_score.npy", det.score)
        write_png(out / f"{stem}_score.png", heatmap(det.score))
        write_png(out / f"{stem}_mask.png", det.mask.astype(np.uint8) * 255)
        write_png(out / f"{stem}_overlay.png", overlay(frame, det.score, det.mask))
        summary[path.name] = {
            "height": int(frame.shape[0]),
            "width": int(frame.shape[1]),
            "max_score": float(det.score.max()),
            "anomalous_fraction": float(det.mask.mean()),
            "hazards": [dict(vars(h)) for h in det.hazards],
        }
    report = {"model": str(args.model), "threshold": detector.threshold, "images": summary, "skipped": failed}
    (out / "detections.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"flowclas detect: {len(summary)} image(s) -> {out}" + (f" ({len(failed)} skipped)" if failed else ""))
    return 0 if summary else 1


def cmd_init(args: argparse.Namespace) -> int:
    """An untrained bundle from a model config (to try the pipeline before training)."""
    from flowclas_ros.model import FlowCLASNet, save_bundle
    from flowclas_ros.model.config import load_model_config

    config = load_model_config(args.config, args.set or [])
    path = save_bundle(FlowCLASNet(config), args.output)
    print(f"flowclas init: untrained bundle ({config.encoder.name}, head {config.head}) -> {path}")
    return 0


def add_inference_arguments(p: argparse.ArgumentParser) -> None:
    """``--model``, ``--backend``, ``--device`` and ``--precision``, shared by every command that runs a bundle."""
    p.add_argument("--model", required=True, help="model bundle directory")
    p.add_argument("--backend", default="torch", choices=PARAMETERS["backend"].choices, help="inference backend")
    p.add_argument("--device", default="cpu", help="device, e.g. cpu or cuda:0")
    p.add_argument("--precision", default="fp32", choices=PARAMETERS["precision"].choices)


def build_parser() -> argparse.ArgumentParser:
    from flowclas_ros import __version__

    parser = argparse.ArgumentParser(prog="flowclas", description="FlowCLAS anomaly segmentation for robots.")
    parser.add_argument("--version", action="version", version=f"flowclas {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("detect", help="score maps, masks and overlays for images")
    add_inference_arguments(p)
    p.add_argument("--input", required=True, help="an image file or a folder of images")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--threshold", type=float, default=None, help="mask threshold (default: the bundle's)")
    p.add_argument("--min-area", type=int, default=0, help="smallest hazard region in pixels")
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("init", help="write an untrained bundle from a model config")
    p.add_argument("--config", default=None, help="model config YAML (default: EfficientNet-Lite0 defaults)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--output", required=True, help="bundle directory to write")
    p.set_defaults(func=cmd_init)

    for name, (module, what) in COMMANDS.items():
        p = sub.add_parser(name, help=what, description=what)
        command = importlib.import_module(module)
        command.add_arguments(p)
        p.set_defaults(func=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; errors in the user's input become one line on stderr and exit status 1."""
    from flowclas_ros.model import BundleError, ConfigError, WeightsError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UserError, BundleError, ConfigError, WeightsError, ValueError) as exc:
        print(f"flowclas {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"flowclas {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
