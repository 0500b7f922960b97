"""End-to-end latency of flowclas_node on a ROS 2 graph, against the in-process pipeline time.

    python benchmarks/ros_latency.py [--model BUNDLE] [--rates 2 10] [--frames 40] [--backend torch]

Starts ``flowclas_node`` as a process (demo bundle by default, loopback-only Fast DDS profile
with the 16 MB shared-memory segment), publishes 480x640 bgr8 frames at each rate and times
input publish -> anomaly_score receipt (monotonic clock of this process, matched by stamp).
The reference is ``FramePipeline.process`` on the same frames in this process (decode, model,
post, encode), with the node's thread defaults (``prepare_environment``). The node's own
receipt-to-publish latency (its /diagnostics) is printed beside it. Prints medians and
p90s, and their ratios (ROS / in-process): what the graph (serialisation, shared-memory
transport, executor, worker hand-off) adds. At a rate faster
than the model, frames are dropped (keep-latest) and only the processed ones count.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "test"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(REPO / "flowclas_ros" / "data" / "demo_model"))
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--rates", type=float, nargs="+", default=[2.0, 10.0])
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--param", action="append", default=[], help="extra node parameter, name:=value")
    args = parser.parse_args()

    from flowclas_ros.runtime.threads import prepare_environment

    prepare_environment()  # the reference runs with the node's own defaults (before torch loads)
    import ros.conftest as fixtures
    from ros.conftest import Driver, NodeProcess, ros_environment  # one driver/env for tests and this

    from flowclas_ros.ros.messages import rclpy_factory
    from flowclas_ros.runtime.detector import Detector
    from flowclas_ros.runtime.pipeline import FramePipeline

    env = ros_environment(fixtures.VENV, domain_id=fixtures.DOMAIN_ID, localhost_only=True)
    env["PYTHONUNBUFFERED"] = "1"
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"ros_latency_{os.getpid()}.log"
    command = [str(fixtures.VENV / "bin" / "flowclas_node"), "--ros-args", "-p", f"model:={args.model}",
               "-p", f"backend:={args.backend}"] + [a for p in args.param for a in ("-p", p)]
    node = NodeProcess(command, env, log)
    driver = None
    try:
        node.wait_ready()
        driver = Driver("flowclas_latency_bench")
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        received: dict[tuple[int, int], float] = {}

        def on_score(score) -> None:  # receipt time taken in the subscription callback
            received.setdefault((score.header.stamp.sec, score.header.stamp.nanosec), time.monotonic())

        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE)
        driver.node.create_subscription(Image, "/anomaly_score", on_score, qos)
        driver.subscribe("/label_info")
        diagnostics = driver.subscribe("/diagnostics")
        driver.wait_for("/label_info", 1)
        frames = [driver.image() for _ in range(4)]

        detector = Detector.from_bundle(args.model, backend=args.backend)
        pipeline = FramePipeline(detector, rclpy_factory(), min_area=16)
        for msg in frames:
            pipeline.process(msg)  # warm up
        local = []
        for i in range(args.frames):
            t0 = time.perf_counter()
            pipeline.process(frames[i % len(frames)])
            local.append(time.perf_counter() - t0)
        ref_p50, ref_p90 = statistics.median(local), float(np.percentile(local, 90))
        print(f"in-process pipeline: p50 {ref_p50 * 1e3:.1f} ms, p90 {ref_p90 * 1e3:.1f} ms")

        warm = driver.image()
        driver.subscribe("/anomaly_mask")
        driver.exchange("/image", warm, "/anomaly_mask")  # both sides matched and the model warm before timing
        for rate in args.rates:
            sent: dict[tuple[int, int], float] = {}
            for i in range(args.frames):
                msg = frames[i % len(frames)]
                msg.header.stamp = driver.node.get_clock().now().to_msg()
                sent[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = time.monotonic()
                driver.publish("/image", msg)
                time.sleep(1.0 / rate)
            time.sleep(1.0)
            lat = [received[k] - t for k, t in sent.items() if k in received]
            if not lat:
                print(f"{rate:g} Hz: no scores received")
                continue
            p50, p90 = statistics.median(lat), float(np.percentile(lat, 90))
            node_side = {kv.key: kv.value for status in diagnostics[-1].status for kv in status.values} if diagnostics else {}
            counts = ", ".join(f"{k} {node_side.get(k, '?')}" for k in ("received", "processed", "dropped"))
            print(f"  node's own receipt->publish so far: p50 {node_side.get('latency_p50_ms', '?')} ms, "
                  f"p90 {node_side.get('latency_p90_ms', '?')} ms; {counts}")
            print(f"{rate:g} Hz: {len(lat)}/{len(sent)} frames scored, publish->score p50 {p50 * 1e3:.1f} ms "
                  f"(x{p50 / ref_p50:.2f} in-process), p90 {p90 * 1e3:.1f} ms (x{p90 / ref_p90:.2f})")
    finally:
        if driver is not None:
            driver.close()
        node.stop()


if __name__ == "__main__":
    main()
