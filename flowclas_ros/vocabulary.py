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
