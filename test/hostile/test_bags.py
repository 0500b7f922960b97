"""Hostile bags for ``flowclas replay`` and the bag reader: damaged and foreign files, hostile
metadata.yaml, malformed messages and definitions, bad ground truth, unusable outputs.

A bag that cannot be read ends in one error line and exit 1 before any model loads; a bad
message or mask inside a readable bag is skipped, counted by reason in replay.json, and the
replay goes on. Every case checks that nothing outside the output folder changed.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from rosbags.rosbag2 import CompressionFormat, CompressionMode, StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from flowclas_ros import bagio
from flowclas_ros.errors import UserError
from flowclas_ros.runtime.codecs import MessageError
from flowclas_ros.synthetic.camera_bag import write_camera_bag

from .conftest import expect_refused

MODEL = Path(__file__).resolve().parents[2] / "flowclas_ros" / "data" / "demo_model"
H, W = 24, 32
TOPIC = "/cam"
START = 1_700_000_000 * 10**9


def frames(n: int = 2, gt: bool = False):
    for i in range(n):
        rgb = np.full((H, W, 3), 40 * i, np.uint8)
        rgb[4:10, 4:10] = 250
        yield rgb, (np.zeros((H, W), np.uint8) if gt else None)


def camera_bag(root: Path, storage: str = "mcap", name: str = "in") -> Path:
    """A readable two-frame camera bag (raw rgb8 on /camera/image_raw)."""
    return write_camera_bag(root / name, frames(), storage=storage)


def replay(flowclas, bag, *extra, topic: str = "/camera/image_raw"):
    return flowclas("replay", "--model", MODEL, "--bag", bag, "--image-topic", topic, "--output", "out",
                    "--no-overlay", *extra, outputs=["out"])


def report(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "out" / "replay.json").read_text())


# --- bag files that are not (readable) bags -----------------------------------------------------


def _truncated(tmp_path: Path, storage: str, keep: float) -> Path:
    bag = camera_bag(tmp_path, storage, "whole")
    (storage_file,) = [p for p in bag.iterdir() if p.suffix in bagio.STORAGE_SUFFIXES]
    data = storage_file.read_bytes()
    out = tmp_path / f"cut{storage_file.suffix}"
    out.write_bytes(data[: int(len(data) * keep)])
    return out


def _fifo(tmp_path: Path) -> Path:
    path = tmp_path / "pipe.mcap"
    os.mkfifo(path)
    return path


def _listing_a_folder(tmp_path: Path) -> Path:
    bag = camera_bag(tmp_path)
    (storage_file,) = [p for p in bag.iterdir() if p.suffix == ".mcap"]
    storage_file.unlink()
    storage_file.mkdir()  # the listed file is a folder
    return bag


BAG_FILES = {
    "missing": (lambda t: t / "nope", "not found"),
    "garbage-mcap": (lambda t: _write(t / "x.mcap", b"\x89MCAP0\r\n" + os.urandom(300)), "cannot read bag"),
    "garbage-db3": (lambda t: _write(t / "x.db3", b"SQLite format 3\0" + os.urandom(3000)), "cannot read bag"),
    "empty-mcap": (lambda t: _write(t / "x.mcap", b""), "cannot read bag"),
    "empty-db3": (lambda t: _write(t / "x.db3", b""), "cannot read bag"),
    "text-as-mcap": (lambda t: _write(t / "x.mcap", b"hello\n" * 50), "cannot read bag"),
    "truncated-mcap": (lambda t: _truncated(t, "mcap", 0.5), "cannot read bag"),
    "truncated-db3": (lambda t: _truncated(t, "sqlite3", 0.3), "cannot read bag"),
    "text-file": (lambda t: _write(t / "notes.txt", b"not a bag"), "not a rosbag2"),
    "ros1-bag": (lambda t: _write(t / "old.bag", b"#ROSBAG V2.0\n"), "ros 1 bag"),
    "fifo": (_fifo, "not a rosbag2"),
    "empty-folder": (lambda t: _mkdir(t / "empty"), "neither metadata.yaml"),
    "listed-file-is-a-folder": (_listing_a_folder, "storage files its metadata.yaml lists are missing"),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


@pytest.mark.parametrize("case", sorted(BAG_FILES))
def test_unreadable_bag_files(flowclas, tmp_path, case):
    make, needle = BAG_FILES[case]
    bag = make(tmp_path)
    expect_refused(replay(flowclas, bag), needle)
    assert not (tmp_path / "out").exists()


# --- hostile metadata.yaml --------------------------------------------------------------------


def _metadata(tmp_path: Path, text: str | bytes) -> Path:
    bag = camera_bag(tmp_path)
    meta = bag / "metadata.yaml"
    meta.write_bytes(text.encode() if isinstance(text, str) else text)
    return bag


def _edited(tmp_path: Path, old: str, new: str) -> Path:
    bag = camera_bag(tmp_path)
    meta = bag / "metadata.yaml"
    text = meta.read_text()
    assert old in text, text
    meta.write_text(text.replace(old, new, 1))
    return bag


def _compression(tmp_path: Path, mode: str, fmt: str) -> Path:
    bag = _edited(tmp_path, "compression_mode: ''", f"compression_mode: {mode}")
    meta = bag / "metadata.yaml"
    meta.write_text(meta.read_text().replace("compression_format: ''", f"compression_format: {fmt}"))
    return bag


def _metadata_folder(tmp_path: Path) -> Path:
    bag = camera_bag(tmp_path)
    (bag / "metadata.yaml").unlink()
    (bag / "metadata.yaml").mkdir()
    return bag


def _metadata_device(tmp_path: Path) -> Path:
    bag = camera_bag(tmp_path)
    (bag / "metadata.yaml").unlink()
    (bag / "metadata.yaml").symlink_to("/dev/zero")
    return bag


LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, n in zip("abcdefgh", "bcdefghi"))

METADATA = {
    "nested": (lambda t: _metadata(t, "[" * 2000 + "]" * 2000), "nested"),
    "billion-laughs": (lambda t: _metadata(t, "rosbag2_bagfile_information:\n  x: 1\n" + LAUGHS), "expands"),
    "list": (lambda t: _metadata(t, "- rosbag2_bagfile_information\n- 1\n"), "expected a mapping"),
    "scalar": (lambda t: _metadata(t, "42\n"), "expected a mapping"),
    "empty": (lambda t: _metadata(t, ""), "expected a mapping"),
    "not-utf8": (lambda t: _metadata(t, b"\xff\xfe\x00bag"), "not utf-8"),
    "python-tag": (lambda t: _metadata(t, "!!python/object/apply:os.system ['touch PWNED']\n"), "not valid yaml"),
    "no-bag-information": (lambda t: _metadata(t, "other: 1\n"), "rosbag2_bagfile_information"),
    "information-a-list": (lambda t: _metadata(t, "rosbag2_bagfile_information: [1, 2]\n"), "expected a mapping"),
    "files-a-string": (lambda t: _edited(t, "relative_file_paths:\n  - in.mcap", "relative_file_paths: in.mcap"),
                       "relative_file_paths"),
    "file-outside-the-folder": (lambda t: _edited(t, "  - in.mcap", "  - ../../../etc/passwd"), "are missing (passwd)"),
    "split-file-missing": (lambda t: _edited(t, "  - in.mcap", "  - in.mcap\n  - in_1.mcap"), "1 of the 2"),
    "compression-lz4": (lambda t: _compression(t, "message", "lz4"), "lz4"),
    "compression-mode-unknown": (lambda t: _compression(t, "everything", "zstd"), "everything"),
    "wrong-serialization": (lambda t: _edited(t, "serialization_format: cdr", "serialization_format: json"), "json"),
    "metadata-a-folder": (_metadata_folder, "not a regular file"),
    "metadata-a-device": (_metadata_device, "not a regular file"),
    "huge": (lambda t: _metadata(t, "a: " + "x" * (17 * 2**20) + "\n"), "more than"),
}


@pytest.mark.parametrize("case", sorted(METADATA))
def test_hostile_metadata(flowclas, tmp_path, case):
    make, needle = METADATA[case]
    bag = make(tmp_path)
    expect_refused(replay(flowclas, bag), needle)
    assert not (tmp_path / "PWNED").exists()


# --- malformed messages and definitions inside a readable bag --------------------------------

TIME_DEF = "=" * 80 + "\nMSG: builtin_interfaces/Time\nint32 sec\nuint32 nanosec\n"
HEADER_DEF = "=" * 80 + "\nMSG: std_msgs/Header\nbuiltin_interfaces/Time stamp\nstring frame_id\n" + TIME_DEF
IMAGE_FIELDS = {"header": "std_msgs/Header", "height": "uint32", "width": "uint32", "encoding": "string",
                "is_bigendian": "uint8", "step": "uint32", "data": "uint8[]"}


def image_definition(**changes: str | None) -> str:
    """sensor_msgs/Image's definition with fields retyped (``step="string"``) or left out (``step=None``)."""
    fields = {**IMAGE_FIELDS, **changes}
    return "".join(f"{kind} {name}\n" for name, kind in fields.items() if kind) + HEADER_DEF


def store_of(definition: str, msgtype: str):
    store = get_typestore(Stores.EMPTY)
    store.register(get_types_from_msg(definition, msgtype))
    return store


def header(store, i: int):
    types = store.types
    return types["std_msgs/msg/Header"](stamp=types["builtin_interfaces/msg/Time"](sec=100, nanosec=i), frame_id="cam")


def raw_frame(store, i: int, **changes):
    """An rgb8 H x W Image of ``store``'s definition, fields overridden by ``changes`` (None: left out)."""
    fields = dict(header=header(store, i), height=H, width=W, encoding="rgb8", is_bigendian=0, step=W * 3,
                  data=np.full(H * W * 3, 90, np.uint8))
    fields.update(changes)
    wanted = [name for name, _ in store.fielddefs[bagio.IMAGE][1]]
    return store.types[bagio.IMAGE](**{k: v for k, v in fields.items() if k in wanted})


def jpeg_frame(store, i: int):
    buffer = io.BytesIO()
    PILImage.fromarray(np.full((H, W, 3), 120, np.uint8)).save(buffer, format="JPEG")
    data = np.frombuffer(buffer.getvalue(), np.uint8)
    return store.types[bagio.COMPRESSED_IMAGE](header=header(store, i), format="bgr8; jpeg compressed bgr8", data=data)


def write_bag(path: Path, streams, storage: str = "mcap", compression: CompressionMode | None = None) -> Path:
    """A bag of ``(topic, msgtype, definition | None, digest | None, [message | bytes])`` streams (no
    definition: our typestore's; no digest: the definition's own hash), logged in order."""
    ours = bagio.typestore()
    plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}[storage]
    writer = Writer(path, version=9, storage_plugin=plugin)
    if compression is not None:
        writer.set_compression(compression, CompressionFormat.ZSTD)
    log_ns = START
    with writer:
        for topic, msgtype, definition, digest, messages in streams:
            store = ours if definition is None or digest else store_of(definition, msgtype)
            if definition is None:
                connection = writer.add_connection(topic, msgtype, typestore=store)
            else:
                connection = writer.add_connection(topic, msgtype, msgdef=definition,
                                                   rihs01=digest or store.hash_rihs01(msgtype))
            for message in messages:
                data = message if isinstance(message, bytes) else store.serialize_cdr(message, msgtype)
                writer.write(connection, log_ns, data)
                log_ns += 10**8
    return path


def good_jpeg():
    """One decodable CompressedImage on the same topic: the replay must go on to it."""
    return (TOPIC, bagio.COMPRESSED_IMAGE, None, None, [jpeg_frame(bagio.typestore(), 9)])


def hostile_image(definition: str | None, digest: str | None = None, cut: int | None = None, **changes):
    store = bagio.typestore() if definition is None else store_of(definition, bagio.IMAGE)
    data = store.serialize_cdr(raw_frame(store, 0, **changes), bagio.IMAGE)
    return (TOPIC, bagio.IMAGE, definition, digest, [bytes(data[:cut] if cut else data)])


# case -> (streams, reason the hostile frame is rejected for); sqlite3 storage (it keeps type hashes)
MESSAGES = {
    "string-step": (lambda: [hostile_image(image_definition(step="string"), step="1920"), good_jpeg()], "field"),
    "float-height-inf": (lambda: [hostile_image(image_definition(height="float64"), height=float("inf")), good_jpeg()],
                         "field"),
    "float-height": (lambda: [hostile_image(image_definition(height="float64"), height=24.0), good_jpeg()], "field"),
    "missing-step": (lambda: [hostile_image(image_definition(step=None)), good_jpeg()], "field"),
    "missing-data": (lambda: [hostile_image(image_definition(data=None)), good_jpeg()], "field"),
    "truncated-cdr": (lambda: [hostile_image(None, cut=40), good_jpeg()], "cdr"),
    "empty-cdr": (lambda: [hostile_image(None, cut=1), good_jpeg()], "cdr"),
    "data-too-short": (lambda: [hostile_image(None, data=np.zeros(30, np.uint8)), good_jpeg()], "data"),
    "step-smaller-than-row": (lambda: [hostile_image(None, step=5), good_jpeg()], "step"),
    "claims-8192x8192": (lambda: [hostile_image(None, height=8192, width=8192, step=8192 * 3), good_jpeg()], "size"),
    "claims-16384x16384": (lambda: [hostile_image(None, height=16384, width=16384, step=16384 * 3), good_jpeg()],
                           "size"),
    "claims-side-too-long": (lambda: [hostile_image(None, height=1, width=2**31, step=2**31), good_jpeg()], "size"),
    "unknown-encoding": (lambda: [hostile_image(None, encoding="hsv8"), good_jpeg()], "encoding"),
    "definition-hash-mismatch": (lambda: [hostile_image(image_definition(), digest="RIHS01_" + "0" * 64), good_jpeg()],
                                 "type"),
    "definition-unparsable": (lambda: [(TOPIC, bagio.IMAGE, "uint32 height\nthis is not a definition\n", "RIHS01_1",
                                        [b"\0\1\0\0" + bytes(16)]), good_jpeg()], "type"),
    "not-an-image-type": (lambda: [(TOPIC, "std_msgs/msg/String", None, None,
                                    [bagio.typestore().types["std_msgs/msg/String"](data="hi")]), good_jpeg()], "type"),
}


@pytest.mark.parametrize("case", sorted(MESSAGES))
def test_one_malformed_frame_is_skipped_and_counted(flowclas, tmp_path, case):
    streams, reason = MESSAGES[case]
    bag = write_bag(tmp_path / "in", streams(), storage="sqlite3")
    outcome = replay(flowclas, bag, topic=TOPIC)
    assert outcome.code == 0 and not outcome.errors and "Traceback" not in outcome.stderr, outcome.stderr
    warnings = [line for line in outcome.stderr.splitlines() if "warning: " in line]
    assert len(warnings) == 1 and f"({reason})" in warnings[0], outcome.stderr  # warned once, with the reason
    r = report(tmp_path)
    assert (r["frames"], r["processed"], r["rejected_by_reason"]) == (2, 1, {reason: 1})


def test_a_topic_with_connections_of_two_types_decodes_each_with_its_own(flowclas, tmp_path):
    ours = bagio.typestore()
    streams = [(TOPIC, bagio.IMAGE, None, None, [raw_frame(ours, 0), raw_frame(ours, 1)]),
               (TOPIC, bagio.COMPRESSED_IMAGE, None, None, [jpeg_frame(ours, 2)])]
    bag = write_bag(tmp_path / "in", streams, storage="sqlite3")
    outcome = replay(flowclas, bag, topic=TOPIC)
    assert outcome.code == 0 and not outcome.errors, outcome.stderr
    assert (report(tmp_path)["processed"], report(tmp_path)["rejected"]) == (3, 0)


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_hostile_definitions_on_other_topics_run_nothing_and_spoil_nothing(flowclas, tmp_path, storage):
    payload = "__import__('pathlib').Path('PWNED').touch()"
    cdr = [b"\0\1\0\0" + bytes(8)]
    evil = [("/evil/name", f"evil/msg/X\n{payload}\n#", "int32 a\n", "RIHS01_1", cdr),
            ("/evil/constant", "evil/msg/Y", f'string C="{payload}"\nint32 a\n', None, cdr),
            ("/evil/field", "evil/msg/Z", f"int32 {payload}\n", "RIHS01_1", cdr),
            ("/evil/incomplete", "evil/msg/W", "evil/Missing m\nint32 x\n", "RIHS01_1", cdr),
            ("/evil/recursive", "evil/msg/V", "evil/V[] children\n", "RIHS01_1", cdr),
            good_jpeg()]
    outcome = replay(flowclas, write_bag(tmp_path / "in", evil, storage=storage), topic=TOPIC)
    assert outcome.code == 0 and not outcome.errors, outcome.stderr
    assert report(tmp_path)["processed"] == 1 and not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("mode", [CompressionMode.MESSAGE, CompressionMode.FILE], ids=["message", "file"])
def test_zstd_compressed_bags_replay(flowclas, tmp_path, mode):
    ours = bagio.typestore()
    bag = write_bag(tmp_path / "in", [(TOPIC, bagio.IMAGE, None, None, [raw_frame(ours, 0), raw_frame(ours, 1)])],
                    compression=mode)
    outcome = replay(flowclas, bag, topic=TOPIC)
    assert outcome.code == 0 and not outcome.errors, outcome.stderr
    assert report(tmp_path)["processed"] == 2


def test_every_frame_rejected_ends_in_one_line(flowclas, tmp_path):
    bag = write_bag(tmp_path / "in", [hostile_image(None, cut=40)])
    expect_refused(replay(flowclas, bag, topic=TOPIC), "no frame of /cam", "1 cdr")
    assert report(tmp_path)["rejected_by_reason"] == {"cdr": 1}


def test_topic_without_messages_ends_in_one_line(flowclas, tmp_path):
    bag = write_bag(tmp_path / "in", [(TOPIC, bagio.IMAGE, None, None, []), good_jpeg()[:-1] + ([],)])
    expect_refused(replay(flowclas, bag, topic=TOPIC), "no frame of /cam", "no messages")


# --- ground truth -------------------------------------------------------------------------------


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def claimed_png(width: int, height: int) -> bytes:
    """A PNG header claiming a size, with no pixel data behind it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + chunk(b"IEND", b"")


GOOD_LABELS = np.zeros((H, W), np.uint8)
GOOD_LABELS[4:10, 4:10] = 1
LABEL_77 = GOOD_LABELS.copy()
LABEL_77[3, 3] = 77
GT_FILES = {
    "label-77": (png(LABEL_77), "labels"),
    "not-a-png": (b"GIF89a hostile", "decode"),
    "rgb-png": (png(np.zeros((H, W, 3), np.uint8)), "encoding"),
    "claims-8000x8000": (claimed_png(8000, 8000), "size"),
    "other-shape": (png(np.zeros((H + 1, W), np.uint8)), "shape"),
}


@pytest.mark.parametrize("case", sorted(GT_FILES))
def test_bad_ground_truth_file_is_skipped_and_counted(flowclas, tmp_path, case):
    data, reason = GT_FILES[case]
    bag = camera_bag(tmp_path)
    masks = tmp_path / "masks"
    masks.mkdir()
    (masks / "000000.png").write_bytes(data)
    (masks / "000001.png").write_bytes(png(GOOD_LABELS))
    outcome = replay(flowclas, bag, "--gt-folder", masks)
    assert outcome.code == 0 and not outcome.errors, outcome.stderr
    r = report(tmp_path)
    assert (r["processed"], r["ground_truth_skipped_by_reason"]) == (2, {reason: 1})
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["num_images"] == 1


def test_ground_truth_topic_label_77_is_skipped_and_counted(flowclas, tmp_path):
    truths = [GOOD_LABELS, LABEL_77]
    bag = write_camera_bag(tmp_path / "in", ((rgb, gt) for (rgb, _), gt in zip(frames(), truths)))
    outcome = replay(flowclas, bag, "--gt-topic", "/camera/anomaly_gt")
    assert outcome.code == 0 and not outcome.errors, outcome.stderr
    assert "ground truth skipped (labels)" in outcome.stderr
    r = report(tmp_path)
    assert (r["processed"], r["ground_truth_skipped_by_reason"]) == (2, {"labels": 1})
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert (metrics["num_images"], metrics["frames_gt_bad_labels"]) == (1, 1)


# --- outputs and flags --------------------------------------------------------------------------


def test_output_that_is_a_file(flowclas, tmp_path):
    bag = camera_bag(tmp_path)
    (tmp_path / "out").write_text("mine")
    expect_refused(replay(flowclas, bag), "not a folder")
    assert (tmp_path / "out").read_text() == "mine"


def test_output_under_a_file(flowclas, tmp_path):
    bag = camera_bag(tmp_path)
    (tmp_path / "file").write_text("mine")
    outcome = flowclas("replay", "--model", MODEL, "--bag", bag, "--image-topic", "/camera/image_raw",
                       "--output", "file/out")
    expect_refused(outcome, "file is a file, not a folder")


def test_output_bag_exists(flowclas, tmp_path):
    bag = camera_bag(tmp_path)
    (tmp_path / "out" / "in").mkdir(parents=True)
    (tmp_path / "out" / "in" / "keep.txt").write_text("mine")
    expect_refused(flowclas("replay", "--model", MODEL, "--bag", bag, "--image-topic", "/camera/image_raw",
                            "--output", "out"), "exists already")


def test_output_read_only(flowclas, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    bag = camera_bag(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out").chmod(0o555)
    try:
        expect_refused(flowclas("replay", "--model", MODEL, "--bag", bag, "--image-topic", "/camera/image_raw",
                                "--output", "out"), "permission denied")
    finally:
        (tmp_path / "out").chmod(0o755)


@pytest.mark.parametrize("flags, needle", [(["--max-input-pixels", "0"], "--max-input-pixels"),
                                           (["--max-input-pixels", str(2**40)], "--max-input-pixels"),
                                           (["--gt-topic", "/nope"], "--gt-topic /nope"),
                                           (["--image-topic", "/nope"], "image topics: /camera/image_raw")])
def test_bad_flags(flowclas, tmp_path, flags, needle):
    expect_refused(replay(flowclas, camera_bag(tmp_path), *flags), needle)


def test_pixel_budget_flag_rejects_every_larger_frame(flowclas, tmp_path):
    expect_refused(replay(flowclas, camera_bag(tmp_path), "--max-input-pixels", "100"), "2 size")


# --- the bag reader, through the Python API -----------------------------------------------------


def test_a_bag_damaged_part_way_replays_up_to_the_damage(flowclas, tmp_path, monkeypatch):
    bag = camera_bag(tmp_path)
    intact = bagio.Reader.messages

    def failing(self, *args, **kwargs):
        for number, message in enumerate(intact(self, *args, **kwargs)):
            if number == 1:
                raise ValueError("database disk image is malformed")
            yield message

    monkeypatch.setattr(bagio.Reader, "messages", failing)
    outcome = replay(flowclas, bag)
    assert outcome.code == 0 and not outcome.errors and "damaged after 1 messages" in outcome.stderr
    r = report(tmp_path)
    assert r["processed"] == 1 and "malformed" in r["damaged"]


def test_an_oversized_compressed_message_is_refused_not_inflated(tmp_path, monkeypatch):
    ours = bagio.typestore()
    bag = write_bag(tmp_path / "in", [(TOPIC, bagio.IMAGE, None, None, [raw_frame(ours, 0)])],
                    compression=CompressionMode.MESSAGE)
    monkeypatch.setattr(bagio, "MAX_MESSAGE_BYTES", 1000)  # the frame inflates to ~2.3 kB
    with bagio.open_bag(bag) as reader:
        ((connection, _, data),) = list(reader.messages())
        with pytest.raises(MessageError, match="does not inflate within 1000 bytes"):
            reader.deserialize(data, connection.msgtype)


def test_reader_refuses_what_it_cannot_read(tmp_path):
    (tmp_path / "x.mcap").write_bytes(b"junk")
    with pytest.raises(UserError, match="cannot read bag"):
        with bagio.open_bag(tmp_path / "x.mcap"):
            pass
    with bagio.open_bag(camera_bag(tmp_path)) as reader:
        with pytest.raises(MessageError) as info:
            reader.deserialize(b"\0\1\0\0garbage", bagio.IMAGE)
        assert info.value.reason == "cdr"
        with pytest.raises(MessageError, match="no definition") as info:
            reader.deserialize(b"\0\1\0\0", "nobody/msg/Knows")
        assert info.value.reason == "type"
    assert bagio.normalize_type("sensor_msgs/Image") == bagio.IMAGE
    assert bagio.normalize_type("test_msgs/srv/BasicTypes_Event") == "test_msgs/srv/BasicTypes_Event"


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_damaged_file_compressed_bag(flowclas, tmp_path, damage):
    ours = bagio.typestore()
    bag = write_bag(tmp_path / "in", [(TOPIC, bagio.IMAGE, None, None, [raw_frame(ours, 0)])],
                    compression=CompressionMode.FILE)
    (compressed,) = bag.glob("*.zstd")
    data = compressed.read_bytes()
    compressed.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x28\xb5\x2f\xfd" + bytes(64))
    expect_refused(replay(flowclas, bag, topic=TOPIC), "does not decompress")


def test_training_on_a_bag_leaves_out_an_unreadable_message(tmp_path, caplog):
    from flowclas_ros.training.datasets import RosbagDataset

    truncated = hostile_image(None, cut=40)[4][0]
    stream = (TOPIC, bagio.IMAGE, None, None, [truncated, raw_frame(bagio.typestore(), 1)])
    bag = write_bag(tmp_path / "in", [stream], storage="sqlite3")
    with caplog.at_level("WARNING", logger="flowclas_ros"):
        dataset = RosbagDataset(bag, "train", image_topic=TOPIC, mask_topic=None)
    assert len(dataset) == 1
    assert any("unreadable message" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("command", ["replay", "eval"])
@pytest.mark.parametrize("bins", ["1", "3000000000", "nan"])
def test_bins_outside_their_range_are_a_usage_error(command, bins, flowclas):
    place = ["--bag", "b"] if command == "replay" else ["--dataset", "folder", "--root", "d"]
    outcome = flowclas(command, "--model", "m", *place, "--output", "o", "--bins", bins)
    expect_refused(outcome, code=2)
    assert "--bins" in outcome.stderr and "[2, 1000000]" in outcome.stderr


def _flip_in_first_chunk(path: Path) -> None:
    """Flip one byte of the first record's length inside the first MCAP chunk (opcode 0x06)."""
    import struct

    data = bytearray(path.read_bytes())
    at = 8  # after the magic
    while at < len(data):
        opcode, length = data[at], struct.unpack_from("<Q", data, at + 1)[0]
        if opcode == 0x06:
            body = at + 9
            compression_len = struct.unpack_from("<I", data, body + 28)[0]
            records = body + 32 + compression_len + 8
            data[records + 1] ^= 0xFF  # the first record's length: what follows is misparsed
            path.write_bytes(bytes(data))
            return
        at += 9 + length
    raise AssertionError("no chunk")


def test_a_damaged_chunk_is_reported_as_damage_not_as_an_empty_topic(flowclas, tmp_path):
    bag = camera_bag(tmp_path)
    _flip_in_first_chunk(next(bag.glob("*.mcap")))
    outcome = replay(flowclas, bag)
    expect_refused(outcome, "damaged")
    assert "has no messages" not in outcome.stderr
