"""One frame, message in to messages out: the pipeline shared by the ROS node and bag replay.

decode (``codecs``) -> ``Detector.detect`` -> optional smoothing, re-threshold and hazards ->
output messages (``MessageFactory``), each carrying a copy of the input header. A message that
cannot be decoded (or is larger than ``max_input_pixels``, checked before decoding) is
rejected: counted by reason, logged as a warning with its reason and header stamp, at most one
line per reason per ``log_interval`` seconds (the next line says how many more were rejected
since, so a bad stream cannot flood the log), and the pipeline carries on with the next frame.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from numbers import Integral
from typing import Any

import numpy as np

from flowclas_ros.runtime.codecs import MessageError, decode_image
from flowclas_ros.runtime.detector import Detection, Detector
from flowclas_ros.runtime.hazards import find_hazards
from flowclas_ros.runtime.messages import MessageFactory
from flowclas_ros.runtime.smoothing import Smoother
from flowclas_ros.runtime.stats import FrameStats
from flowclas_ros.runtime.visualize import overlay as overlay_picture
from flowclas_ros.vocabulary import MASK_ON

log = logging.getLogger(__name__)


@dataclass
class PipelineOutput:
    """What one frame produced.

    ``messages`` is keyed by output topic suffix: ``anomaly_score`` (32FC1), ``anomaly_mask``
    (mono8 0/255), ``hazards`` (vision_msgs/Detection2DArray) and, when asked for,
    ``anomaly_overlay`` (bgr8). ``timings`` holds seconds per stage: decode, model, post, encode.
    ``frame`` is the decoded RGB frame (often a read-only view of the message buffer).
    """

    detection: Detection
    messages: dict[str, Any]
    timings: dict[str, float]
    frame: np.ndarray


def _checked_header(msg: Any) -> Any:
    """The message's std_msgs/Header, if it has one the factories can copy."""
    header = getattr(msg, "header", None)
    stamp = getattr(header, "stamp", None)
    if not (isinstance(getattr(stamp, "sec", None), Integral) and isinstance(getattr(stamp, "nanosec", None), Integral)
            and isinstance(getattr(header, "frame_id", None), str)):
        raise MessageError("message has no header with an integer stamp and a frame_id", "header")
    return header


class FramePipeline:
    """Runs ``detector`` on image messages and builds output messages with ``factory``.

    ``smoother`` (see :func:`flowclas_ros.runtime.smoothing.build_smoother`) smooths the score map
    before the mask is re-thresholded; hazards smaller than ``min_area`` pixels are dropped (keep
    the detector's own ``min_area`` at its default 0). The threshold is the detector's
    (``detector.threshold``, settable at run time). Rejected and processed frames are counted
    in ``stats`` (shared with the caller, which counts arrivals, drops and publications).
    """

    def __init__(self, detector: Detector, factory: MessageFactory, smoother: Smoother | None = None,
                 min_area: int = 0, stats: FrameStats | None = None, max_input_pixels: int | None = None,
                 log_interval: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.detector = detector
        self.factory = factory
        self.smoother = smoother
        self.min_area = int(min_area)
        self.stats = FrameStats() if stats is None else stats
        self.max_input_pixels = max_input_pixels
        self.log_interval = log_interval
        self.clock = clock
        self._last_log: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()

    def process(self, msg: Any, overlay: bool = False) -> PipelineOutput | None:
        """Detect on one sensor_msgs/Image or CompressedImage; None when the message is rejected."""
        t0 = time.perf_counter()
        try:
            header = _checked_header(msg)
            frame = decode_image(msg, max_pixels=self.max_input_pixels)
        except MessageError as exc:
            self._reject(exc, msg)
            return None
        t1 = time.perf_counter()
        detection = self.detector.detect(frame)
        t2 = time.perf_counter()
        detection = self._post(frame, detection)
        picture = overlay_picture(frame, detection.score, detection.mask) if overlay else None
        t3 = time.perf_counter()
        f = self.factory
        messages = {
            "anomaly_score": f.image(header, detection.score, "32FC1"),
            "anomaly_mask": f.image(header, detection.mask.view(np.uint8) * np.uint8(MASK_ON), "mono8"),
            "hazards": f.hazards(header, detection.hazards),
        }
        if picture is not None:
            messages["anomaly_overlay"] = f.image(header, picture[..., ::-1], "bgr8")
        t4 = time.perf_counter()
        self.stats.process()
        timings = {"decode": t1 - t0, "model": t2 - t1, "post": t3 - t2, "encode": t4 - t3}
        return PipelineOutput(detection, messages, timings, frame)

    def _post(self, frame: np.ndarray, detection: Detection) -> Detection:
        """Smoothing (then a fresh mask and hazards) and the minimum hazard area."""
        if self.smoother is None:
            hazards = [h for h in detection.hazards if h.area >= self.min_area]
            return Detection(detection.score, detection.mask, detection.threshold, hazards)
        score = self.smoother(frame, detection.score, detection.threshold)
        mask = score >= detection.threshold
        return Detection(score, mask, detection.threshold, find_hazards(mask, score, self.min_area))

    def _reject(self, exc: MessageError, msg: Any) -> None:
        reason = exc.reason
        self.stats.reject(reason)
        now = self.clock()
        last = self._last_log.get(reason)
        if last is not None and now - last < self.log_interval:
            self._suppressed[reason] += 1
            return
        self._last_log[reason] = now
        more = self._suppressed.pop(reason, 0)
        since = f" ({more} more rejected for {reason} since the last line)" if more else ""
        log.warning("rejected image message stamped %s (%s): %s%s", _stamp(msg), reason, exc, since)


def _stamp(msg: Any) -> str:
    stamp = getattr(getattr(msg, "header", None), "stamp", None)
    sec, nanosec = getattr(stamp, "sec", None), getattr(stamp, "nanosec", None)
    if isinstance(sec, Integral) and isinstance(nanosec, Integral):
        return f"{int(sec)}.{int(nanosec):09d}"
    return "?"
