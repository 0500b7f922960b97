"""Image files: which suffixes count as images, opening them safely, reading RGB, writing PNG.

Every image file a user hands us (``detect`` inputs, dataset images and masks) is opened by
:func:`open_image`: only the formats of ``IMAGE_SUFFIXES`` are tried (whatever the suffix
says, so no other Pillow plugin, such as EPS with its Ghostscript call, ever sees the
file), the size in the header is checked against ``MAX_SIDE`` and ``MAX_FILE_PIXELS`` before a
pixel is decoded, the first frame is decoded and turned upright by its EXIF orientation.
Any failure is one ``UserError`` line naming the file.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from flowclas_ros.errors import UserError
from flowclas_ros.vocabulary import MAX_FILE_PIXELS, MAX_SIDE

if TYPE_CHECKING:
    from PIL.Image import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
FORMATS = ("PNG", "JPEG", "BMP", "WEBP", "TIFF")
"""The Pillow formats tried on an image file (those of ``IMAGE_SUFFIXES``)."""


log = logging.getLogger(__name__)
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_OBJECT_REPR = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")


def list_images(path: Path) -> list[Path]:
    """One image file, or the image files directly inside a folder, sorted by name (regular
    files only: a FIFO or device named ``x.png`` would block or never end)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UserError(f"input not found (or not a regular file): {path}")
    images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {path}")
    return images


def _reason(exc: BaseException) -> str:
    text = " ".join(_OBJECT_REPR.sub("<object>", str(exc)).split())[:200]
    return text or type(exc).__name__


def check_size(width: int, height: int, what: str) -> None:
    """UserError unless ``width`` x ``height`` fits ``MAX_SIDE`` a side and ``MAX_FILE_PIXELS`` in all."""
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
        raise UserError(f"{what} is {width}x{height} pixels: each side must be 1..{MAX_SIDE}")
    if width * height > MAX_FILE_PIXELS:
        raise UserError(f"{what} is {width}x{height} = {width * height} pixels, more than the "
                        f"{MAX_FILE_PIXELS}-pixel budget (a decompression bomb?)")


def open_image(path: Path, what: str = "image") -> "Image":
    """The first frame of an image file, decoded and upright (EXIF orientation applied).

    UserError (naming ``what`` and ``path``) for a missing, unreadable, truncated or
    oversized file, one in none of ``FORMATS``, or anything but a regular file.
    """
    from PIL import Image, ImageOps

    if not path.is_file():
        raise UserError(f"cannot read {what} {path}: not a regular file")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # Pillow's notes on corrupt metadata: logged below
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=list(FORMATS)) as img:
                check_size(img.width, img.height, f"{what} {path}")  # from the header: nothing decoded yet
                img.load()
                upright = ImageOps.exif_transpose(img)
        for note in caught:
            log.debug("%s %s: %s", what, path, note.message)
        return upright
    except UserError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UserError(f"{what} {path} is too large to decode: more than the {MAX_FILE_PIXELS}-pixel budget "
                        "(a decompression bomb?)") from None
    except Image.UnidentifiedImageError:
        raise UserError(f"cannot read {what} {path}: not a readable {', '.join(FORMATS)} file") from None
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror or _reason(exc)}") from None
    except Exception as exc:  # Pillow raises many kinds (SyntaxError, struct.error, ...) on corrupt files
        raise UserError(f"cannot read {what} {path}: {_reason(exc)}") from None


def to_rgb(img: "Image", what: str = "image") -> np.ndarray:
    """A decoded image as H x W x 3 uint8 RGB.

    16-bit grey (``I;16*``, and ``I``, as which 16-bit files are read) is scaled by 1/257 to 8
    bits; alpha is dropped (palettes with transparency via RGBA); 1-bit, grey, palette and
    CMYK images are converted by Pillow. Floating-point images are refused (UserError).
    """
    if img.mode in _SIXTEEN_BIT:
        grey = np.clip(np.asarray(img).astype(np.int64), 0, 65535)
        grey8 = ((grey + 128) // 257).astype(np.uint8)
        return np.repeat(grey8[..., None], 3, axis=2)
    if img.mode == "F":
        raise UserError(f"{what} holds floating-point pixels: save it as an 8- or 16-bit image")
    if img.mode in ("P", "PA") and (img.mode == "PA" or "transparency" in img.info):
        img = img.convert("RGBA")
    try:
        return np.asarray(img.convert("RGB"))
    except ValueError as exc:  # a mode Pillow cannot turn into RGB
        raise UserError(f"{what}: cannot convert mode {img.mode} to RGB ({_reason(exc)})") from None


def read_rgb(path: Path) -> np.ndarray:
    """An image file as H x W x 3 uint8 RGB (``open_image`` then ``to_rgb``); UserError if unusable."""
    return to_rgb(open_image(path), f"image {path}")


def write_png(path: Path, array: np.ndarray) -> None:
    """Save a uint8 array (H x W or H x W x 3) as PNG, atomically (a symlink at ``path`` is
    replaced, never written through)."""
    from PIL import Image

    from flowclas_ros.files import atomic_write

    atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))
