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
import math
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from flowclas_ros.errors import UserError
from flowclas_ros.limits import METRIC_BINS
from flowclas_ros.vocabulary import Label

log = logging.getLogger(__name__)

NAMESPACE = "/flowclas"
FRAME_TOPICS = ("anomaly_score", "anomaly_mask", "anomaly_overlay", "hazards")
DIAGNOSTICS_PERIOD_NS = 10**9
MAX_MASK_BYTES = 2**28  # a ground-truth PNG file (a label PNG of MAX_FRAME_PIXELS is far smaller)


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
    max_input_pixels: int | None = None

    def check(self) -> None:
        """UserError for values no replay can use."""
        from flowclas_ros.vocabulary import MAX_FRAME_PIXELS

        if self.max_input_pixels is not None and not 1 <= self.max_input_pixels <= MAX_FRAME_PIXELS:
            raise UserError(f"--max-input-pixels must be in 1..{MAX_FRAME_PIXELS}, got {self.max_input_pixels}")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise UserError(f"--threshold must be in [0, 1], got {self.threshold}")
        if self.max_frames is not None and self.max_frames < 1:
            raise UserError(f"--max-frames must be at least 1, got {self.max_frames}")
        if self.min_area < 0:
            raise UserError(f"--min-area must be >= 0, got {self.min_area}")
        if not METRIC_BINS.contains(self.bins):
            raise UserError(f"--bins must be in {METRIC_BINS}, got {self.bins}")
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
        """The mask for a frame by stamp, else by index; None when there is none. MessageError
        for a file that is not a single-channel PNG (decoded as a mask message would be, within
        the same pixel budget)."""
        from flowclas_ros.runtime.codecs import MessageError, decode_mask

        for path in (self.folder / f"{stamp_ns}.png", self.folder / f"{index:06d}.png"):
            if path.is_file():
                if (size := path.stat().st_size) > MAX_MASK_BYTES:
                    raise MessageError(f"{path.name} has {size} bytes, more than a mask PNG may ({MAX_MASK_BYTES})",
                                       "size")
                return decode_mask(SimpleNamespace(format="png", data=path.read_bytes()))
        return None


LABELS = np.array([Label.INLIER, Label.ANOMALY, Label.VOID], dtype=np.int64)


def unusable_truth(score: np.ndarray, truth: np.ndarray) -> tuple[str, str] | None:
    """``(reason, detail)`` when a ground-truth mask cannot be scored against ``score``, else None."""
    if truth.shape != score.shape:
        return "shape", f"ground truth {truth.shape} differs from frame {score.shape}"
    valid = np.isin(truth, LABELS)
    if not valid.all():
        values = sorted(int(v) for v in np.unique(truth[~valid])[:5])
        return "labels", f"labels must be 0 inlier, 1 anomaly or 255 void; found {values}"
    return None


class Evaluation:
    """Streaming metrics over frames with ground truth."""

    def __init__(self, bins: int, threshold: float, components: bool) -> None:
        from flowclas_ros.metrics import BinnedMetrics, ComponentMetrics

        self.pixels = BinnedMetrics(bins=bins)
        self.components = ComponentMetrics("anomaly") if components else None
        self.threshold = threshold
        self.num_images = 0

    def add(self, score: np.ndarray, truth: np.ndarray) -> None:
        """Count one frame's pixels (check the pair with :func:`unusable_truth` first)."""
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
        return write_metrics_json(path, metrics, num_images=self.num_images, num_pixels=self.pixels.num_pixels, **extra)


class Replay:
    """One pass over an open input bag into an open output bag.

    Every message on the image topic is a frame; one that cannot be used (not an image type,
    malformed CDR, undecodable image) is rejected, counted by reason and warned about once per
    reason, and the pass goes on. Ground truth that cannot be used is skipped the same way.
    """

    def __init__(self, args: ReplayOptions, reader, bag, pipeline, factory, stats, evaluation, truth_folder) -> None:
        from flowclas_ros.bagio import LATCHED, qos

        self.args, self.reader, self.bag, self.pipeline, self.factory = args, reader, bag, pipeline, factory
        self.stats = stats
        self.evaluation, self.truth_folder = evaluation, truth_folder
        self.matcher = StampMatcher()
        self.copies = {}  # input connection id -> output connection (None: not copied)
        by_topic = {}  # several input connections of one topic and type share one output
        for connection in reader.connections:
            key = (connection.topic, connection.msgtype)
            if connection.topic.startswith(NAMESPACE + "/"):
                copied = None  # outputs of an earlier replay: this replay writes its own
            elif key in by_topic:
                copied = by_topic[key]
            elif (copied := bag.copy(connection, reader)) is None:
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
        self.truth_skipped: Counter[str] = Counter()  # reason -> ground-truth masks not used
        self.damaged: str | None = None  # why reading stopped early
        self.stage_seconds: Counter = Counter()  # pipeline stage -> total seconds

    def frames(self):
        """Image frames ``(log ns, (index, connection, raw))`` in log order; copies every message
        on the way and feeds ground-truth masks to the matcher. A bag whose storage fails part
        way is replayed up to there (warned, and noted in the report)."""
        from flowclas_ros.bagio import DamagedBagError

        try:
            for connection, timestamp, data in self.reader.messages():
                self.last_ns = max(self.last_ns, timestamp)
                if (copy := self.copies[connection.id]) is not None:
                    self.bag.write_raw(copy, timestamp, data)
                if connection.topic == self.args.image_topic:
                    yield timestamp, (self.index, connection, data)
                    self.index += 1
                    if self.args.max_frames is not None and self.index >= self.args.max_frames:
                        return
                elif connection.topic == self.args.gt_topic and self.evaluation is not None:
                    self._truth_message(connection, timestamp, data)
        except DamagedBagError as exc:
            self.damaged = str(exc)
            log.warning("%s; the frames before it are replayed", exc)

    def _truth_message(self, connection, timestamp: int, data: bytes) -> None:
        from flowclas_ros.bagio import IMAGE_TYPES, stamp_to_ns
        from flowclas_ros.runtime.codecs import MessageError, decode_mask

        try:
            if connection.msgtype not in IMAGE_TYPES:
                raise MessageError(f"{connection.msgtype} is not an image type", "type")
            msg = self.reader.deserialize(data, connection.msgtype)
            truth = decode_mask(msg)
        except MessageError as exc:
            self._skip_truth(exc.reason, f"message at log time {timestamp}: {exc}")
            return
        try:
            stamp = stamp_to_ns(msg.header.stamp)
        except (AttributeError, TypeError, ValueError, OverflowError):
            self._skip_truth("header", f"message at log time {timestamp} has no usable header stamp")
            return
        if (pair := self.matcher.add_truth(stamp, truth)) is not None:
            self._evaluate(*pair)

    def _skip_truth(self, reason: str, detail: str) -> None:
        self.truth_skipped[reason] += 1
        if self.truth_skipped[reason] == 1:
            log.warning("ground truth skipped (%s): %s; later ones skipped for the same reason are only counted",
                        reason, detail)

    def _evaluate(self, score: np.ndarray, truth: np.ndarray) -> None:
        if (why := unusable_truth(score, truth)) is not None:
            self._skip_truth(*why)
        else:
            self.evaluation.add(score, truth)

    def process(self, item: tuple[int, object, bytes]):
        """Run the pipeline on one raw image message: ``((index, msg, output | None), seconds)``."""
        from flowclas_ros.bagio import IMAGE_TYPES
        from flowclas_ros.runtime.codecs import MessageError

        index, connection, data = item
        start = time.perf_counter()
        try:
            if connection.msgtype not in IMAGE_TYPES:
                raise MessageError(f"a {connection.msgtype} message on the image topic is not an image", "type")
            msg = self.reader.deserialize(data, connection.msgtype)
        except MessageError as exc:
            self._reject(index, exc)
            return (index, None, None), time.perf_counter() - start
        output = self.pipeline.process(msg, overlay=self.args.overlay)
        seconds = time.perf_counter() - start
        return (index, msg, output), seconds

    def _reject(self, index: int, exc) -> None:
        if self.stats.reject(exc.reason) == 1:
            log.warning("frame %d rejected (%s): %s; later ones rejected for the same reason are only counted",
                        index, exc.reason, exc)

    def publish(self, index: int, msg, output, publish_ns: int) -> None:
        """Write one frame's outputs at ``publish_ns``, evaluate it, tick the diagnostics."""
        from flowclas_ros.bagio import stamp_to_ns
        from flowclas_ros.runtime.codecs import MessageError

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
                try:
                    truth = self.truth_folder.get(stamp, index)
                except MessageError as exc:
                    self._skip_truth(exc.reason, f"frame {index} in {self.truth_folder.folder}: {exc}")
                    return
                pair = None if truth is None else (score, truth)
            else:
                pair = self.matcher.add_score(stamp, score)
            if pair is not None:
                self._evaluate(*pair)

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


def image_connections(reader, topic: str, flag: str) -> list:
    """The connections of ``topic`` that carry Image or CompressedImage messages; UserError
    (naming the bag's image topics) when there is none."""
    from flowclas_ros.bagio import IMAGE_TYPES

    on_topic = [c for c in reader.connections if c.topic == topic]
    if images := [c for c in on_topic if c.msgtype in IMAGE_TYPES]:
        return images
    why = f"it has type {', '.join(sorted({c.msgtype for c in on_topic}))}" if on_topic else "it is not in the bag"
    candidates = sorted({c.topic for c in reader.connections if c.msgtype in IMAGE_TYPES})
    if candidates:
        hint = f"image topics: {', '.join(candidates[:8])}" + (", ..." if len(candidates) > 8 else "")
    else:
        topics = sorted({c.topic for c in reader.connections})
        hint = f"the bag has no image topic among its {len(topics)} topics"
        hint += f" ({', '.join(topics[:5])}{', ...' if len(topics) > 5 else ''})" if topics else ""
    raise UserError(f"{flag} {topic} is not an Image or CompressedImage topic of the bag ({why}); {hint}")


def replay(args: ReplayOptions, progress: bool = True) -> ReplayResult:
    """Replay ``args.bag`` through the frame pipeline into ``args.output``."""
    from tqdm import tqdm

    from flowclas_ros.bagio import IMAGE_TYPES, BagWriter, open_bag, typestore
    from flowclas_ros.files import atomic_write, claim_folder
    from flowclas_ros.runtime.detector import Detector
    from flowclas_ros.runtime.messages import rosbags_factory
    from flowclas_ros.runtime.pipeline import FramePipeline
    from flowclas_ros.runtime.smoothing import build_smoother
    from flowclas_ros.runtime.stats import FrameStats

    args.check()
    truth_folder = FolderTruth(args.gt_folder) if args.gt_folder else None
    bag_path = Path(args.bag)
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise UserError(f"--output {out} exists and is not a folder")
    name = (bag_path.stem if bag_path.is_file() else bag_path.resolve().name) or "bag"
    if (out / name).exists():
        raise UserError(f"output bag {out / name} exists already; choose another output")
    with open_bag(bag_path) as reader:
        total = sum(c.msgcount for c in image_connections(reader, args.image_topic, "--image-topic"))
        if args.gt_topic:
            image_connections(reader, args.gt_topic, "--gt-topic")
        total += sum(c.msgcount for c in reader.connections
                     if c.topic == args.image_topic and c.msgtype not in IMAGE_TYPES)
        if args.max_frames is not None:
            total = min(total, args.max_frames)

        detector = Detector.from_bundle(args.model, device=args.device, precision=args.precision, backend=args.backend)
        if args.threshold is not None:
            detector.threshold = args.threshold
        factory = rosbags_factory(typestore())
        # every latency kept for exact percentiles: 8 bytes a frame
        stats = FrameStats(backend=args.backend, device=args.device, latency_samples=None)
        # one warning per rejection reason (the counts go to replay.json)
        pipeline = FramePipeline(detector, factory, smoother=build_smoother(args.smoothing), min_area=args.min_area,
                                 stats=stats, max_input_pixels=args.max_input_pixels, log_interval=math.inf)
        evaluation = None
        if args.gt_topic or truth_folder:
            evaluation = Evaluation(args.bins, detector.threshold, args.components)
        claim_folder(out, ".flowclas-replay")  # metrics.json and replay.json replace only our own
        started = time.perf_counter()
        with BagWriter(out / name, args.storage) as bag, tqdm(total=total, desc="replay", unit="frame",
                                                                disable=not progress) as bar:
            replayer = Replay(args, reader, bag, pipeline, factory, stats, evaluation, truth_folder)
            replayer.run(bar)
        seconds = time.perf_counter() - started

    report = _report(args, stats, seconds, out / name)
    report["stage_ms"] = {k: 1e3 * v / max(1, stats.processed) for k, v in replayer.stage_seconds.items()}
    report["ground_truth_skipped"] = sum(replayer.truth_skipped.values())
    report["ground_truth_skipped_by_reason"] = dict(replayer.truth_skipped)
    report["damaged"] = replayer.damaged
    atomic_write(out / "replay.json", lambda path: path.write_text(json.dumps(report, indent=2) + "\n"))
    metrics_path = None
    if evaluation is not None:
        metrics_path = evaluation.write(out / "metrics.json", model=str(args.model), bag=str(bag_path),
                                        frames_gt_size_mismatch=replayer.truth_skipped["shape"],
                                        frames_gt_bad_labels=replayer.truth_skipped["labels"])
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
        "rejected_by_reason": dict(stats.rejected_by_reason),
        "drop_rate": stats.dropped / stats.received if stats.received else 0.0,
        "latency_ms": stats.latency.percentiles_ms(),
        "latency_kind": "arrival to publish (simulated)" if args.realtime else "processing time per frame",
        "seconds": seconds,
        "throughput_fps": stats.received / seconds if seconds > 0 else 0.0,
    }
