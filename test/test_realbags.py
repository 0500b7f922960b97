"""Bags written by real recorders and other tools (../shared/realdata, see its SOURCES.md) read
and replay: legacy type names, split files, zstd compression, a 2019 sqlite3 bag without
metadata.yaml, deliberately broken payloads, and rosbag2's own test bags without images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rosbags.highlevel import AnyReader

from flowclas_ros import bagio
from flowclas_ros.commands.main import main
from flowclas_ros.runtime.codecs import MessageError

# the checkout's sibling folder shared/ (this file is <checkout>/test/test_realbags.py)
REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"
BAGS = REALDATA / "bags"
RESOURCES = BAGS / "ros2_rosbag2"
MODEL = Path(__file__).resolve().parents[1] / "flowclas_ros" / "data" / "demo_model"

pytestmark = pytest.mark.skipif(not BAGS.is_dir(), reason=f"real bags not found in {REALDATA}")


def flowclas(capsys, *argv) -> tuple[int, str, list[str]]:
    """Run one command; ``(exit code, stdout, error lines)``, failing on a traceback."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    return code, out, [line for line in err.splitlines() if ": error:" in line]


# (bag, image topic, frames, processed, rejected by reason)
IMAGE_BAGS = [
    pytest.param("amber/soccer_goal_12_only", "/camera/image_raw", 2, 2, {}, id="legacy-type-zstd-message-compression"),
    pytest.param("amber/soccer_goal_as_committed/soccer_goal_12.mcap", "/camera/image_raw", 2, 2, {},
                 id="bare-file-of-a-compressed-split-bag"),
    pytest.param("rosbag2_js/sample.db3", "/image", 1, 1, {}, id="2019-sqlite3-no-metadata-bgr8"),
    pytest.param("rosbag2_js/sample.db3", "/image/compressed", 1, 1, {}, id="2019-sqlite3-jpeg-compressed-bgr8"),
    pytest.param("rosbag2_js", "/image", 1, 1, {}, id="folder-without-metadata"),
    pytest.param("rosbags_rs/test_bag_mcap", "/test/sensor_msgs/image", 2, 0, {"data": 2}, id="broken-raw-mcap"),
    pytest.param("rosbags_rs/test_bag_sqlite3", "/test/sensor_msgs/compressed_image", 2, 0, {"decode": 2},
                 id="truncated-jpeg-sqlite3"),
]


@pytest.mark.parametrize("bag, topic, frames, processed, rejected", IMAGE_BAGS)
def test_image_bags_replay(capsys, tmp_path, bag, topic, frames, processed, rejected):
    out = tmp_path / "out"
    code, stdout, errors = flowclas(capsys, "replay", "--model", MODEL, "--bag", BAGS / bag, "--image-topic", topic,
                                    "--output", out, "--no-overlay")
    report = json.loads((out / "replay.json").read_text())
    assert (report["frames"], report["processed"], report["rejected_by_reason"]) == (frames, processed, rejected)
    assert f"{frames} frames ({processed} processed" in stdout
    if processed:
        assert (code, errors) == (0, [])
    else:  # every frame broken: the replay ran, counted them, and says so in one line
        assert code == 1 and len(errors) == 1 and "no frame" in errors[0]
    # the annotated bag is readable by plain rosbags: types normalised, input copied
    with AnyReader([Path(report["output_bag"])]) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
        assert counts[topic] == frames and counts["/flowclas/anomaly_score"] == processed
        for connection, _, data in reader.messages([c for c in reader.connections if c.topic == topic]):
            if processed:
                reader.deserialize(data, connection.msgtype)


# (bag, needle of the one error line); no model is loaded for any of them
NOT_REPLAYABLE = [
    ("ros2_rosbag2/rosbag2_py_test_resources/mcap/talker", "no image topic"),
    ("ros2_rosbag2/rosbag2_py_test_resources/sqlite3/talker", "no image topic"),
    ("ros2_rosbag2/rosbag2_py_test_resources/mcap/wbag", "no image topic"),
    ("ros2_rosbag2/rosbag2_py_test_resources/sqlite3/wbag", "no image topic"),
    ("ros2_rosbag2/rosbag2_py_test_resources/mcap/reindex_test_bags/multiple_files", "no image topic"),
    ("ros2_rosbag2/rosbag2_py_test_resources/sqlite3/reindex_test_bags/multiple_files", "no image topic"),
    ("ros2_rosbag2/rosbag2_tests_resources/mcap/bag_with_topics_and_service_events", "no image topic"),
    ("ros2_rosbag2/rosbag2_tests_resources/sqlite3/bag_with_topics_and_service_events", "no image topic"),
    ("ros2_rosbag2/rosbag2_cpp_bags/only_services.mcap", "no image topic"),
    ("ros2_rosbag2/rosbag2_cpp_bags/topics_and_services.db3", "no image topic"),
    ("ros2_rosbag2/ros2bag_empty_bag", "no image topic"),
    ("ros2_rosbag2/rosbag2_tests_resources/empty_dir", "neither metadata.yaml"),
    ("ros2_rosbag2/rosbag2_tests_resources/mcap/wrong_rmw_test", "wrong_format"),
    ("ros2_rosbag2/rosbag2_tests_resources/sqlite3/wrong_rmw_test", "wrong_format"),
    ("amber/soccer_goal_as_committed", "12 of the 13 storage files"),
    ("rosbags_rs/test_bag_mcap", "image topics: /test/sensor_msgs/compressed_image, /test/sensor_msgs/image"),
]


@pytest.mark.parametrize("bag, needle", NOT_REPLAYABLE, ids=[b for b, _ in NOT_REPLAYABLE])
def test_bags_without_usable_images_give_one_line(capsys, tmp_path, bag, needle):
    code, _, errors = flowclas(capsys, "replay", "--model", MODEL, "--bag", BAGS / bag, "--image-topic",
                               "/camera/image_raw", "--output", tmp_path / "out")
    assert code == 1 and len(errors) == 1, errors
    assert needle in errors[0]
    assert not (tmp_path / "out").exists()


# (bag, messages, how many of them decode)
READABLE = [
    ("ros2_rosbag2/rosbag2_py_test_resources/mcap/wbag", 6074, 6074),  # 5 split files
    ("ros2_rosbag2/rosbag2_py_test_resources/sqlite3/wbag", 6074, 6074),
    ("ros2_rosbag2/rosbag2_py_test_resources/mcap/reindex_test_bags/multiple_files", 3177, 3177),  # no metadata
    ("ros2_rosbag2/rosbag2_py_test_resources/mcap/talker", 20, 20),  # rosbags' own folder reader finds 0
    ("ros2_rosbag2/rosbag2_tests_resources/mcap/bag_with_topics_and_service_events", 10, 2),  # rosbags refuses it
    ("ros2_rosbag2/rosbag2_tests_resources/mcap/cdr_test", 7, 7),
    ("amber/soccer_goal_12_only", 2, 2),
    ("rosbag2_js/sample.db3", 5, 5),
    ("rosbags_rs/test_bag_sqlite3", 188, 188),
]


@pytest.mark.parametrize("bag, messages, decoded", READABLE, ids=[b for b, _, _ in READABLE])
def test_every_message_is_read_and_decoded_with_its_own_type(bag, messages, decoded):
    count = ok = 0
    reasons = set()
    with bagio.open_bag(BAGS / bag) as reader:
        assert all("/msg/" in c.msgtype or "/srv/" in c.msgtype for c in reader.connections)
        for connection, _, data in reader.messages():
            count += 1
            try:
                reader.deserialize(data, connection.msgtype)
                ok += 1
            except MessageError as exc:
                reasons.add(exc.reason)
    assert (count, ok) == (messages, decoded)
    assert reasons <= {"type"}  # only the service events, whose stored definitions rosbags cannot parse
