"""flowclas_node as a process on a real ROS 2 graph, started the way launch/detector.launch.py
starts it (config/detector.yaml, image remapped to the camera topic): every output, label_info
latching, parameters through the real parameter service, compressed input, hostile messages,
two cameras in one process, clean shutdown on SIGINT and SIGTERM while frames flow."""

from __future__ import annotations

import io
import signal
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.ros

CAMERA = "/camera/image_raw"
LAUNCH_REMAPS = {"image": CAMERA, "image/compressed": CAMERA + "/compressed"}  # as detector.launch.py
CONFIG = REPO / "config" / "detector.yaml"


def _launch_like(params: dict | None = None) -> dict:
    return {"model": str(REPO / "flowclas_ros" / "data" / "demo_model"), "backend": "torch", **(params or {})}


def _start(node_process, params=None, **kwargs):
    """The node with the launch file's parameter file, remappings and parameter overrides."""
    return node_process(_launch_like(params), LAUNCH_REMAPS, params_file=CONFIG, **kwargs)


def _discovered(driver, namespace=""):
    """Wait until the node's latched label_info arrived: discovery between us and the node is done
    (an output published before the driver's subscription is matched would be lost)."""
    driver.subscribe(f"{namespace}/label_info")
    driver.wait_for(f"{namespace}/label_info", 1)
    time.sleep(0.3)


def _call(driver, service_type, name, request, timeout=20.0):
    client = driver.node.create_client(service_type, name)
    assert client.wait_for_service(timeout_sec=timeout), f"no service {name}"
    future = client.call_async(request)
    deadline = time.monotonic() + timeout
    while not future.done():
        assert time.monotonic() < deadline, f"{name} did not answer"
        time.sleep(0.02)
    return future.result()


def _set_parameter(driver, node_name, name, value):
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters

    if isinstance(value, float):
        pv = ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=value)
    else:
        pv = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=value)
    request = SetParameters.Request(parameters=[Parameter(name=name, value=pv)])
    return _call(driver, SetParameters, f"{node_name}/set_parameters", request).results[0]


def _flow(driver, topic, msg, stop: threading.Event, sent: list, period=0.1):
    """Publish ``msg`` restamped on ``topic`` until ``stop`` is set (without waiting for subscribers)."""
    while not stop.is_set():
        msg.header.stamp = driver.node.get_clock().now().to_msg()
        driver.publish(topic, msg, wait_for_subscriber=False)
        sent.append(msg.header.stamp)
        time.sleep(period)


def _stop_while_flowing(driver, node, topic, sig, msg=None):
    stop, sent = threading.Event(), []
    msg = driver.image(frame_id="flow") if msg is None else msg
    thread = threading.Thread(target=_flow, args=(driver, topic, msg, stop, sent), daemon=True)
    thread.start()
    try:
        time.sleep(1.5)  # frames in flight, the worker busy
        assert thread.is_alive() and len(sent) >= 5, "the frame flow stopped before the signal"
        code = node.stop(sig)
    finally:
        stop.set()
        thread.join(5)
    out = node.output()
    assert "Traceback" not in out and "RCLError" not in out, out
    assert code == 0, out


def _diag_values(driver, count=1):
    statuses = [s for m in driver.wait_for("/diagnostics", count, timeout=30) for s in m.status]
    return {kv.key: kv.value for kv in statuses[-1].values}, statuses[-1]


def _png_header_claiming(width, height):
    """A few dozen bytes of PNG whose header claims width x height RGB pixels."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _compressed(driver, data: bytes, fmt: str, frame_id="camera"):
    from sensor_msgs.msg import CompressedImage

    msg = CompressedImage(format=fmt, data=data)
    msg.header.frame_id = frame_id
    msg.header.stamp = driver.node.get_clock().now().to_msg()
    return msg


def _publish_rejected(driver, rosout: list, topic: str, msg, timeout: float = 30.0) -> None:
    """Publish a frame the node must reject and wait for its rejection line on /rosout.

    The node keeps only the latest waiting frame, so a frame sent next while the worker is still
    busy would replace this one unseen: callers send nothing else until the line arrived."""
    msg.header.stamp = driver.node.get_clock().now().to_msg()
    stamped = f"stamped {msg.header.stamp.sec}.{msg.header.stamp.nanosec:09d}"
    driver.publish(topic, msg)
    deadline = time.monotonic() + timeout
    while not any(stamped in m.msg for m in rosout) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert any(stamped in m.msg for m in rosout), f"no rejection line {stamped!r}"


def test_outputs_latching_parameters_hostile_frames_and_sigterm(node_process, driver):
    from rclpy.parameter import Parameter  # noqa: F401  (rclpy importable: fixtures checked)

    outs = {t: driver.subscribe(t) for t in ("/anomaly_score", "/anomaly_mask", "/anomaly_overlay", "/hazards")}
    driver.subscribe("/diagnostics")
    from rcl_interfaces.msg import Log

    rosout = driver.subscribe("/rosout", Log, latched=False)
    node = _start(node_process)
    assert node is not None

    # label_info is latched: a subscriber arriving after the node started still gets it
    labels = driver.subscribe("/label_info")
    first_label = driver.wait_for("/label_info", 1)[0]
    assert {c.class_name for c in first_label.class_map} == {"inlier", "anomaly"}

    sent = driver.image(frame_id="cam_front")
    score, mask, overlay, hazards = driver.exchange(CAMERA, sent, list(outs))
    for image, encoding, step in ((score, "32FC1", 640 * 4), (mask, "mono8", 640), (overlay, "bgr8", 640 * 3)):
        assert (image.height, image.width, image.encoding, image.step) == (480, 640, encoding, step)
        assert len(image.data) == 480 * step
    for out in (score, mask, overlay, hazards):
        assert out.header.frame_id == "cam_front"
        assert (out.header.stamp.sec, out.header.stamp.nanosec) == (sent.header.stamp.sec, sent.header.stamp.nanosec)
    assert set(np.unique(np.frombuffer(bytes(mask.data), np.uint8))) <= {0, 255}
    # label_info republished with the input's frame_id once known
    relabelled = driver.wait_for("/label_info", 2)[-1]
    assert relabelled.header.frame_id == "cam_front"

    # hostile messages: each rejected, the next good frame still processed
    good = driver.image()
    wrong_encoding = driver.image(encoding="hsv8")
    bad_step = driver.image()
    bad_step.step = 17
    empty = driver.image()
    empty.data = b""
    for bad in (wrong_encoding, bad_step, empty):
        _publish_rejected(driver, rosout, CAMERA, bad)
        good.header.stamp = driver.node.get_clock().now().to_msg()
        driver.exchange(CAMERA, good, "/anomaly_score")
    values, status = _diag_values(driver, len(driver.subscribe("/diagnostics")) + 2)
    assert values["backend"] == "torch" and int(values["rejected"]) == 3
    assert status.level == b"\x01"  # recent rejections
    assert 0 < float(values["latency_p50_ms"]) < 60_000
    out = node.output()
    assert "rejected image message stamped" in out and "hsv8" in out and " at 0x" not in out
    # the pipeline's Python log records reach /rosout under the node's name
    assert any("rejected image message" in m.msg and m.name == "flowclas_detector" for m in rosout), [m.msg for m in rosout]

    # parameters through the parameter service
    result = _set_parameter(driver, "/flowclas_detector", "threshold", 0.5)
    assert result.successful, result.reason
    deadline = time.monotonic() + 10
    while not any(abs(m.threshold - 0.5) < 1e-6 for m in labels) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert any(abs(m.threshold - 0.5) < 1e-6 for m in labels)
    refused = _set_parameter(driver, "/flowclas_detector", "threshold", 5.0)
    assert not refused.successful
    read_only = _set_parameter(driver, "/flowclas_detector", "model", "/elsewhere")
    assert not read_only.successful

    _stop_while_flowing(driver, node, CAMERA, signal.SIGTERM)


def test_compressed_input_huge_png_and_sigint(node_process, driver):
    from PIL import Image as PILImage
    from rcl_interfaces.msg import Log

    scores = driver.subscribe("/anomaly_score")
    rosout = driver.subscribe("/rosout", Log, latched=False)
    node = _start(node_process, {"use_compressed": True})
    topic = CAMERA + "/compressed"
    rgb = np.random.default_rng(1).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    buf = io.BytesIO()
    PILImage.fromarray(rgb).save(buf, format="JPEG", quality=90)
    jpeg = buf.getvalue()
    _discovered(driver)

    score = driver.exchange(topic, _compressed(driver, jpeg, "jpeg", "cam_c"), "/anomaly_score")[0]
    assert (score.height, score.width, score.encoding, score.header.frame_id) == (480, 640, "32FC1", "cam_c")

    started = time.monotonic()
    _publish_rejected(driver, rosout, topic, _compressed(driver, _png_header_claiming(8000, 8000), "png"))
    _publish_rejected(driver, rosout, topic, _compressed(driver, b"\x89PNG not really", "png"))
    driver.exchange(topic, _compressed(driver, jpeg, "rgb8; jpeg compressed bgr8", "cam_c2"), "/anomaly_score")
    assert time.monotonic() - started < 30
    assert scores[-1].header.frame_id == "cam_c2"
    out = node.output()
    assert "max_input_pixels" in out, out
    assert " at 0x" not in out

    _stop_while_flowing(driver, node, topic, signal.SIGINT, _compressed(driver, jpeg, "jpeg", "flow"))


def test_two_cameras_in_one_process(node_process, driver):
    a = driver.subscribe("/a/anomaly_score")
    b = driver.subscribe("/b/anomaly_score")
    labels = driver.subscribe("/a/label_info")
    node = node_process(args=["--cameras", "a", "b"], ready=r"(?s)\]: model .*\]: model ")
    _discovered(driver, "/b")
    assert driver.wait_for("/a/label_info", 1)[0].header.frame_id == "a"  # default: the namespace
    driver.exchange("/a/image", driver.image(frame_id="cam_a"), "/a/anomaly_score")
    driver.exchange("/b/image", driver.image(frame_id="cam_b"), "/b/anomaly_score")
    assert {m.header.frame_id for m in a} == {"cam_a"} and {m.header.frame_id for m in b} == {"cam_b"}  # no cross-talk
    assert labels
    _stop_while_flowing(driver, node, "/a/image", signal.SIGINT)
