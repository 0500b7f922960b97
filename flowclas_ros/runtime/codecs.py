"""sensor_msgs/Image and CompressedImage <-> numpy arrays, for any object with the message's fields.

Works on rclpy messages (``data`` is an ``array.array`` or ``bytes``) and on rosbags message
classes (``data`` is a numpy uint8 array) alike. Decoding returns views of the message buffer
where the layout allows it (rgb8, bgr8, rgba8, bgra8, mono8: strided or broadcast views, often
read-only) and copies only when a conversion computes new values.

Encoding notes:

- ``8UC3`` is treated as ``bgr8`` and ``8UC4`` as ``bgra8`` (OpenCV's channel order, which is
  what cv_bridge writes for them); ``8UC1`` as ``mono8`` and ``16UC1`` as ``mono16``.
- 16-bit images are scaled to 8 bit by keeping the high byte (``value >> 8``), so a full-range
  16-bit camera maps onto the full 8-bit range; ``is_bigendian`` is respected.
- ``yuv422``/``uyvy`` (byte order U Y0 V Y1) and ``yuv422_yuy2``/``yuyv`` (Y0 U Y1 V) are
  converted with BT.601 limited-range ("video range") coefficients, as OpenCV does.
- Bayer ``rggb8``/``bggr8``/``gbrg8``/``grbg8`` (and their 16-bit forms) are demosaiced by
  bilinear interpolation with mirrored borders.
"""

from __future__ import annotations

import io
import operator
import re
import sys
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from flowclas_ros.errors import FlowclasError
from flowclas_ros.vocabulary import MAX_FRAME_PIXELS, MAX_SIDE

_LITTLE_HOST = sys.byteorder == "little"
_OBJECT_REPR = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")


def _clean(exc: BaseException) -> str:
    """An exception's message without object reprs (``<... at 0x7f...>``: addresses leak, vary)."""
    return _OBJECT_REPR.sub("<object>", str(exc)) or type(exc).__name__




def _field(msg: Any, name: str) -> Any:
    """``msg.name``, or a MessageError when the message has no such field."""
    try:
        return getattr(msg, name)
    except AttributeError:
        raise MessageError(f"message has no {name!r} field", "field") from None


def _integer(msg: Any, name: str) -> int:
    """An integer field (Python or numpy integer; not a float, string or bool-like object)."""
    value = _field(msg, name)
    try:
        return operator.index(value)
    except TypeError:
        raise MessageError(f"{name} must be an integer, got {type(value).__name__}", "field") from None


class MessageError(FlowclasError):
    """A message that cannot be turned into an image; ``reason`` is a short category name."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class _Layout:
    channels: int
    depth: int  # bytes per channel value
    kind: str  # "rgb", "bgr", "rgba", "bgra", "mono", "uyvy", "yuyv" or "bayer_<pattern>"


_LAYOUTS = {
    "rgb8": _Layout(3, 1, "rgb"),
    "bgr8": _Layout(3, 1, "bgr"),
    "rgba8": _Layout(4, 1, "rgba"),
    "bgra8": _Layout(4, 1, "bgra"),
    "mono8": _Layout(1, 1, "mono"),
    "8UC1": _Layout(1, 1, "mono"),
    "8UC3": _Layout(3, 1, "bgr"),
    "8UC4": _Layout(4, 1, "bgra"),
    "rgb16": _Layout(3, 2, "rgb"),
    "bgr16": _Layout(3, 2, "bgr"),
    "rgba16": _Layout(4, 2, "rgba"),
    "bgra16": _Layout(4, 2, "bgra"),
    "mono16": _Layout(1, 2, "mono"),
    "16UC1": _Layout(1, 2, "mono"),
    "yuv422": _Layout(2, 1, "uyvy"),
    "uyvy": _Layout(2, 1, "uyvy"),
    "yuv422_yuy2": _Layout(2, 1, "yuyv"),
    "yuyv": _Layout(2, 1, "yuyv"),
    **{f"bayer_{p}{bits}": _Layout(1, bits // 8, f"bayer_{p}") for p in ("rggb", "bggr", "gbrg", "grbg") for bits in (8, 16)},
}

ENCODINGS = tuple(sorted(_LAYOUTS))
_MASK_ENCODINGS = ("mono8", "8UC1", "mono16", "16UC1")


# ---------------------------------------------------------------------------------------------
# validation and raw views


def _buffer(data: Any) -> np.ndarray:
    """The message's ``data`` as a 1-D uint8 array, without copying when it is a buffer."""
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise MessageError(f"image data must be uint8, got dtype {data.dtype}", "data")
        return np.ascontiguousarray(data.reshape(-1))
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError):
        pass
    try:  # a plain list of ints, e.g. from a hand-built message: one copy
        return np.asarray(data, dtype=np.uint8).reshape(-1)
    except (TypeError, ValueError, OverflowError) as exc:
        raise MessageError(f"image data is not a byte buffer ({type(data).__name__})", "data") from exc


def _check_size(h: int, w: int, max_pixels: int | None = None, what: str = "image") -> tuple[int, int]:
    """``(h, w)`` when within 1..MAX_SIDE a side, ``max_pixels`` and MAX_FRAME_PIXELS in all, else a MessageError."""
    if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
        raise MessageError(f"{what} size {h}x{w} is outside 1..{MAX_SIDE} pixels a side", "size")
    if max_pixels is not None and h * w > max_pixels:
        raise MessageError(f"{what} of {w}x{h} = {h * w} pixels exceeds max_input_pixels {max_pixels}", "size")
    if h * w > MAX_FRAME_PIXELS:
        raise MessageError(f"{what} of {w}x{h} = {h * w} pixels exceeds the {MAX_FRAME_PIXELS} pixel budget", "size")
    return h, w


def _raw_size(msg: Any, max_pixels: int | None = None) -> tuple[int, int]:
    """An Image message's checked ``(height, width)``."""
    try:
        h, w = _integer(msg, "height"), _integer(msg, "width")
    except MessageError as exc:
        raise MessageError(f"image size is not a pair of integers: {exc}", exc.reason) from None
    return _check_size(h, w, max_pixels)


def _raw_view(msg: Any, layout: _Layout, max_pixels: int | None = None) -> np.ndarray:
    """``H x W x C`` view of an Image message's pixels (uint8 or 16-bit in the message's byte order)."""
    h, w = _raw_size(msg, max_pixels)
    row_bytes = w * layout.channels * layout.depth
    step = _integer(msg, "step")
    if step < row_bytes:
        pixel = layout.channels * layout.depth
        raise MessageError(f"row step {step} is smaller than width {w} x {pixel} bytes per pixel", "step")
    big_endian = _integer(msg, "is_bigendian") != 0 if layout.depth > 1 else False
    buf = _buffer(_field(msg, "data"))
    if buf.size != step * h:
        raise MessageError(f"data holds {buf.size} bytes but step {step} x height {h} needs {step * h}", "data")
    dtype: np.dtype = np.dtype(np.uint8) if layout.depth == 1 else np.dtype(">u2" if big_endian else "<u2")
    shape = (h, w, layout.channels)
    strides = (step, layout.channels * layout.depth, layout.depth)
    return np.ndarray(shape, dtype=dtype, buffer=buf, strides=strides)


def _to8(raw: np.ndarray) -> np.ndarray:
    """16-bit -> 8-bit by the high byte; uint8 passes through as is."""
    return raw if raw.dtype == np.uint8 else (raw >> 8).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# colour conversions (hand-written: they are the core of the decoder and OpenCV is not a runtime
# dependency; each is a handful of vectorised numpy operations)


def _yuv422_to_rgb(raw: np.ndarray, order: str) -> np.ndarray:
    """Packed 4:2:2 (``H x W x 2`` uint8) -> RGB with BT.601 limited-range coefficients."""
    h, w, _ = raw.shape
    if w % 2:
        raise MessageError(f"{order} images need an even width, got {w}", "size")
    quads = raw.reshape(h, w // 2, 4).astype(np.float32)
    if order == "uyvy":
        u, y, v = quads[..., 0:1], quads[..., 1::2], quads[..., 2:3]
    else:
        y, u, v = quads[..., 0::2], quads[..., 1:2], quads[..., 3:4]
    c = 1.164 * np.maximum(y - 16.0, 0.0)
    d, e = u - 128.0, v - 128.0
    rgb = np.stack([c + 1.596 * e, c - 0.813 * e - 0.391 * d, c + 2.018 * d], axis=-1)
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8).reshape(h, w, 3)


# Row/column offsets (within the 2x2 tile) of the red and blue sites of each Bayer pattern.
_BAYER_SITES = {"rggb": ((0, 0), (1, 1)), "bggr": ((1, 1), (0, 0)), "gbrg": ((1, 0), (0, 1)), "grbg": ((0, 1), (1, 0))}


def _demosaic(raw: np.ndarray, pattern: str) -> np.ndarray:
    """Bilinear demosaic of an ``H x W`` Bayer mosaic (uint8) into ``H x W x 3`` RGB."""
    h, w = raw.shape
    if h < 2 or w < 2:
        raise MessageError(f"Bayer images need at least 2x2 pixels, got {h}x{w}", "size")
    p = np.pad(raw.astype(np.uint16), 1, mode="reflect")  # mirroring keeps the colour of each site
    centre = p[1:-1, 1:-1]
    left, right, up, down = p[1:-1, :-2], p[1:-1, 2:], p[:-2, 1:-1], p[2:, 1:-1]
    horizontal = (left + right + 1) >> 1
    vertical = (up + down + 1) >> 1
    cross = (left + right + up + down + 2) >> 2
    diagonal = (p[:-2, :-2] + p[:-2, 2:] + p[2:, :-2] + p[2:, 2:] + 2) >> 2
    (ry, rx), (by, bx) = _BAYER_SITES[pattern]
    out = np.empty((h, w, 3), dtype=np.uint16)
    for y, x, same, other in ((ry, rx, 0, 2), (by, bx, 2, 0)):  # red and blue sites
        out[y::2, x::2, same] = centre[y::2, x::2]
        out[y::2, x::2, 1] = cross[y::2, x::2]
        out[y::2, x::2, other] = diagonal[y::2, x::2]
    for y, x in ((ry, bx), (by, rx)):  # green sites: in a red row or in a blue row
        red_row = y == ry
        out[y::2, x::2, 1] = centre[y::2, x::2]
        out[y::2, x::2, 0] = (horizontal if red_row else vertical)[y::2, x::2]
        out[y::2, x::2, 2] = (vertical if red_row else horizontal)[y::2, x::2]
    return out.astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# public decoders


def _is_compressed(msg: Any) -> bool:
    return hasattr(msg, "format") and not hasattr(msg, "encoding")


def _open_compressed(msg: Any, formats: tuple[str, ...], max_pixels: int | None = None):
    from PIL import Image

    fmt = _field(msg, "format")
    kind = str(fmt).lower()
    names = {"JPEG": ("jpeg", "jpg"), "PNG": ("png",)}
    if not any(n in kind for f in formats for n in names[f]) or "compresseddepth" in kind:
        raise MessageError(f"compressed format {str(fmt)[:80]!r} is not one of {', '.join(formats).lower()}", "format")
    data = _buffer(_field(msg, "data")).tobytes()
    try:
        with warnings.catch_warnings():
            # our budget (below Pillow's) is checked from the same header just after; Pillow's own
            # warning would only add raw stderr lines that bypass the node's log rate limit
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=list(formats))
        # from the header: nothing decoded yet
        _check_size(image.height, image.width, max_pixels, "compressed image")
        image.load()
    except MessageError:
        raise
    except Image.DecompressionBombError as exc:  # a header far beyond any budget: Pillow refuses first
        claimed = re.search(r"\((\d+) pixels\)", str(exc))
        size = f" of {claimed.group(1)} pixels" if claimed else ""
        limit = (f"max_input_pixels {max_pixels}" if max_pixels is not None and max_pixels <= MAX_FRAME_PIXELS
                 else f"the {MAX_FRAME_PIXELS} pixel budget")
        raise MessageError(f"compressed image{size} exceeds {limit}", "size") from None
    except Exception as exc:  # PIL raises many kinds for corrupt or hostile payloads
        raise MessageError(f"compressed image ({str(fmt)[:80]}) failed to decode: {_clean(exc)}", "decode") from exc
    return image


def decode_image(msg: Any, max_pixels: int | None = None) -> np.ndarray:
    """sensor_msgs/Image or CompressedImage -> ``H x W x 3`` uint8 RGB (a view when possible).

    Raises :class:`MessageError` for a missing or mistyped field, an unknown encoding, a size
    outside 1..16384 a side, more than ``MAX_FRAME_PIXELS`` or ``max_pixels`` pixels (checked before
    anything is decoded: a compressed image's size is read from its PNG/JPEG header), a step
    or data length that does not fit width and height, or a payload that fails to decode.
    """
    if _is_compressed(msg):
        image = _open_compressed(msg, ("JPEG", "PNG"), max_pixels)
        if image.mode.startswith("I;16") or image.mode == "I":
            grey = np.asarray(image, dtype=np.uint16) >> 8
            return np.broadcast_to(grey.astype(np.uint8)[..., None], grey.shape + (3,))
        return np.asarray(image.convert("RGB"))
    encoding = str(_field(msg, "encoding"))
    layout = _LAYOUTS.get(encoding)
    if layout is None:
        raise MessageError(f"unsupported image encoding {encoding[:40]!r} (supported: {', '.join(ENCODINGS)})",
                           "encoding")
    raw = _raw_view(msg, layout, max_pixels)
    kind = layout.kind
    if kind in ("uyvy", "yuyv"):
        return _yuv422_to_rgb(raw, kind)
    raw = _to8(raw)
    if kind.startswith("bayer_"):
        return _demosaic(raw[..., 0], kind[len("bayer_"):])
    if kind == "mono":
        return np.broadcast_to(raw, raw.shape[:2] + (3,))
    if kind in ("rgb", "rgba"):
        return raw[..., :3]
    return raw[..., 2::-1]  # bgr, bgra


def decode_mask(msg: Any) -> np.ndarray:
    """A ground-truth label image (mono8/8UC1/mono16/16UC1 Image, or PNG CompressedImage) -> ``H x W``.

    Label values are kept as they are (no scaling): uint8 for 8-bit masks, native uint16 for
    16-bit ones.
    """
    if _is_compressed(msg):
        image = _open_compressed(msg, ("PNG",))
        if image.mode not in ("L", "P", "I;16", "I;16B", "I"):
            raise MessageError(f"mask PNG has mode {image.mode}, expected a single-channel label image", "encoding")
        return np.asarray(image)
    encoding = str(_field(msg, "encoding"))
    if encoding not in _MASK_ENCODINGS:
        raise MessageError(f"mask encoding {encoding[:40]!r} is not one of {', '.join(_MASK_ENCODINGS)}", "encoding")
    raw = _raw_view(msg, _LAYOUTS[encoding])[..., 0]
    return raw if raw.dtype == np.uint8 else raw.astype(np.uint16)


# ---------------------------------------------------------------------------------------------
# encoders


@dataclass(frozen=True)
class EncodedImage:
    """The fields of a sensor_msgs/Image, with ``data`` a contiguous 1-D uint8 array."""

    height: int
    width: int
    encoding: str
    is_bigendian: bool
    step: int
    data: np.ndarray


_ENCODE = {"32FC1": (np.float32, 1), "mono8": (np.uint8, 1), "bgr8": (np.uint8, 3), "rgb8": (np.uint8, 3)}


def encode_image(array: np.ndarray, encoding: str) -> EncodedImage:
    """An array already in the encoding's layout -> Image fields (copies only if not contiguous).

    Supported: ``32FC1`` (H x W float32), ``mono8`` (H x W uint8), ``bgr8``/``rgb8`` (H x W x 3 uint8).
    """
    if encoding not in _ENCODE:
        raise ValueError(f"cannot encode {encoding!r}; supported: {', '.join(_ENCODE)}")
    dtype, channels = _ENCODE[encoding]
    array = np.ascontiguousarray(array, dtype=dtype)
    expected_ndim = 2 if channels == 1 else 3
    if array.ndim != expected_ndim or (channels > 1 and array.shape[2] != channels):
        wanted = "H x W" if channels == 1 else f"H x W x {channels}"
        raise ValueError(f"{encoding} needs an array of shape {wanted}, got {array.shape}")
    h, w = array.shape[:2]
    big_endian = not _LITTLE_HOST and array.itemsize > 1
    return EncodedImage(h, w, encoding, big_endian, w * channels * array.itemsize, array.reshape(-1).view(np.uint8))
