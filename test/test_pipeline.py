"""The frame pipeline on a real (tiny) bundle with rosbags message classes and rclpy-like objects."""

from __future__ import annotations

import array
import io
import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import randomize_head, small_config
from PIL import Image
from rosbags.typesys import Stores, get_typestore

from flowclas_ros.model import FlowCLASNet, save_bundle
from flowclas_ros.runtime import Detector
from flowclas_ros.runtime.codecs import decode_image, decode_mask
from flowclas_ros.runtime.messages import rosbags_factory
from flowclas_ros.runtime.pipeline import FramePipeline
from flowclas_ros.runtime.smoothing import build_smoother

H, W = 48, 72


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    torch.manual_seed(0)
    bundle = save_bundle(randomize_head(FlowCLASNet(small_config())).eval(), tmp_path_factory.mktemp("bundle"))
    det = Detector.from_bundle(bundle)
    frame = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    det.threshold = float(np.quantile(det.score(frame), 0.8))  # a mask with something in it
    return det


@pytest.fixture(scope="module")
def typestore():
    return get_typestore(Stores.ROS2_HUMBLE)


@pytest.fixture
def pipeline(detector, typestore):
    return FramePipeline(detector, rosbags_factory(typestore))


def header(typestore, sec=1700000000, nanosec=123456789, frame_id="camera_optical"):
    t = typestore.types
    return t["std_msgs/msg/Header"](stamp=t["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec), frame_id=frame_id)


def bgr_message(typestore, seed=0, **changes):
    rgb = np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)
    fields = dict(header=header(typestore, sec=seed), height=H, width=W, encoding="bgr8", is_bigendian=0,
                  step=W * 3, data=np.ascontiguousarray(rgb[..., ::-1]).reshape(-1))
    fields.update(changes)
    return typestore.types["sensor_msgs/msg/Image"](**fields), rgb


def test_outputs_carry_header_and_right_encodings(pipeline, typestore, detector):
    msg, rgb = bgr_message(typestore, seed=3)
    out = pipeline.process(msg)
    assert set(out.messages) == {"anomaly_score", "anomaly_mask", "hazards"}
    for m in out.messages.values():
        assert (m.header.stamp.sec, m.header.stamp.nanosec, m.header.frame_id) == (3, 123456789, "camera_optical")
    score, mask = out.messages["anomaly_score"], out.messages["anomaly_mask"]
    assert (score.encoding, score.height, score.width, score.step) == ("32FC1", H, W, W * 4)
    assert (mask.encoding, mask.height, mask.width, mask.step) == ("mono8", H, W, W)
    expected = detector.score(rgb)
    np.testing.assert_allclose(score.data.view(np.float32).reshape(H, W), expected, atol=1e-6)
    np.testing.assert_array_equal(decode_mask(mask), np.where(expected >= detector.threshold, 255, 0))
    hazards = out.messages["hazards"].detections
    assert len(hazards) == len(out.detection.hazards) > 0
    first, best = hazards[0], out.detection.hazards[0]
    assert first.results[0].hypothesis.class_id == "anomaly"
    assert first.results[0].hypothesis.score == pytest.approx(best.peak_score)
    assert (first.bbox.size_x, first.bbox.size_y, first.id) == (best.width, best.height, f"area={best.area}")
    assert set(out.timings) == {"decode", "model", "post", "encode"} and all(t >= 0 for t in out.timings.values())


def test_overlay_only_when_asked(pipeline, typestore):
    msg, rgb = bgr_message(typestore)
    assert "anomaly_overlay" not in pipeline.process(msg).messages
    out = pipeline.process(msg, overlay=True)
    ov = out.messages["anomaly_overlay"]
    assert (ov.encoding, ov.height, ov.width, ov.step) == ("bgr8", H, W, W * 3)
    picture = decode_image(ov)
    outside = ~out.detection.mask
    np.testing.assert_array_equal(picture[outside], rgb[outside])  # untouched outside the mask
    assert (picture[out.detection.mask] != rgb[out.detection.mask]).any()


def test_bad_message_rejected_and_next_frame_processed(pipeline, typestore, caplog):
    good, _ = bgr_message(typestore)
    bad_step, _ = bgr_message(typestore, step=W * 3 + 1)
    unknown, _ = bgr_message(typestore, encoding="hsv8")
    with caplog.at_level(logging.WARNING, logger="flowclas_ros.runtime.pipeline"):
        results = [pipeline.process(m) for m in (bad_step, bad_step, good, unknown, good)]
    assert [r is None for r in results] == [True, True, False, True, False]
    stats = pipeline.stats
    assert (stats.processed, stats.rejected) == (2, 3)
    assert stats.rejected_by_reason == {"data": 2, "encoding": 1}
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2 and "hsv8" in warnings[1]  # one line per reason, not per frame
    assert pipeline.process(SimpleNamespace(height=H)) is None  # not even a message
    no_stamp = SimpleNamespace(**{k: getattr(good, k) for k in ("height", "width", "encoding", "is_bigendian", "step", "data")},
                               header=SimpleNamespace(frame_id="cam"))
    assert pipeline.process(no_stamp) is None and stats.rejected_by_reason["header"] == 2


def test_rclpy_style_and_compressed_inputs(pipeline, typestore, detector):
    _, rgb = bgr_message(typestore, seed=5)
    stamp = SimpleNamespace(stamp=SimpleNamespace(sec=9, nanosec=8), frame_id="cam")
    raw = SimpleNamespace(header=stamp, height=H, width=W, encoding="rgb8", is_bigendian=0, step=W * 3,
                          data=array.array("B", rgb.tobytes()))
    out = pipeline.process(raw)
    assert out.messages["anomaly_score"].header.stamp.sec == 9
    np.testing.assert_array_equal(out.frame, rgb)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    compressed = SimpleNamespace(header=stamp, format="png", data=buffer.getvalue())
    np.testing.assert_allclose(pipeline.process(compressed).detection.score, out.detection.score, atol=1e-6)


def test_smoothing_rethresholds_and_recomputes_hazards(detector, typestore):
    msg, rgb = bgr_message(typestore, seed=7)
    plain = FramePipeline(detector, rosbags_factory(typestore)).process(msg).detection
    smoothed = FramePipeline(detector, rosbags_factory(typestore), build_smoother("superpixels", segments=20)).process(msg).detection
    assert not np.array_equal(smoothed.score, plain.score)
    np.testing.assert_array_equal(smoothed.mask, smoothed.score >= detector.threshold)
    assert sum(h.area for h in smoothed.hazards) == smoothed.mask.sum()
    big = FramePipeline(detector, rosbags_factory(typestore), min_area=10).process(msg).detection
    assert big.hazards == [h for h in plain.hazards if h.area >= 10] and len(big.hazards) < len(plain.hazards)


def test_messages_serialise_with_the_typestore(pipeline, typestore):
    msg, _ = bgr_message(typestore, seed=11)
    out = pipeline.process(msg, overlay=True)
    messages = dict(out.messages, label_info=pipeline.factory.label_info(msg.header, pipeline.detector.threshold))
    for name, m in messages.items():
        raw = typestore.serialize_cdr(m, m.__msgtype__)
        back = typestore.deserialize_cdr(raw, m.__msgtype__)
        assert back.header == m.header, name
    info = typestore.deserialize_cdr(typestore.serialize_cdr(messages["label_info"], "vision_msgs/msg/LabelInfo"),
                                     "vision_msgs/msg/LabelInfo")
    assert info.threshold == pytest.approx(pipeline.detector.threshold, abs=1e-6)
    assert [(c.class_id, c.class_name) for c in info.class_map] == [(0, "inlier"), (255, "anomaly")]
    hazards = typestore.deserialize_cdr(typestore.serialize_cdr(out.messages["hazards"], "vision_msgs/msg/Detection2DArray"),
                                        "vision_msgs/msg/Detection2DArray")
    assert len(hazards.detections) == len(out.detection.hazards)
    assert hazards.detections[0].bbox.center.position.x == pytest.approx(out.detection.hazards[0].center[0])
