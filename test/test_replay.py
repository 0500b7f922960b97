"""Camera bags, the realtime scheduler, and ``flowclas replay`` end to end on real rosbag2 files."""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from rosbags.highlevel import AnyReader, AnyReaderError
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import get_typestore

from flowclas_ros import bagio, replay
from flowclas_ros.commands import replay as replay_command
from flowclas_ros.errors import UserError
from flowclas_ros.model import save_bundle
from flowclas_ros.runtime.scheduling import KeepLatestScheduler
from flowclas_ros.synthetic.camera_bag import write_camera_bag

H, W = 48, 64
FRAMES = 6
OUTPUTS = ["anomaly_score", "anomaly_mask", "anomaly_overlay", "hazards"]


def make_frames(n: int = FRAMES, seed: int = 0):
    """Smooth gradient frames (JPEG-friendly) with a bright square as the anomaly, labels 0/1
    and a void border."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:H, 0:W]
    for i in range(n):
        base = np.stack([x * 2 + i, y * 2, np.full_like(x, 60)], axis=-1) + rng.integers(0, 4, (H, W, 3))
        rgb = base.astype(np.uint8)
        gt = np.zeros((H, W), np.uint8)
        y, x = 8 + i, 10 + 2 * i
        rgb[y : y + 12, x : x + 12] = 250
        gt[y : y + 12, x : x + 12] = 1
        gt[:, :2] = 255
        yield rgb, gt


@pytest.fixture
def bundle(tmp_path, small_net):
    return save_bundle(small_net, tmp_path / "model")


def replay_args(**options) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    replay_command.add_arguments(parser)
    argv = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is False:
            argv.append("--no-" + key.replace("_", "-"))
        else:
            argv += [flag, str(value)]
    return parser.parse_args(argv)


def read_all(path: Path) -> dict[str, list[tuple[int, object]]]:
    """topic -> [(log time, message)] read back with rosbags (None for an undecodable message)."""
    out = defaultdict(list)
    with AnyReader([path]) as reader:
        for connection, timestamp, data in reader.messages():
            try:
                msg = reader.deserialize(data, connection.msgtype)
            except AnyReaderError:
                msg = None
            out[connection.topic].append((timestamp, msg))
    return out


def bag_file(directory: Path, suffix: str) -> Path:
    (path,) = directory.glob(f"*{suffix}")
    return path


# --- the realtime scheduler on a simulated clock --------------------------------------------


def fake_run(durations):
    return lambda item: (item, durations[item])


def test_scheduler_drops_when_model_is_slower_than_the_camera():
    arrivals = [i / 10 for i in range(10)]  # 10 Hz camera, 4 Hz model
    scheduler = KeepLatestScheduler(fake_run([0.25] * 10))
    done = [p for i, t in enumerate(arrivals) for p in scheduler.offer(t, i)] + scheduler.flush()
    assert [p.item for p in done] == [0, 2, 4, 7, 9]  # worked out by hand
    assert scheduler.dropped == 5
    assert [p.start for p in done] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert [p.latency for p in done] == pytest.approx([0.25, 0.3, 0.35, 0.3, 0.35])


def test_scheduler_never_queues_random_durations():
    rng = random.Random(3)
    arrivals = sorted(rng.uniform(0, 10) for _ in range(200))
    durations = [rng.uniform(0.0, 0.3) for _ in arrivals]
    scheduler = KeepLatestScheduler(fake_run(durations))
    done = [p for i, t in enumerate(arrivals) for p in scheduler.offer(t, i)] + scheduler.flush()
    assert len(done) + scheduler.dropped == len(arrivals)
    assert 0 < scheduler.dropped < len(arrivals)
    for before, after in zip(done, done[1:]):
        assert after.start == max(after.arrival, before.finish)  # the worker is never idle with work waiting
        # the frame that ran was the newest one that had arrived when the worker freed up
        newer = [i for i, t in enumerate(arrivals) if after.item < i and t <= after.start]
        assert not newer
    assert all(p.finish - p.start == pytest.approx(durations[p.item]) for p in done)


def test_scheduler_fast_model_drops_nothing_and_max_rate_spaces_starts():
    scheduler = KeepLatestScheduler(fake_run([0.01] * 5))
    done = [p for i in range(5) for p in scheduler.offer(i * 0.1, i)] + scheduler.flush()
    assert scheduler.dropped == 0 and [p.latency for p in done] == pytest.approx([0.01] * 5)
    limited = KeepLatestScheduler(fake_run([0.01] * 5), min_interval=0.25)
    done = [p for i in range(5) for p in limited.offer(i * 0.1, i)] + limited.flush()
    assert [p.item for p in done] == [0, 2, 4] and limited.dropped == 2
    assert [p.start for p in done] == pytest.approx([0.0, 0.25, 0.5])
    with pytest.raises(ValueError, match="time order"):
        limited.offer(0.0, 9)


def test_stamp_matcher_pairs_in_either_order_and_stays_bounded():
    matcher = replay.StampMatcher(horizon=2)
    assert matcher.add_score(1, "s1") is None
    assert matcher.add_truth(1, "t1") == ("s1", "t1")
    assert matcher.add_truth(2, "t2") is None
    assert matcher.add_score(2, "s2") == ("s2", "t2")
    for stamp in range(10, 20):
        matcher.add_score(stamp, "x")
    assert len(matcher.scores) == 2 and matcher.add_truth(10, "t") is None


# --- bags ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("storage, compressed", [("sqlite3", False), ("mcap", True)])
def test_write_camera_bag_round_trip(tmp_path, storage, compressed):
    frames = list(make_frames(3))
    path = write_camera_bag(tmp_path / "cam", frames, storage=storage, compressed=compressed, rate_hz=5)
    from flowclas_ros.runtime.codecs import decode_image

    with bagio.open_bag(path) as reader:
        assert bagio.topic_types(reader) == {
            "/camera/image_raw": bagio.COMPRESSED_IMAGE if compressed else bagio.IMAGE,
            "/camera/anomaly_gt": bagio.IMAGE,
        }
        images = list(bagio.read_messages(reader, "/camera/image_raw"))
        masks = list(bagio.read_messages(reader, "/camera/anomaly_gt"))
    assert [t for t, _ in images] == [bagio.START_NS + i * 200_000_000 for i in range(3)]
    for (rgb, gt), (t, msg), (_, mask) in zip(frames, images, masks):
        assert bagio.stamp_to_ns(msg.header.stamp) == t and msg.header.frame_id == "camera"
        decoded = decode_image(msg)
        if compressed:
            assert np.abs(decoded.astype(int) - rgb).mean() < 4  # JPEG
        else:
            assert msg.encoding == "rgb8" and np.array_equal(decoded, rgb)
        assert mask.encoding == "mono8" and np.array_equal(mask.data.reshape(H, W), gt)


def test_open_bag_refuses_missing_and_non_bag_paths(tmp_path):
    with pytest.raises(UserError, match="not found"):
        with bagio.open_bag(tmp_path / "nope"):
            pass
    (tmp_path / "junk.mcap").write_bytes(b"not an mcap file")
    with pytest.raises(UserError, match="cannot read bag"):
        with bagio.open_bag(tmp_path / "junk.mcap"):
            pass


# --- replay end to end ------------------------------------------------------------------------


@pytest.mark.parametrize("in_storage, compressed, out_storage", [("sqlite3", False, "mcap"), ("mcap", True, "sqlite3")])
def test_replay_writes_annotated_bag_and_metrics(tmp_path, bundle, in_storage, compressed, out_storage):
    bag = write_camera_bag(tmp_path / "drive", make_frames(), storage=in_storage, compressed=compressed)
    out = tmp_path / "out"
    args = replay_args(
        model=bundle, bag=bag, image_topic="/camera/image_raw", output=out, gt_topic="/camera/anomaly_gt",
        storage=out_storage, bins=100, components=True,
    )
    assert replay_command.run(args) == 0

    result = out / "drive"
    topics = read_all(result)
    assert len(topics["/camera/image_raw"]) == FRAMES and len(topics["/camera/anomaly_gt"]) == FRAMES
    stamps = [bagio.stamp_to_ns(m.header.stamp) for _, m in topics["/camera/image_raw"]]
    for name in OUTPUTS:
        messages = topics[f"/flowclas/{name}"]
        assert len(messages) == FRAMES, name
        assert [bagio.stamp_to_ns(m.header.stamp) for _, m in messages] == stamps, name
        assert [t for t, _ in messages] == stamps  # logged at the input's time
        assert all(m.header.frame_id == "camera" for _, m in messages)
    for name, encoding, step in [("anomaly_score", "32FC1", W * 4), ("anomaly_mask", "mono8", W), ("anomaly_overlay", "bgr8", W * 3)]:
        for _, m in topics[f"/flowclas/{name}"]:
            assert (m.encoding, m.height, m.width, m.step, m.data.size) == (encoding, H, W, step, H * step)
    score = topics["/flowclas/anomaly_score"][0][1].data.view(np.float32)
    assert np.all((score >= 0) & (score <= 1))
    assert set(np.unique(topics["/flowclas/anomaly_mask"][0][1].data)) <= {0, 255}
    assert len(topics["/flowclas/label_info"]) == 1 and len(topics["/flowclas/diagnostics"]) >= 1

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_images"] == FRAMES and 0 <= metrics["ap"] <= 100 and "component" in metrics
    assert metrics["num_pixels"] == FRAMES * H * (W - 2)  # void border dropped
    report = json.loads((out / "replay.json").read_text())
    assert (report["frames"], report["processed"], report["dropped"], report["rejected"]) == (FRAMES, FRAMES, 0, 0)
    assert set(report["stage_ms"]) == {"decode", "model", "post", "encode"} and report["stage_ms"]["model"] > 0

    if out_storage == "mcap":  # an independent decoder reads the same bag
        from mcap.reader import make_reader
        from mcap_ros2.decoder import DecoderFactory

        with bag_file(result, ".mcap").open("rb") as f:
            decoded = [(c.topic, m) for _, c, _, m in make_reader(f, decoder_factories=[DecoderFactory()]).iter_decoded_messages()]
        counts = Counter(topic for topic, _ in decoded)
        assert all(counts[f"/flowclas/{name}"] == FRAMES for name in OUTPUTS)
        hazards = [m for topic, m in decoded if topic == "/flowclas/hazards"]
        assert all(d.id.startswith("area=") for h in hazards for d in h.detections)
        masks = [m for topic, m in decoded if topic == "/flowclas/anomaly_mask"]
        assert masks[0].encoding == "mono8" and len(masks[0].data) == H * W


def test_replay_ground_truth_folder_by_stamp_or_index(tmp_path, bundle):
    frames = list(make_frames())
    bag = write_camera_bag(tmp_path / "drive", ((rgb, None) for rgb, _ in frames), storage="mcap")
    masks = tmp_path / "masks"
    masks.mkdir()
    for i, (_, gt) in enumerate(frames[:4]):  # two named by header stamp, two by frame index
        name = f"{bagio.START_NS + i * 10**8}.png" if i < 2 else f"{i:06d}.png"
        PILImage.fromarray(gt).save(masks / name)
    args = replay_args(model=bundle, bag=bag, image_topic="/camera/image_raw", output=tmp_path / "out", gt_folder=masks, overlay=False)
    assert replay_command.run(args) == 0
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["num_images"] == 4
    topics = read_all(tmp_path / "out" / "drive")
    assert "/flowclas/anomaly_overlay" not in topics and len(topics["/flowclas/anomaly_mask"]) == FRAMES


def test_realtime_replay_drops_frames_of_a_fast_camera(tmp_path, bundle):
    bag = write_camera_bag(tmp_path / "fast", make_frames(12), rate_hz=2000.0, storage="mcap")
    out = tmp_path / "out"
    args = replay_args(model=bundle, bag=bag, image_topic="/camera/image_raw", output=out, realtime=True)
    assert replay_command.run(args) == 0
    report = json.loads((out / "replay.json").read_text())
    assert report["dropped"] > 0 and report["processed"] + report["dropped"] == 12
    assert report["drop_rate"] == pytest.approx(report["dropped"] / 12)
    assert report["latency_ms"]["p50"] > 0
    topics = read_all(out / "fast")
    for name in OUTPUTS:
        messages = topics[f"/flowclas/{name}"]
        assert len(messages) == report["processed"]
        # published after the frame arrived: log time = stamp + simulated latency
        assert all(t > bagio.stamp_to_ns(m.header.stamp) for t, m in messages)


def test_replay_rejects_malformed_frames_and_continues(tmp_path, bundle):
    store = get_typestore(bagio.TYPESTORE)
    types = store.types
    path = tmp_path / "hostile"
    rgb = np.zeros((H, W, 3), np.uint8)
    with Writer(path, version=9, storage_plugin=StoragePlugin.SQLITE3) as writer:
        conn = writer.add_connection("/cam", bagio.IMAGE, typestore=store)
        for i in range(5):
            header = types["std_msgs/msg/Header"](stamp=bagio.ns_to_stamp(store, (i + 1) * 10**8), frame_id="cam")
            step = W * 3 if i != 1 else W * 3 + 7  # frame 1: step inconsistent with the data
            msg = types[bagio.IMAGE](header, H, W, "rgb8" if i != 3 else "weird16", 0, step, rgb.reshape(-1))
            data = store.serialize_cdr(msg, bagio.IMAGE)
            if i == 2:
                data = data[:40]  # frame 2: truncated CDR
            writer.write(conn, (i + 1) * 10**8, data)
    out = tmp_path / "out"
    args = replay_args(model=bundle, bag=path, image_topic="/cam", output=out, storage="sqlite3")
    assert replay_command.run(args) == 0
    report = json.loads((out / "replay.json").read_text())
    assert (report["processed"], report["rejected"]) == (2, 3)
    topics = read_all(out / "hostile")
    assert len(topics["/cam"]) == 5  # the input is copied untouched, the truncated frame too
    assert [m is None for _, m in topics["/cam"]] == [False, False, True, False, False]
    kept = [bagio.stamp_to_ns(m.header.stamp) for _, m in topics["/flowclas/anomaly_score"]]
    assert kept == [1 * 10**8, 5 * 10**8]


def test_replay_refuses_bad_input(tmp_path, bundle):
    bag = write_camera_bag(tmp_path / "drive", make_frames(2))
    with pytest.raises(UserError, match="not an Image"):
        replay_command.run(replay_args(model=bundle, bag=bag, image_topic="/nope", output=tmp_path / "o1"))
    with pytest.raises(UserError, match="threshold"):
        replay_command.run(replay_args(model=bundle, bag=bag, image_topic="/camera/image_raw", output=tmp_path / "o2", threshold=2))
    replay_command.run(replay_args(model=bundle, bag=bag, image_topic="/camera/image_raw", output=tmp_path / "o3"))
    with pytest.raises(UserError, match="exists"):
        replay_command.run(replay_args(model=bundle, bag=bag, image_topic="/camera/image_raw", output=tmp_path / "o3"))


IMAGE_MSGDEF = """std_msgs/Header header
uint32 height
uint32 width
string encoding
uint8 is_bigendian
uint32 step
uint8[] data
================================================================================
MSG: std_msgs/Header
builtin_interfaces/Time stamp
string frame_id
================================================================================
MSG: builtin_interfaces/Time
int32 sec
uint32 nanosec
"""


def test_replay_of_an_mcap_file_written_by_another_tool(tmp_path, bundle):
    """A bare .mcap (no metadata.yaml) from the mcap-ros2 writer, bgr8 frames with padded rows."""
    from mcap_ros2.writer import Writer as McapWriter

    path = tmp_path / "other.mcap"
    step = W * 3 + 16
    with path.open("wb") as f:
        writer = McapWriter(f)
        schema = writer.register_msgdef("sensor_msgs/msg/Image", IMAGE_MSGDEF)
        for i, (rgb, _) in enumerate(make_frames(3)):
            padded = np.zeros((H, step), np.uint8)
            padded[:, : W * 3] = rgb[..., ::-1].reshape(H, W * 3)
            header = {"stamp": {"sec": 100, "nanosec": i * 1000}, "frame_id": "left"}
            msg = {"header": header, "height": H, "width": W, "encoding": "bgr8", "is_bigendian": 0, "step": step,
                   "data": padded.tobytes()}
            writer.write_message("/left/image", schema, msg, log_time=100 * 10**9 + i * 10**8)
        writer.finish()
    out = tmp_path / "out"
    assert replay_command.run(replay_args(model=bundle, bag=path, image_topic="/left/image", output=out)) == 0
    topics = read_all(out / "other")
    assert len(topics["/left/image"]) == 3
    for name in OUTPUTS:
        assert [m.header.frame_id for _, m in topics[f"/flowclas/{name}"]] == ["left"] * 3
        assert [m.header.stamp.nanosec for _, m in topics[f"/flowclas/{name}"]] == [0, 1000, 2000]


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_replay_of_legacy_type_names(tmp_path, bundle, storage):
    """Types named the legacy way (``sensor_msgs/Image``): with a stored definition (mcap, as the
    amber recorder wrote) and without any (a Dashing-era sqlite3 file, read without metadata.yaml)."""
    import sqlite3

    store = get_typestore(bagio.TYPESTORE)
    path = tmp_path / "legacy"
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        conn = writer.add_connection("/cam", "sensor_msgs/Image", msgdef=IMAGE_MSGDEF, rihs01=store.hash_rihs01(bagio.IMAGE))
        for i, (rgb, _) in enumerate(make_frames(2)):
            header = store.types["std_msgs/msg/Header"](stamp=bagio.ns_to_stamp(store, (i + 1) * 10**8), frame_id="cam")
            msg = store.types[bagio.IMAGE](header, H, W, "rgb8", 0, W * 3, rgb.reshape(-1))
            writer.write(conn, (i + 1) * 10**8, store.serialize_cdr(msg, bagio.IMAGE))
    (storage_file,) = [p for p in path.iterdir() if p.suffix in bagio.STORAGE_SUFFIXES]
    if storage == "sqlite3":  # no definitions, no type hashes, no metadata.yaml
        with sqlite3.connect(storage_file) as db:
            db.execute("DELETE FROM message_definitions")
            db.execute("UPDATE topics SET type_description_hash = ''")
        db.close()
    with bagio.open_bag(storage_file) as reader:
        assert bagio.topic_types(reader) == {"/cam": bagio.IMAGE}
    out = tmp_path / "out"
    assert replay_command.run(replay_args(model=bundle, bag=storage_file, image_topic="/cam", output=out)) == 0
    assert json.loads((out / "replay.json").read_text())["processed"] == 2
    topics = read_all(out / storage_file.stem)  # plain rosbags reads the copy: the type name is normalised
    assert [m.encoding for _, m in topics["/cam"]] == ["rgb8", "rgb8"]
