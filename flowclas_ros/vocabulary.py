"""Names and values shared by every layer: label values, size limits.

Choices of a setting (backends, precisions, smoothers, bag storages) are not listed here:
each comes from the registry that implements it, so a choice can never exist without code.
"""

from enum import IntEnum


class Label(IntEnum):
    """Pixel label values of every mask the project reads or writes.

    Test masks use INLIER / ANOMALY / VOID; training masks use INLIER / VOID (ignore);
    outlier source masks use OBJECT for object pixels, INLIER for background and VOID.
    """

    INLIER = 0
    ANOMALY = 1
    OBJECT = 254
    VOID = 255


MASK_ON = 255
"""Value of an anomalous pixel in a published mono8 mask (0 elsewhere)."""

MAX_SIDE = 16384
"""Largest image side (pixels) any decoder or the detector accepts."""

MAX_FRAME_PIXELS = 32 * 2**20
"""Largest camera frame (width x height) decoded from a message, raw or compressed: an 8K UHD
frame (7680 x 4320) fits, an 8192 x 8192 one (2.6 GB through the detector) does not. A few
bytes of PNG or a raw header may claim any size; the claim is checked before decoding."""

MAX_FILE_PIXELS = 64 * 2**20
"""Largest image file (width x height) decoded: 8192 x 8192, about 200 MB as RGB, so that
photos from high-resolution cameras still train; under Pillow's decompression-bomb limit."""
