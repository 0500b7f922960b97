"""Replay (``flowclas replay``): a rosbag2 through the node's frame pipeline, into an annotated bag.

Reads a bag (sqlite3 or mcap) with rosbags, runs the same FramePipeline as the node over
the image topic (sensor_msgs/Image or CompressedImage, from the topic's type) and writes
``OUT/<bag name>``: every input topic plus the node's outputs under ``/flowclas``
(anomaly_score, anomaly_mask, anomaly_overlay, hazards, label_info, diagnostics).
Output messages carry the input header and are logged at the input's time, or in
``--realtime`` mode at the simulated publish time.

Ground truth (labels 0 inlier, 1 anomaly, 255 void) comes from a mask topic of the bag,
paired with frames by header stamp, or from a folder of PNGs named ``<stamp ns>.png``
(header stamp in nanoseconds) or else ``<index:06d>.png`` (0-based index of the frame on
the image topic). With ground truth, OUT/metrics.json holds the streaming (binned) pixel
metrics and, with ``--components``, SegmentMeIfYouCan component metrics.

``--realtime`` replays what the robot would have seen: frames arrive at their logged
times and the node's keep-latest policy (flowclas_ros.runtime.scheduling) drops those that arrive while
another waits. The clock is simulated from each frame's measured processing time rather
than slept, so the replay runs as fast as the model and its drops are deterministic given
those times. OUT/replay.json reports counts, drop rate, latency percentiles (arrival to
publish), mean milliseconds per pipeline stage and throughput. Everything streams: memory
stays flat over long bags (benchmarks/README.md).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flowclas_ros.errors import UserError

log = logging.getLogger(__name__)

NAMESPACE = "/flowclas"
FRAME_TOPICS = ("anomaly_score", "anomaly_mask", "anomaly_overlay", "hazards")
DIAGNOSTICS_PERIOD_NS = 10**9


@dataclass
class ReplayOptions:
    """What one replay does (``flowclas replay``'s flags, typed)."""

    model: str
    bag: str
    image_topic: str
    output: str
    backend: str = "torch"
    device: str = "cpu"
    precision: str = "fp32"
    gt_topic: str | None = None
    gt_folder: str | None = None
    storage: str = "mcap"
    threshold: float | None = None
    min_area: int = 0
    smoothing: str = "none"
    overlay: bool = True
    realtime: bool = False
    max_frames: int | None = None
    bins: int = 2000
    components: bool = False

    def check(self) -> None:
        """UserError for values no replay can use."""
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise UserError(f"--threshold must be in [0, 1], got {self.threshold}")
        if self.max_frames is not None and self.max_frames < 1:
            raise UserError(f"--max-frames must be at least 1, got {self.max_frames}")
        if self.min_area < 0:
            raise UserError(f"--min-area must be >= 0, got {self.min_area}")
        if self.bins < 2:
            raise UserError(f"--bins must be at least 2, got {self.bins}")
        if self.gt_topic and self.gt_folder:
            raise UserError("give either --gt-topic or --gt-folder, not both")


@dataclass
class ReplayResult:
    """What a replay wrote: its report (also in ``replay.json``), the bag, the metrics file."""

    report: dict
    output_bag: Path
    metrics: Path | None


class StampMatcher:
    """Pairs score maps with ground-truth masks that share a header stamp, in either order.

    At most ``horizon`` unmatched entries of each kind are kept (oldest evicted), so
    memory stays bounded however long the bag.
    """

    def __init__(self, horizon: int = 16) -> None:
        self.horizon = horizon
        self.scores: OrderedDict[int, np.ndarray] = OrderedDict()
        self.truths: OrderedDict[int, np.ndarray] = OrderedDict()

    def add_score(self, stamp: int, score: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Add a score map; the ``(score, truth)`` pair when its truth is already here."""
        return self._add(stamp, score, self.scores, self.truths, first_is_score=True)

    def add_truth(self, stamp: int, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Add a ground-truth mask; the ``(score, truth)`` pair when its score is already here."""
        return self._add(stamp, truth, self.truths, self.scores, first_is_score=False)

    def _add(self, stamp, value, mine: OrderedDict, theirs: OrderedDict, first_is_score: bool):
        """``(score, truth)`` when ``stamp`` completes a pair, else None (value kept)."""
        other = theirs.pop(stamp, None)
        if other is not None:
            return (value, other) if first_is_score else (other, value)
        mine[stamp] = value
        while len(mine) > self.horizon:
            mine.popitem(last=False)
        return None


class FolderTruth:
    """Ground-truth PNGs named by header stamp in nanoseconds, else by frame index."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise UserError(f"ground-truth folder not found: {self.folder}")
        if not any(self.folder.glob("*.png")):
            raise UserError(f"no .png masks in ground-truth folder {self.folder}")

    def get(self, stamp_ns: int, index: int) -> np.ndarray | None:
        """The mask for a frame by stamp, else by index; None when there is none."""
        from PIL import Image

        for path in (self.folder / f"{stamp_ns}.png", self.folder / f"{index:06d}.png"):
            if path.is_file():
                with Image.open(path) as img:
                    if img.mode not in ("L", "P"):
                        raise UserError(f"ground truth {path} is {img.mode}; expected an 8-bit label image")
                    return np.asarray(img)
        return None


class Evaluation:
    """Streaming metrics over frames with ground truth."""

    def __init__(self, bins: int, threshold: float, components: bool) -> None:
        from flowclas_ros.metrics import BinnedMetrics, ComponentMetrics

        self.pixels = BinnedMetrics(bins=bins)
        self.components = ComponentMetrics("anomaly") if components else None
        self.threshold = threshold
        self.num_images = self.mismatched = 0

    def add(self, score: np.ndarray, truth: np.ndarray) -> None:
        """Count one frame's pixels (frames whose truth has another size are skipped and counted)."""
        if truth.shape != score.shape:
            if not self.mismatched:
                log.warning("ground truth %s differs from frame %s; such frames are not evaluated",
                            truth.shape, score.shape)
            self.mismatched += 1
            return
        self.pixels.update(score, truth)
        if self.components is not None:
            self.components.update(score, truth, self.threshold)
        self.num_images += 1

    def write(self, path: Path, **extra) -> Path | None:
        """metrics.json, or None (with a warning) when no frame had usable ground truth."""
        from flowclas_ros.metrics import write_metrics_json

        try:
            metrics = self.pixels.compute()
            if self.components is not None:
                metrics["component"] = self.components.compute()
        except ValueError as exc:
            log.warning("no metrics: %s", exc)
            return None
        return write_metrics_json(
            path, metrics, num_images=self.num_images, num_pixels=self.pixels.num_pixels,
            frames_gt_size_mismatch=self.mismatched, **extra,
        )


class Replay:
    """One pass over an open input bag into an open output bag."""

    def __init__(self, args: ReplayOptions, reader, bag, pipeline, factory, stats, evaluation, truth_folder) -> None:
        from flowclas_ros.bagio import LATCHED, qos

        self.args, self.reader, self.bag, self.pipeline, self.factory = args, reader, bag, pipeline, factory
        self.stats = stats
        self.evaluation, self.truth_folder = evaluation, truth_folder
        self.matcher = StampMatcher()
        self.image_type = next(c.msgtype for c in reader.connections if c.topic == args.image_topic)
        self.copies = {}  # input connection id -> output connection (None: not copied)
        by_topic = {}  # several input connections of one topic and type share one output
        for connection in reader.connections:
            key = (connection.topic, connection.msgtype)
            if connection.topic.startswith(NAMESPACE + "/"):
                copied = None  # outputs of an earlier replay: this replay writes its own
            elif key in by_topic:
                copied = by_topic[key]
            elif (copied := bag.copy(connection)) is None:
                log.warning("%s (%s) has no type definition; not copied", connection.topic, connection.msgtype)
            self.copies[connection.id] = by_topic[key] = copied
        names = FRAME_TOPICS if args.overlay else tuple(t for t in FRAME_TOPICS if t != "anomaly_overlay")
        self.outputs = {
            name: bag.add(f"{NAMESPACE}/{name}",
                          "vision_msgs/msg/Detection2DArray" if name == "hazards" else "sensor_msgs/msg/Image")
            for name in names
        }
        self.label_info = bag.add(f"{NAMESPACE}/label_info", "vision_msgs/msg/LabelInfo", LATCHED)
        self.diagnostics = bag.add(f"{NAMESPACE}/diagnostics", "diagnostic_msgs/msg/DiagnosticArray", qos())
        self.label_written = False
        self.next_diagnostics = None
        self.last_ns = 0
        self.index = 0
        self.bad_truths = 0
        self.stage_seconds: Counter = Counter()  # pipeline stage -> total seconds

    def frames(self):
        """Image frames ``(log ns, (index, raw))`` in log order; copies every message on the way
        and feeds ground-truth masks to the matcher."""
        from rosbags.highlevel import AnyReaderError

        from flowclas_ros.bagio import stamp_to_ns
        from flowclas_ros.runtime.codecs import MessageError, decode_mask

        for connection, timestamp, data in self.reader.messages():
            self.last_ns = max(self.last_ns, timestamp)
            if (copy := self.copies[connection.id]) is not None:
                self.bag.write_raw(copy, timestamp, data)
            if connection.topic == self.args.image_topic:
                yield timestamp, (self.index, data)
                self.index += 1
                if self.args.max_frames is not None and self.index >= self.args.max_frames:
                    return
            elif connection.topic == self.args.gt_topic and self.evaluation is not None:
                try:
                    msg = self.reader.deserialize(data, connection.msgtype)
                    pair = self.matcher.add_truth(stamp_to_ns(msg.header.stamp), decode_mask(msg))
                except (AnyReaderError, MessageError, ValueError, AttributeError) as exc:
                    self.bad_truths += 1
                    if self.bad_truths == 1:
                        log.warning("ground-truth message at %d skipped: %s", timestamp, exc)
                    continue
                if pair is not None:
                    self.evaluation.add(*pair)

    def process(self, item: tuple[int, bytes]):
        """Run the pipeline on one raw image message: ``((index, msg, output | None), seconds)``."""
        index, data = item
        start = time.perf_counter()
        try:
            msg = self.reader.deserialize(data, self.image_type)
        except Exception as exc:  # rosbags raises several types for corrupt CDR; all mean "reject"
            self._reject(index, f"undecodable message: {exc}")
            return (index, None, None), time.perf_counter() - start
        output = self.pipeline.process(msg, overlay=self.args.overlay)
        seconds = time.perf_counter() - start
        return (index, msg, output), seconds

    def _reject(self, index: int, reason: str) -> None:
        if self.stats.reject("undecodable") == 1:
            log.warning("frame %d rejected: %s", index, reason)

    def publish(self, index: int, msg, output, publish_ns: int) -> None:
        """Write one frame's outputs at ``publish_ns``, evaluate it, tick the diagnostics."""
        from flowclas_ros.bagio import stamp_to_ns

        for name, out_msg in output.messages.items():
            self.bag.write(self.outputs[name], publish_ns, out_msg)
        if not self.label_written:
            label = self.factory.label_info(msg.header, output.detection.threshold)
            self.bag.write(self.label_info, publish_ns, label)
            self.label_written = True
        self.stage_seconds.update(output.timings)
        if self.evaluation is not None:
            stamp = stamp_to_ns(msg.header.stamp)
            score = output.detection.score
            if self.truth_folder is not None:
                truth = self.truth_folder.get(stamp, index)
                pair = None if truth is None else (score, truth)
            else:
                pair = self.matcher.add_score(stamp, score)
            if pair is not None:
                self.evaluation.add(*pair)

    def diagnostics_due(self, now_ns: int) -> None:
        """A DiagnosticArray every DIAGNOSTICS_PERIOD_NS of bag time."""
        if self.next_diagnostics is None:
            self.next_diagnostics = now_ns + DIAGNOSTICS_PERIOD_NS
        while now_ns >= self.next_diagnostics:
            self.write_diagnostics(self.next_diagnostics)
            self.next_diagnostics += DIAGNOSTICS_PERIOD_NS

    def write_diagnostics(self, now_ns: int) -> None:
        """Write a DiagnosticArray of the current statistics at ``now_ns``."""
        from flowclas_ros.bagio import ns_to_stamp

        types = self.bag.store.types
        level, message = self.stats.level()
        values = [types["diagnostic_msgs/msg/KeyValue"](key=k, value=v) for k, v in self.stats.values(now_ns * 1e-9).items()]
        status = types["diagnostic_msgs/msg/DiagnosticStatus"](
            level=level, name="flowclas_replay: anomaly detector", message=message, hardware_id=self.stats.device, values=values
        )
        header = types["std_msgs/msg/Header"](stamp=ns_to_stamp(self.bag.store, now_ns), frame_id="")
        self.bag.write(self.diagnostics, now_ns, types["diagnostic_msgs/msg/DiagnosticArray"](header=header, status=[status]))

    def run(self, progress) -> None:
        """The whole pass, as fast as possible or (``--realtime``) on the simulated clock."""
        from flowclas_ros.runtime.scheduling import KeepLatestScheduler

        if self.args.realtime:
            scheduler = KeepLatestScheduler(self.process)
            origin = None
            for timestamp, item in self.frames():
                origin = timestamp if origin is None else origin
                self._arrive(timestamp, progress)
                for done in scheduler.offer((timestamp - origin) * 1e-9, item):
                    self._finish(done, origin)
                self.stats.drop(scheduler.dropped - self.stats.dropped)
            for done in scheduler.flush():
                self._finish(done, origin)
        else:
            for timestamp, item in self.frames():
                self._arrive(timestamp, progress)
                (index, msg, output), seconds = self.process(item)
                if output is not None:
                    self.stats.publish(timestamp * 1e-9, seconds)
                    self.publish(index, msg, output, timestamp)
        self.write_diagnostics(self.last_ns)

    def _arrive(self, timestamp: int, progress) -> None:
        self.stats.receive(timestamp * 1e-9)
        self.diagnostics_due(timestamp)
        progress.update(1)

    def _finish(self, done, origin: int) -> None:
        index, msg, output = done.result
        if output is None:
            return
        publish_ns = origin + round(done.finish * 1e9)
        self.stats.publish(publish_ns * 1e-9, done.latency)
        self.last_ns = max(self.last_ns, publish_ns)
        self.publish(index, msg, output, publish_ns)


def replay(args: ReplayOptions, progress: bool = True) -> ReplayResult:
    """Replay ``args.bag`` through the frame pipeline into ``args.output``."""
    from tqdm import tqdm

    from flowclas_ros.bagio import COMPRESSED_IMAGE, IMAGE, BagWriter, open_bag, topic_types, typestore
    from flowclas_ros.runtime.detector import Detector
    from flowclas_ros.runtime.messages import rosbags_factory
    from flowclas_ros.runtime.pipeline import FramePipeline
    from flowclas_ros.runtime.smoothing import build_smoother
    from flowclas_ros.runtime.stats import FrameStats

    args.check()
    truth_folder = FolderTruth(args.gt_folder) if args.gt_folder else None
    bag_path = Path(args.bag)
    out = Path(args.output)
    with open_bag(bag_path) as reader:
        types = topic_types(reader)
        if types.get(args.image_topic) not in (IMAGE, COMPRESSED_IMAGE):
            found = ", ".join(f"{t} ({m})" for t, m in sorted(types.items()))
            raise UserError(f"--image-topic {args.image_topic} is not an Image or CompressedImage topic of the bag: {found}")
        if args.gt_topic and types.get(args.gt_topic) not in (IMAGE, COMPRESSED_IMAGE):
            raise UserError(f"--gt-topic {args.gt_topic} is not an Image or CompressedImage topic of the bag")
        total = sum(c.msgcount for c in reader.connections if c.topic == args.image_topic)
        if args.max_frames is not None:
            total = min(total, args.max_frames)

        detector = Detector.from_bundle(args.model, device=args.device, precision=args.precision, backend=args.backend)
        if args.threshold is not None:
            detector.threshold = args.threshold
        factory = rosbags_factory(typestore())
        # every latency kept for exact percentiles: 8 bytes a frame
        stats = FrameStats(backend=args.backend, device=args.device, latency_samples=None)
        pipeline = FramePipeline(detector, factory, smoother=build_smoother(args.smoothing), min_area=args.min_area,
                                 stats=stats)
        evaluation = None
        if args.gt_topic or truth_folder:
            evaluation = Evaluation(args.bins, detector.threshold, args.components)
        name = (bag_path.stem if bag_path.is_file() else bag_path.name) or "bag"
        started = time.perf_counter()
        with BagWriter(out / name, args.storage) as bag, tqdm(total=total, desc="replay", unit="frame",
                                                                disable=not progress) as bar:
            replayer = Replay(args, reader, bag, pipeline, factory, stats, evaluation, truth_folder)
            replayer.run(bar)
        seconds = time.perf_counter() - started

    report = _report(args, stats, seconds, out / name)
    report["stage_ms"] = {k: 1e3 * v / max(1, stats.processed) for k, v in replayer.stage_seconds.items()}
    report["ground_truth_skipped"] = replayer.bad_truths
    (out / "replay.json").write_text(json.dumps(report, indent=2) + "\n")
    metrics_path = evaluation.write(out / "metrics.json", model=str(args.model), bag=str(bag_path)) if evaluation else None
    return ReplayResult(report, out / name, metrics_path)


def _report(args: ReplayOptions, stats, seconds: float, bag: Path) -> dict:
    return {
        "bag": str(args.bag),
        "output_bag": str(bag),
        "model": str(args.model),
        "backend": args.backend,
        "device": args.device,
        "realtime": bool(args.realtime),
        "frames": stats.received,
        "processed": stats.processed,
        "dropped": stats.dropped,
        "rejected": stats.rejected,
        "drop_rate": stats.dropped / stats.received if stats.received else 0.0,
        "latency_ms": stats.latency.percentiles_ms(),
        "latency_kind": "arrival to publish (simulated)" if args.realtime else "processing time per frame",
        "seconds": seconds,
        "throughput_fps": stats.received / seconds if seconds > 0 else 0.0,
    }
