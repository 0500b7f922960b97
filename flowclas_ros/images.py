"""Image files: which suffixes count as images, reading RGB, writing PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flowclas_ros.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def list_images(path: Path) -> list[Path]:
    """One image file, or the images directly inside a folder, sorted by name."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UserError(f"input not found: {path}")
    images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {path}")
    return images


def read_rgb(path: Path) -> np.ndarray:
    """An image file as H x W x 3 uint8 RGB; UserError for an unreadable file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UserError(f"cannot read image {path}: {exc}") from None


def write_png(path: Path, array: np.ndarray) -> None:
    """Save a uint8 array (H x W or H x W x 3) as PNG."""
    from PIL import Image

    Image.fromarray(array).save(path)
