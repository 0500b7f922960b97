"""Writing a synthetic dataset: the folder layout, its outlier folder, a preview, optionally a camera bag."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from flowclas_ros.errors import UserError
from flowclas_ros.files import claim_folder, naming, remove_entries
from flowclas_ros.limits import BAG_FRAMES, BAG_RATE
from flowclas_ros.synthetic.objects import SPLITS, sources
from flowclas_ros.synthetic.samples import ANOMALY, INLIER, OBJECT, VOID, preview, sequence, write_dataset


@dataclass
class SynthOptions:
    """What ``flowclas synth`` writes (the flags, typed)."""

    output: str
    domain: str = "orbital"
    train: int = 200
    test: int = 50
    outliers: int = 100
    height: int = 240
    width: int = 320
    seed: int = 0
    bag: str | None = None
    bag_frames: int = 100
    bag_rate: float = 10.0
    bag_storage: str | None = None  # None: mcap for a --bag ending in .mcap, else sqlite3


def _validate(args: SynthOptions) -> None:
    for name in ("train", "test", "outliers"):
        if getattr(args, name) < 0:
            raise UserError(f"--{name} must be zero or more, got {getattr(args, name)}")
    for name in ("height", "width"):
        if not 32 <= getattr(args, name) <= 4096:
            raise UserError(f"--{name} must be between 32 and 4096, got {getattr(args, name)}")
    if args.seed < 0:
        raise UserError(f"--seed must be zero or more, got {args.seed}")
    if args.bag is not None:
        if not BAG_FRAMES.contains(args.bag_frames):
            raise UserError(f"--bag-frames must be in {BAG_FRAMES}, got {args.bag_frames}")
        if not BAG_RATE.contains(args.bag_rate):
            raise UserError(f"--bag-rate must be in {BAG_RATE} Hz, got {args.bag_rate}")
        bag, output = Path(args.bag).resolve(), Path(args.output).resolve()
        if bag == output or output in bag.parents:
            raise UserError(f"--bag {args.bag} lies in the dataset folder {args.output}: name a bag outside it")
        if Path(args.bag).exists():
            raise UserError(f"--bag {args.bag} already exists; rosbag2 writes a new folder")


def bag_storage(args: SynthOptions) -> str:
    """The camera bag's rosbag2 storage: as given, else from the ``--bag`` name."""
    if args.bag_storage:
        return args.bag_storage
    return "mcap" if str(args.bag).lower().endswith(".mcap") else "sqlite3"


log = logging.getLogger(__name__)
MARKER = ".flowclas-synth"
WRITES = ("train", "test", "outliers", "preview.png", "synth.json")  # what a dataset folder holds


def synthesize(args: SynthOptions) -> dict:
    """Write the dataset (and the bag); returns the ``synth.json`` description plus the paths written.

    The dataset folder is created (or adopted when empty) and marked as ours; a folder an
    earlier ``synthesize`` marked has its dataset replaced; any other non-empty folder is refused."""
    _validate(args)
    size = (args.height, args.width)
    root = Path(args.output)
    if claim_folder(root, MARKER):
        remove_entries(root, WRITES)
    with naming(root):
        return _write(args, root, size)


def _write(args: SynthOptions, root: Path, size: tuple[int, int]) -> dict:
    counts = write_dataset(root, args.domain, args.train, args.test, args.outliers, size, args.seed)
    info = {
        "domain": args.domain,
        "seed": args.seed,
        "size": list(size),
        "counts": counts,
        "labels": {
            "test": {"inlier": INLIER, "anomaly": ANOMALY, "void": VOID},
            "outliers": {"object": OBJECT, "background": 0},
        },
        "void": "anti-aliased object edge pixels (coverage strictly between 0 and 1)",
        "sources": {split: [s.name for s in sources(args.domain, split)] for split in SPLITS},
        "sources_note": "scikit-image bundled pictures; train sources fill outliers/, "
        "test sources are held out for test/ and the bag",
    }
    (root / "synth.json").write_text(json.dumps(info, indent=2) + "\n")
    paths: dict[str, str] = {}
    if args.train or args.test or args.outliers:
        paths["preview"] = str(preview(root, root / "preview.png"))
    if args.bag is not None:
        from tqdm import tqdm

        from flowclas_ros.synthetic.camera_bag import write_camera_bag

        frames = tqdm(
            sequence(args.domain, args.bag_frames, size, args.seed),
            total=args.bag_frames,
            desc="synth bag",
            unit="frame",
        )
        paths["bag"] = str(write_camera_bag(args.bag, frames, rate_hz=args.bag_rate, storage=bag_storage(args)))
    return {**info, "paths": paths}
