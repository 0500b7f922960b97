"""The demo (``flowclas demo``): the whole product offline, on embedded defaults.

A synthetic camera bag with ground truth is written, replayed through the bundled demo
model (EfficientNet-Lite0 features, FlowCLAS head trained on synthetic orbital scenes),
and the output folder ends up holding the annotated bag, metrics.json and a montage. The
folder is the demo's own: created when absent, marked with ``.flowclas-demo``, and only what
the demo wrote there is replaced on the next run; a non-empty folder without the mark is refused.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flowclas_ros.files import atomic_write

DEMO_MODEL = Path(__file__).parent / "data" / "demo_model"
IMAGE_TOPIC, GT_TOPIC = "/camera/image_raw", "/camera/anomaly_gt"
MARKER = ".flowclas-demo"
WRITES = ("camera_bag", "replay", "montage.png")  # what the demo writes into its folder
MAX_FRAMES = 10_000
MAX_MONTAGE_FRAMES = 16
log = logging.getLogger(__name__)


@dataclass
class DemoOptions:
    """What the demo writes (``flowclas demo``'s flags, typed)."""

    output: str = "out/demo"
    model: str = str(DEMO_MODEL)
    frames: int = 60
    domain: str = "orbital"
    seed: int = 1
    storage: str = "mcap"
    montage_frames: int = 4


@dataclass
class DemoResult:
    """The demo's files and metrics."""

    camera_bag: Path
    annotated_bag: Path
    metrics_path: Path
    montage: Path
    metrics: dict


def _check(args: DemoOptions) -> None:
    from flowclas_ros.errors import UserError
    from flowclas_ros.synthetic import DOMAINS

    for flag, value, most in (("--frames", args.frames, MAX_FRAMES),
                              ("--montage-frames", args.montage_frames, MAX_MONTAGE_FRAMES)):
        if not 1 <= value <= most:
            raise UserError(f"{flag} must be between 1 and {most}, got {value}")
    if args.seed < 0:
        raise UserError(f"--seed must be zero or more, got {args.seed}")
    if args.domain not in DOMAINS:
        raise UserError(f"--domain must be one of {', '.join(DOMAINS)}, got {args.domain!r}")


def run_demo(args: DemoOptions) -> DemoResult:
    """Write the synthetic camera bag, replay it through the model, draw the montage."""
    from flowclas_ros.files import claim_folder, naming, remove_entries
    from flowclas_ros.model.bundle import read_bundle_config

    _check(args)
    config, _ = read_bundle_config(args.model)
    out = Path(args.output)
    if claim_folder(out, MARKER):
        remove_entries(out, WRITES)
    with naming(out):
        return _write(args, out, tuple(config.encoder.input_size))


def _write(args: DemoOptions, out: Path, size: tuple[int, ...]) -> DemoResult:
    from flowclas_ros.errors import UserError
    from flowclas_ros.replay import ReplayOptions, replay
    from flowclas_ros.synthetic import sequence
    from flowclas_ros.synthetic.camera_bag import write_camera_bag

    log.info("writing a synthetic %s camera bag (%d frames, %dx%d)", args.domain, args.frames, size[1], size[0])
    anomalous = []

    def frames():
        for rgb, gt in sequence(args.domain, args.frames, (size[0], size[1]), args.seed):
            anomalous.append(bool((gt == 1).any()))
            yield rgb, gt

    bag = write_camera_bag(out / "camera_bag", frames(), IMAGE_TOPIC, GT_TOPIC, storage=args.storage)
    if not any(anomalous):
        raise UserError(f"none of the {args.frames} synthetic frames of seed {args.seed} shows an anomaly, so there "
                        "is nothing to measure; pass more --frames (default 60) or another --seed")
    result = replay(ReplayOptions(model=str(args.model), bag=str(bag), image_topic=IMAGE_TOPIC, gt_topic=GT_TOPIC,
                                  output=str(out / "replay"), storage=args.storage, components=True))
    if result.metrics is None:
        raise UserError("the replay produced no metrics (no frame with ground truth was processed)")
    montage = write_montage(bag, result.output_bag, out / "montage.png", args.montage_frames)
    metrics = json.loads(result.metrics.read_text())
    return DemoResult(bag, result.output_bag, result.metrics, montage, metrics)


def _float_image(msg) -> np.ndarray:
    """A 32FC1 sensor_msgs/Image as written by our pipeline (little endian) -> H x W float32."""
    rows = np.frombuffer(np.asarray(msg.data, dtype=np.uint8).tobytes(), dtype="<f4")
    return rows.reshape(msg.height, msg.step // 4)[:, : msg.width]


def write_montage(camera_bag: Path, annotated: Path, path: Path, count: int) -> Path:
    """Rows of (frame, score heatmap, mask, ground truth) for ``count`` frames with anomalies."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from flowclas_ros.bagio import open_bag, read_messages
    from flowclas_ros.runtime.codecs import decode_image, decode_mask

    with open_bag(camera_bag) as reader:
        truth = {ts: decode_mask(m) for ts, m in read_messages(reader, GT_TOPIC)}
    with_anomaly = [ts for ts, gt in truth.items() if (gt == 1).any()] or list(truth)
    picks = set(with_anomaly[:: max(1, len(with_anomaly) // max(1, count))][:count])
    rows: dict[int, dict] = {ts: {"gt": truth[ts]} for ts in picks}
    with open_bag(annotated) as reader:
        for topic, key, decode in ((IMAGE_TOPIC, "frame", decode_image), ("/flowclas/anomaly_score", "score", _float_image),
                                   ("/flowclas/anomaly_mask", "mask", decode_mask)):
            for ts, msg in read_messages(reader, topic):
                if ts in rows:
                    rows[ts][key] = decode(msg)
    start = min(truth)
    fig = Figure(figsize=(12, 2.6 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), 4, squeeze=False)
    for r, ts in enumerate(sorted(rows)):
        row = rows[ts]
        gt = np.where(row["gt"] == 255, 0.5, row["gt"].astype(np.float32))
        panels = ((row["frame"], "frame", None), (row["score"], "anomaly score", "inferno"),
                  (row["mask"] / 255.0, "mask (threshold)", "gray"), (gt, "ground truth (grey: void)", "gray"))
        for ax, (image, title, cmap) in zip(axes[r], panels):
            ax.imshow(image, cmap=cmap, vmin=0, vmax=1) if cmap else ax.imshow(image)
            ax.set_title(f"frame at {(ts - start) / 1e9:.1f} s" if title == "frame" else title, fontsize=9)
            ax.axis("off")
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=80, format="png"))
    return path
