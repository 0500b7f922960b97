"""CPU latency of the detector vs its encoder alone, side by side in one run.

    python benchmarks/detector_latency.py --height 480 --width 640 --steps 8 16 --repeats 20
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from flowclas_ros.model import EncoderConfig, FlowCLASNet, FlowConfig, ModelConfig
from flowclas_ros.runtime import Detector


def _time(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    fn()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--steps", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--layers", type=int, nargs="+", default=[4, 10])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    size = (args.height, args.width)
    frame = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    rows = []
    for steps in args.steps:
        config = ModelConfig(
            encoder=EncoderConfig(layers=args.layers, input_size=size), flow=FlowConfig(steps=steps)
        )
        detector = Detector(FlowCLASNet(config).eval())
        x = detector.preprocess(frame[None])
        with torch.inference_mode():
            enc = _time(lambda: detector.model.encoder(x), args.repeats)
        full = _time(lambda: detector.detect(frame), args.repeats)
        rows.append((steps, statistics.median(enc), statistics.median(full)))
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, input {size}, layers {args.layers}")
    print("| flow steps | encoder p50 ms | detector p50 ms | detector / encoder |")
    print("| --- | --- | --- | --- |")
    for steps, enc, full in rows:
        print(f"| {steps} | {enc:.1f} | {full:.1f} | {full / enc:.2f} |")


if __name__ == "__main__":
    main()
