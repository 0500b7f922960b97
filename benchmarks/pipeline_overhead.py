"""Per-frame cost of the frame pipeline outside the model, as a fraction of the model time.

    python benchmarks/pipeline_overhead.py --height 480 --width 640 --repeats 20 [--model BUNDLE]

Stages (medians over the repeats): decode (message -> RGB), model (Detector.detect),
post (smoothing, re-threshold, hazards, overlay when on), encode (output messages). Without
--model, an EfficientNet-Lite0 FlowCLAS network at the frame size with an 8-step flow is used.
"""

from __future__ import annotations

import argparse
import io
import statistics

import numpy as np
import torch
from PIL import Image
from rosbags.typesys import Stores, get_typestore
from scipy import ndimage

from flowclas_ros.model import EncoderConfig, FlowCLASNet, FlowConfig, ModelConfig
from flowclas_ros.runtime import Detector
from flowclas_ros.runtime.messages import rosbags_factory
from flowclas_ros.runtime.pipeline import FramePipeline
from flowclas_ros.runtime.smoothing import build_smoother


def scene(h: int, w: int) -> np.ndarray:
    """A smooth random picture (superpixels behave on it as on a photo, unlike on white noise)."""
    noise = ndimage.gaussian_filter(np.random.default_rng(0).random((h, w, 3)), (6, 6, 0))
    return ((noise - noise.min()) / np.ptp(noise) * 255).astype(np.uint8)


def messages(typestore, rgb: np.ndarray) -> dict[str, object]:
    t = typestore.types
    header = t["std_msgs/msg/Header"](stamp=t["builtin_interfaces/msg/Time"](sec=1, nanosec=0), frame_id="cam")
    h, w = rgb.shape[:2]
    bgr = np.ascontiguousarray(rgb[..., ::-1]).reshape(-1)
    jpeg = io.BytesIO()
    Image.fromarray(rgb).save(jpeg, format="JPEG", quality=90)
    return {
        "bgr8": t["sensor_msgs/msg/Image"](header=header, height=h, width=w, encoding="bgr8", is_bigendian=0,
                                           step=w * 3, data=bgr),
        "bayer_rggb8": t["sensor_msgs/msg/Image"](header=header, height=h, width=w, encoding="bayer_rggb8", is_bigendian=0,
                                                  step=w, data=np.ascontiguousarray(rgb[..., 1]).reshape(-1)),
        "jpeg": t["sensor_msgs/msg/CompressedImage"](header=header, format="jpeg", data=np.frombuffer(jpeg.getvalue(), np.uint8)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--model", help="a bundle directory (default: EfficientNet-Lite0, 8 flow steps)")
    args = parser.parse_args()
    size = (args.height, args.width)
    if args.model:
        detector = Detector.from_bundle(args.model)
    else:
        config = ModelConfig(encoder=EncoderConfig(layers=[4, 10], input_size=size), flow=FlowConfig(steps=8))
        detector = Detector(FlowCLASNet(config).eval())
    rgb = scene(*size)
    detector.threshold = float(np.quantile(detector.score(rgb), 0.9))
    typestore = get_typestore(Stores.ROS2_HUMBLE)
    factory = rosbags_factory(typestore)
    inputs = messages(typestore, rgb)
    runs = [
        ("bgr8", "none", False), ("bayer_rggb8", "none", False), ("jpeg", "none", False),
        ("bgr8", "none", True), ("bgr8", "superpixels", False), ("bgr8", "components", False),
    ]
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, frame {size}, model input {detector.input_size}")
    print("| input | smoothing | overlay | decode ms | model ms | post ms | encode ms | overhead / model |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for encoding, smoothing, overlay in runs:
        pipeline = FramePipeline(detector, factory, build_smoother(smoothing))
        msg = inputs[encoding]
        for _ in range(2):  # warm-up
            pipeline.process(msg, overlay=overlay)
        timings = [pipeline.process(msg, overlay=overlay).timings for _ in range(args.repeats)]
        ms = {k: statistics.median(t[k] for t in timings) * 1000 for k in timings[0]}
        # per-frame ratios: the machine's load moves model and overhead together
        ratio = statistics.median((t["decode"] + t["post"] + t["encode"]) / t["model"] for t in timings)
        print(f"| {encoding} | {smoothing} | {'on' if overlay else 'off'} | {ms['decode']:.2f} | {ms['model']:.1f} | "
              f"{ms['post']:.2f} | {ms['encode']:.2f} | {ratio:.1%} |")


if __name__ == "__main__":
    main()
