"""Image codecs: every encoding equals an OpenCV reference; bad messages are rejected clearly."""

from __future__ import annotations

import array
import io
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from PIL import Image

from flowclas_ros.runtime.codecs import (
    MessageError,
    decode_image,
    decode_mask,
    encode_image,
)

H, W = 23, 34  # odd height, even width (4:2:2 needs it), small enough to be instant
RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)


def image_msg(pixels: np.ndarray, encoding: str, pad: int = 0, bigendian: bool = False, container=bytes):
    """An Image-like object holding ``pixels`` (H x W [x C]) with ``pad`` junk bytes after each row."""
    if pixels.dtype == np.uint16:
        pixels = pixels.astype(">u2" if bigendian else "<u2")
    rows = pixels.reshape(pixels.shape[0], -1).view(np.uint8)
    junk = np.full((rows.shape[0], pad), 0xAB, np.uint8)
    data = np.ascontiguousarray(np.concatenate([rows, junk], axis=1)).reshape(-1)
    if container is bytes:
        data = data.tobytes()
    elif container is array.array:
        data = array.array("B", data.tobytes())
    return SimpleNamespace(
        header=None, height=pixels.shape[0], width=pixels.shape[1], encoding=encoding,
        is_bigendian=int(bigendian), step=rows.shape[1] + pad, data=data,
    )


def widen(img8: np.ndarray) -> np.ndarray:
    """A 16-bit image whose high byte is ``img8`` and whose low byte is noise."""
    return img8.astype(np.uint16) * 256 + RNG.integers(0, 256, img8.shape, dtype=np.uint16)


BGR = cv2.cvtColor(RGB, cv2.COLOR_RGB2BGR)
GREY = RGB[..., 0]
CASES = {
    "rgb8": (RGB, RGB),
    "bgr8": (BGR, cv2.cvtColor(BGR, cv2.COLOR_BGR2RGB)),
    "8UC3": (BGR, cv2.cvtColor(BGR, cv2.COLOR_BGR2RGB)),
    "rgba8": (cv2.cvtColor(RGB, cv2.COLOR_RGB2RGBA), RGB),
    "bgra8": (cv2.cvtColor(RGB, cv2.COLOR_RGB2BGRA), cv2.cvtColor(cv2.cvtColor(RGB, cv2.COLOR_RGB2BGRA), cv2.COLOR_BGRA2RGB)),
    "mono8": (GREY, cv2.cvtColor(GREY, cv2.COLOR_GRAY2RGB)),
    "8UC1": (GREY, cv2.cvtColor(GREY, cv2.COLOR_GRAY2RGB)),
    "mono16": (widen(GREY), cv2.cvtColor(GREY, cv2.COLOR_GRAY2RGB)),
    "rgb16": (widen(RGB), RGB),
    "bgr16": (widen(BGR), cv2.cvtColor(BGR, cv2.COLOR_BGR2RGB)),
}


@pytest.mark.parametrize("bigendian", [False, True])
@pytest.mark.parametrize("pad", [0, 5])
@pytest.mark.parametrize("encoding", sorted(CASES))
def test_plain_encodings_equal_opencv(encoding, pad, bigendian):
    pixels, expected = CASES[encoding]
    for container in (bytes, array.array, np.ndarray):
        out = decode_image(image_msg(pixels, encoding, pad, bigendian, container))
        assert out.shape == (H, W, 3) and out.dtype == np.uint8
        np.testing.assert_array_equal(out, expected)


def test_eight_bit_layouts_are_views_of_the_buffer():
    msg = image_msg(BGR, "bgr8", pad=3, container=np.ndarray)
    out = decode_image(msg)
    assert np.shares_memory(out, msg.data)
    mono = image_msg(GREY, "mono8", container=np.ndarray)
    assert np.shares_memory(decode_image(mono), mono.data)


@pytest.mark.parametrize("encoding,code", [("yuv422", cv2.COLOR_YUV2RGB_UYVY), ("uyvy", cv2.COLOR_YUV2RGB_UYVY),
                                           ("yuv422_yuy2", cv2.COLOR_YUV2RGB_YUY2), ("yuyv", cv2.COLOR_YUV2RGB_YUY2)])
@pytest.mark.parametrize("pad", [0, 6])
def test_yuv422_equals_opencv_bt601(encoding, code, pad):
    packed = RNG.integers(0, 256, (H, W, 2), dtype=np.uint8)
    out = decode_image(image_msg(packed, encoding, pad))
    expected = cv2.cvtColor(packed, code)
    # OpenCV works in 20-bit fixed point, we in float32: at most one level apart
    assert np.abs(out.astype(int) - expected).max() <= 1
    assert (out == expected).mean() > 0.95


@pytest.mark.parametrize("pattern,code", [("rggb", cv2.COLOR_BayerBG2RGB), ("bggr", cv2.COLOR_BayerRG2RGB),
                                          ("gbrg", cv2.COLOR_BayerGR2RGB), ("grbg", cv2.COLOR_BayerGB2RGB)])
@pytest.mark.parametrize("bits", [8, 16])
def test_bayer_equals_opencv_bilinear(pattern, code, bits):
    mosaic = RNG.integers(0, 256, (H + 1, W), dtype=np.uint8)
    pixels = widen(mosaic) if bits == 16 else mosaic
    out = decode_image(image_msg(pixels, f"bayer_{pattern}{bits}", pad=3, bigendian=bits == 16))
    expected = cv2.cvtColor(mosaic, code)
    # OpenCV fills the outermost ring by copying its neighbours; the interior is the same interpolation
    np.testing.assert_array_equal(out[1:-1, 1:-1], expected[1:-1, 1:-1])
    # the sampled channel is kept exactly everywhere, borders included
    ry, rx = {"rggb": (0, 0), "bggr": (1, 1), "gbrg": (1, 0), "grbg": (0, 1)}[pattern]
    np.testing.assert_array_equal(out[ry::2, rx::2, 0], mosaic[ry::2, rx::2])


@pytest.mark.parametrize("fmt,pil_format", [("jpeg", "JPEG"), ("rgb8; jpeg compressed bgr8", "JPEG"), ("png", "PNG")])
def test_compressed_images(fmt, pil_format):
    buffer = io.BytesIO()
    Image.fromarray(RGB).save(buffer, format=pil_format, quality=95)
    out = decode_image(SimpleNamespace(header=None, format=fmt, data=np.frombuffer(buffer.getvalue(), np.uint8)))
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    if pil_format == "PNG":
        np.testing.assert_array_equal(out, RGB)
    else:
        np.testing.assert_array_equal(out, cv2.cvtColor(cv2.imdecode(np.frombuffer(buffer.getvalue(), np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB))


def test_masks_keep_label_values():
    labels = RNG.choice(np.array([0, 1, 255], np.uint8), (H, W))
    np.testing.assert_array_equal(decode_mask(image_msg(labels, "mono8", pad=2)), labels)
    wide = labels.astype(np.uint16) * 3
    out = decode_mask(image_msg(wide, "mono16", pad=1, bigendian=True))
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, wide)
    buffer = io.BytesIO()
    Image.fromarray(labels).save(buffer, format="PNG")
    np.testing.assert_array_equal(decode_mask(SimpleNamespace(format="png", data=buffer.getvalue())), labels)
    with pytest.raises(MessageError, match="mask encoding"):
        decode_mask(image_msg(RGB, "rgb8"))


def bad_messages():
    good = image_msg(RGB, "rgb8")
    cases = {
        "unknown encoding": (dict(encoding="hsv8"), "unsupported image encoding"),
        "zero height": (dict(height=0, data=b""), "outside"),
        "absurd width": (dict(width=100_000, step=300_000), "outside"),
        "step too small": (dict(step=W * 3 - 1), "step"),
        "data too short": (dict(data=good.data[:-1]), "needs"),
        "data too long": (dict(data=good.data + b"\0"), "needs"),
        "odd yuv width": (dict(encoding="yuv422", width=W - 1, step=(W - 1) * 2, data=bytes((W - 1) * 2 * H)), "even width"),
        "non-integer size": (dict(height="tall"), "integers"),
        "float data": (dict(data=np.zeros(H * W * 3, np.float32)), "uint8"),
    }
    for name, (changes, match) in cases.items():
        yield pytest.param(SimpleNamespace(**{**vars(good), **changes}), match, id=name)
    yield pytest.param(SimpleNamespace(format="jpeg", data=b"\xff\xd8 not really a jpeg"), "failed to decode", id="corrupt jpeg")
    yield pytest.param(SimpleNamespace(format="tiff", data=b"II*\0"), "not one of", id="tiff")
    yield pytest.param(SimpleNamespace(format="16UC1; compressedDepth png", data=b"\0" * 12), "not one of", id="compressed depth")


@pytest.mark.parametrize("msg,match", list(bad_messages()))
def test_bad_messages_raise_one_clear_error(msg, match):
    with pytest.raises(MessageError, match=match) as info:
        decode_image(msg)
    text = str(info.value)
    assert "\n" not in text and len(text) < 300 and info.value.reason


@pytest.mark.parametrize("size,match", [((16385, 1), "outside"), ((8200, 8200), "budget")])
def test_huge_compressed_image_rejected_before_decoding(size, match):
    buffer = io.BytesIO()
    Image.new("1", size).save(buffer, format="PNG")
    with pytest.raises(MessageError, match=match):
        decode_image(SimpleNamespace(format="png", data=buffer.getvalue()))


def _png_header(width: int, height: int) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [10_000, 16_000], ids=["pillow-warns", "pillow-refuses"])
def test_pillow_bomb_range_is_our_size_rejection_without_stray_warnings(side):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(MessageError, match="exceeds max_input_pixels 1000000") as info:
            decode_image(SimpleNamespace(format="png", data=_png_header(side, side)), max_pixels=1_000_000)
    assert info.value.reason == "size" and not caught, [str(w.message) for w in caught]


def test_strided_data_array_is_accepted():
    msg = image_msg(RGB, "rgb8", container=np.ndarray)
    doubled = np.repeat(msg.data, 2)
    msg.data = doubled[::2]  # a non-contiguous view, as a deserialiser might hand out
    np.testing.assert_array_equal(decode_image(msg), RGB)


def test_encoders_round_trip():
    score = RNG.random((H, W), dtype=np.float32)
    enc = encode_image(score, "32FC1")
    assert (enc.encoding, enc.height, enc.width, enc.step) == ("32FC1", H, W, W * 4)
    np.testing.assert_array_equal(enc.data.view(np.float32).reshape(H, W), score)
    mask = score > 0.5
    enc = encode_image(mask.view(np.uint8) * np.uint8(255), "mono8")
    assert (enc.encoding, enc.step) == ("mono8", W)
    np.testing.assert_array_equal(decode_mask(SimpleNamespace(**vars(enc))), mask * 255)
    enc = encode_image(RGB[..., ::-1], "bgr8")
    assert (enc.encoding, enc.step) == ("bgr8", W * 3)
    np.testing.assert_array_equal(decode_image(SimpleNamespace(**vars(enc))), RGB)


def test_max_pixels_checked_before_decoding_raw_and_compressed():
    import struct
    import zlib
    from types import SimpleNamespace

    from flowclas_ros.runtime.codecs import MessageError, decode_image

    raw = SimpleNamespace(height=100, width=100, encoding="mono8", is_bigendian=False, step=100, data=b"")  # no data
    with pytest.raises(MessageError, match="max_input_pixels") as info:
        decode_image(raw, max_pixels=9999)
    assert info.value.reason == "size"

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 8000, 8000, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")
    with pytest.raises(MessageError, match="max_input_pixels"):
        decode_image(SimpleNamespace(format="png", data=png), max_pixels=4096 * 3072)
    with pytest.raises(MessageError) as info:
        decode_image(SimpleNamespace(format="png", data=b"garbage"))
    assert " at 0x" not in str(info.value)


def raw_claim(height, width, encoding="mono8", **changes):
    """An Image-like object claiming a size, with a few bytes of data."""
    return SimpleNamespace(**{**dict(header=None, height=height, width=width, encoding=encoding, is_bigendian=0,
                                     step=width, data=b"\0" * 10), **changes})


@pytest.mark.parametrize("height, width, match", [(8192, 8192, "pixel budget"), (16384, 16384, "pixel budget"),
                                                  (16385, 1, "outside"), (2**40, 2**40, "outside")])
def test_raw_frames_beyond_the_pixel_budget_are_refused_before_decoding(height, width, match):
    from flowclas_ros.vocabulary import MAX_FRAME_PIXELS

    assert 7680 * 4320 <= MAX_FRAME_PIXELS < 8192 * 8192  # 8K UHD fits, 8192 x 8192 does not
    for decode in (decode_image, decode_mask):
        with pytest.raises(MessageError, match=match) as info:
            decode(raw_claim(height, width))
        assert info.value.reason == "size"
    if match == "pixel budget":  # the caller's smaller budget is named first
        with pytest.raises(MessageError, match="max_input_pixels 100"):
            decode_image(raw_claim(height, width), max_pixels=100)


@pytest.mark.parametrize("changes, match", [
    (dict(step="96"), "step must be an integer, got str"),
    (dict(height=float("inf")), "height must be an integer, got float"),
    (dict(height=23.0), "height must be an integer, got float"),
    (dict(width=None), "width must be an integer, got NoneType"),
    (dict(is_bigendian="yes", encoding="mono16", step=W * 2), "is_bigendian must be an integer"),
], ids=["string-step", "inf-height", "float-height", "none-width", "string-bigendian"])
def test_mistyped_fields_are_message_errors(changes, match):
    msg = SimpleNamespace(**{**vars(image_msg(GREY, "mono8")), **changes})
    with pytest.raises(MessageError, match=match) as info:
        decode_image(msg)
    assert info.value.reason == "field"


@pytest.mark.parametrize("field", ["height", "width", "encoding", "step", "data", "is_bigendian"])
def test_missing_fields_are_message_errors(field):
    fields = vars(image_msg(widen(GREY), "mono16"))
    del fields[field]
    msg = SimpleNamespace(**fields)
    if field == "encoding":  # without an encoding it reads as a CompressedImage without a format
        msg.format = None
    with pytest.raises(MessageError) as info:
        decode_image(msg)
    assert info.value.reason in ("field", "format")
    compressed = SimpleNamespace(format="png")  # no data
    with pytest.raises(MessageError, match="no 'data' field"):
        decode_image(compressed)
