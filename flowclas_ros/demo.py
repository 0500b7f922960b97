"""``flowclas demo``: the whole product offline, on embedded defaults.

A synthetic camera bag with ground truth is written, replayed through the bundled demo
model (EfficientNet-Lite0 features, FlowCLAS head trained on synthetic orbital scenes),
and the output folder ends up holding the annotated bag, metrics.json and a montage.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

DEMO_MODEL = Path(__file__).parent / "data" / "demo_model"
IMAGE_TOPIC, GT_TOPIC = "/camera/image_raw", "/camera/anomaly_gt"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", default="out/demo", help="output folder (replaced if it exists)")
    p.add_argument("--model", default=str(DEMO_MODEL), help="model bundle (default: the bundled demo model)")
    p.add_argument("--frames", type=int, default=60, help="frames in the synthetic camera bag")
    p.add_argument("--domain", default="orbital", choices=["orbital", "road"], help="scene domain of the demo model")
    p.add_argument("--seed", type=int, default=1, help="seed of the synthetic sequence")
    p.add_argument("--storage", default="mcap", choices=["mcap", "sqlite3"], help="bag storage")
    p.add_argument("--montage-frames", type=int, default=4, help="frames shown in montage.png")


def run(args: argparse.Namespace) -> int:
    from flowclas_ros import replay
    from flowclas_ros.bagio import write_camera_bag
    from flowclas_ros.errors import UserError
    from flowclas_ros.model.bundle import read_bundle_config
    from flowclas_ros.synthetic import sequence

    if args.frames < 1:
        raise UserError("--frames must be at least 1")
    config, _ = read_bundle_config(args.model)
    domain = args.domain
    out = Path(args.output)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    size = tuple(config.encoder.input_size)
    print(f"flowclas demo: writing a synthetic {domain} camera bag ({args.frames} frames, {size[1]}x{size[0]})")
    bag = write_camera_bag(out / "camera_bag", sequence(domain, args.frames, size, args.seed),
                           IMAGE_TOPIC, GT_TOPIC, storage=args.storage)
    parser = argparse.ArgumentParser()
    replay.add_arguments(parser)
    replay.run(parser.parse_args([
        "--model", str(args.model), "--bag", str(bag), "--image-topic", IMAGE_TOPIC, "--gt-topic", GT_TOPIC,
        "--output", str(out / "replay"), "--storage", args.storage, "--components",
    ]))
    annotated = out / "replay" / bag.name
    montage = write_montage(bag, annotated, out / "montage.png", args.montage_frames)
    metrics = json.loads((out / "replay" / "metrics.json").read_text())
    print(
        f"flowclas demo: AP {metrics['ap']:.1f}%  FPR95 {metrics['fpr95']:.1f}%  AUROC {metrics['auroc']:.1f}% "
        f"on {metrics['num_images']} frames\n"
        f"  camera bag:     {bag}\n"
        f"  annotated bag:  {annotated}   (topics /flowclas/*; open it in Foxglove)\n"
        f"  metrics:        {out / 'replay' / 'metrics.json'}\n"
        f"  montage:        {montage}"
    )
    return 0


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
    fig.savefig(path, dpi=80)
    return path
