"""Fuzz targets (hypothesis): the message image codecs and the bag reader.

Whatever the fields of an Image or CompressedImage message, decoding gives a frame or the
codecs' MessageError; whatever bytes a bag file holds, reading it gives messages, frames or a
FlowclasError (UserError for the bag, MessageError for one message), never another exception.
"""

from __future__ import annotations

import array
import io
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from flowclas_ros import bagio
from flowclas_ros.errors import FlowclasError
from flowclas_ros.runtime.codecs import ENCODINGS, MessageError, decode_image, decode_mask
from flowclas_ros.synthetic.camera_bag import write_camera_bag

FUZZ = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

ANYTHING = st.one_of(st.none(), st.booleans(), st.integers(-2**64, 2**64), st.floats(), st.text(max_size=6),
                     st.binary(max_size=6), st.lists(st.integers(-300, 300), max_size=4))
ENCODING = st.one_of(st.sampled_from(ENCODINGS), st.sampled_from(["hsv8", "", "RGB8", "32FC1", "16UC1"]), st.text(max_size=8))


@st.composite
def raw_images(draw) -> SimpleNamespace:
    """Image-like objects: mostly plausible (small, lengths nearly right), some fields wild or missing."""
    h, w = draw(st.integers(0, 9)), draw(st.integers(0, 9))
    pixel = draw(st.sampled_from([1, 2, 3, 4, 6, 8]))
    step = w * pixel + draw(st.integers(-2, 4))
    size = max(0, step * h + draw(st.sampled_from([0, 0, 0, -1, 1, -step])))
    payload = draw(st.binary(min_size=size, max_size=size))
    container = draw(st.sampled_from(["bytes", "numpy", "array", "list", "memoryview", "float32"]))
    data = {
        "bytes": payload, "numpy": np.frombuffer(payload, np.uint8), "array": array.array("B", payload),
        "list": list(payload), "memoryview": memoryview(payload),
        "float32": np.frombuffer(payload[: len(payload) // 4 * 4], np.float32),
    }[container]
    fields = dict(header=None, height=h, width=w, encoding=draw(ENCODING), is_bigendian=draw(st.integers(0, 1)),
                  step=step, data=data)
    for name in draw(st.sets(st.sampled_from(sorted(fields)), max_size=2)):
        if draw(st.booleans()):
            del fields[name]
        else:
            fields[name] = draw(ANYTHING)
    return SimpleNamespace(**fields)


def _encoded(fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    rgb = np.random.default_rng(0).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert(options.pop("mode", "RGB")).save(buffer, format=fmt, **options)
    return buffer.getvalue()


SEEDS = [_encoded("PNG"), _encoded("JPEG"), _encoded("PNG", mode="L"), _encoded("PNG", mode="P"),
         _encoded("PNG", mode="I;16"), _encoded("JPEG", mode="CMYK"), _encoded("PNG", mode="RGBA")]


@st.composite
def mutated(draw, seeds: list[bytes]) -> bytes:
    """One of ``seeds`` with a few bytes replaced, a slice cut out or the tail cut off."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 6))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        start = draw(st.integers(0, len(data)))
        del data[start : start + draw(st.integers(0, 64))]
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


FORMATS = st.one_of(st.sampled_from(["jpeg", "png", "bgr8; jpeg compressed bgr8", "rgb8; png compressed bgr8",
                                     "16UC1; compressedDepth png", "tiff", ""]), st.text(max_size=12), ANYTHING)


def _frame_or_message_error(decode, msg, ndim: int) -> None:
    try:
        out = decode(msg)
    except MessageError as exc:
        assert exc.reason and "\n" not in str(exc)
        return
    assert isinstance(out, np.ndarray) and out.ndim == ndim and out.size > 0
    if ndim == 3:
        assert out.dtype == np.uint8 and out.shape[2] == 3


@FUZZ
@given(raw_images(), st.one_of(st.none(), st.integers(1, 100)))
def test_raw_image_fields_give_a_frame_or_a_message_error(msg, max_pixels):
    _frame_or_message_error(lambda m: decode_image(m, max_pixels=max_pixels), msg, 3)
    _frame_or_message_error(decode_mask, msg, 2)


@FUZZ
@given(FORMATS, st.one_of(mutated(SEEDS), st.binary(max_size=64), ANYTHING), st.one_of(st.none(), st.integers(1, 64)))
def test_compressed_image_bytes_give_a_frame_or_a_message_error(fmt, data, max_pixels):
    msg = SimpleNamespace(header=None, format=fmt, data=data)
    _frame_or_message_error(lambda m: decode_image(m, max_pixels=max_pixels), msg, 3)
    _frame_or_message_error(decode_mask, msg, 2)


@pytest.fixture(scope="module")
def small_bags(tmp_path_factory) -> dict[str, bytes]:
    """The storage file of a tiny camera bag (two raw frames with masks), per storage."""
    root = tmp_path_factory.mktemp("fuzz")
    frames = [(np.full((6, 8, 3), 60 * i, np.uint8), np.zeros((6, 8), np.uint8)) for i in range(2)]
    found = {}
    for storage in ("mcap", "sqlite3"):
        bag = write_camera_bag(root / storage, frames, storage=storage)
        (found[storage],) = [p.read_bytes() for p in bag.iterdir() if p.suffix in bagio.STORAGE_SUFFIXES]
    return found


def _read_everything(path: Path) -> int:
    """Frames decoded from every message of the bag at ``path``."""
    decoded = 0
    with bagio.open_bag(path) as reader:
        for connection, _, data in reader.messages():
            try:
                decode_image(reader.deserialize(data, connection.msgtype))
                decoded += 1
            except MessageError:
                pass
    return decoded


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_mutated_bag_files_give_frames_or_one_error_type(small_bags, storage):
    original = small_bags[storage]
    suffix = ".mcap" if storage == "mcap" else ".db3"
    assert _read_tempfile(original, suffix) == 4  # the intact bag: two frames and two masks

    @settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(mutated([original]))
    def fuzz(data: bytes) -> None:
        try:
            _read_tempfile(data, suffix)
        except FlowclasError as exc:
            assert "\n" not in str(exc)

    fuzz()


def _read_tempfile(data: bytes, suffix: str) -> int:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder, "bag" + suffix)
        path.write_bytes(data)
        return _read_everything(path)
