"""A camera rosbag2 from frames with ground truth (the synthetic data's and the tests' bags)."""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from rosbags.typesys import get_typestore

from flowclas_ros.bagio import COMPRESSED_IMAGE, IMAGE, START_NS, TYPESTORE, BagWriter, ns_to_stamp


def _as_rgb(frame: np.ndarray, index: int) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3 or 0 in frame.shape:
        raise ValueError(f"frame {index}: expected H x W x 3 uint8 RGB, got {frame.dtype} {frame.shape}")
    return np.ascontiguousarray(frame)


def _jpeg(frame: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=quality)
    return np.frombuffer(buffer.getvalue(), dtype=np.uint8)


def write_camera_bag(
    path: str | Path,
    frames: Iterable[tuple[np.ndarray, np.ndarray | None]],
    image_topic: str = "/camera/image_raw",
    mask_topic: str = "/camera/anomaly_gt",
    rate_hz: float = 10.0,
    storage: str = "sqlite3",
    compressed: bool = False,
    *,
    frame_id: str = "camera",
    start_ns: int = START_NS,
    jpeg_quality: int = 90,
) -> Path:
    """Write frames as a camera rosbag2 and return its path (a new directory).

    ``frames`` yields ``(rgb, gt)``: ``rgb`` H x W x 3 uint8, ``gt`` H x W uint8 labels
    (0 inlier, 1 anomaly, 255 void) or None. Frame ``i`` is stamped and logged at
    ``start_ns + i / rate_hz`` seconds with ``frame_id``. Images go to ``image_topic`` as
    sensor_msgs/Image rgb8, or as sensor_msgs/CompressedImage JPEG when ``compressed``
    (the topic is used as given; image_transport names it ``<base>/compressed``); labels
    go to ``mask_topic`` as mono8 Images with the same header. Frames are streamed.
    """
    if not rate_hz > 0:
        raise ValueError(f"rate_hz must be positive, got {rate_hz}")
    store = get_typestore(TYPESTORE)
    types = store.types
    with BagWriter(path, storage, store) as bag:
        image_conn = bag.add(image_topic, COMPRESSED_IMAGE if compressed else IMAGE)
        mask_conn = None
        for index, (rgb, gt) in enumerate(frames):
            rgb = _as_rgb(rgb, index)
            height, width = rgb.shape[:2]
            ns = start_ns + round(index * 1e9 / rate_hz)
            header = types["std_msgs/msg/Header"](stamp=ns_to_stamp(store, ns), frame_id=frame_id)
            if compressed:
                msg = types[COMPRESSED_IMAGE](header=header, format="rgb8; jpeg compressed bgr8", data=_jpeg(rgb, jpeg_quality))
            else:
                msg = types[IMAGE](header, height, width, "rgb8", 0, width * 3, rgb.reshape(-1))
            bag.write(image_conn, ns, msg)
            if gt is None:
                continue
            gt = np.ascontiguousarray(gt)
            if gt.dtype != np.uint8 or gt.shape != (height, width):
                raise ValueError(f"frame {index}: ground truth must be uint8 {height}x{width}, got {gt.dtype} {gt.shape}")
            if mask_conn is None:
                mask_conn = bag.add(mask_topic, IMAGE)
            bag.write(mask_conn, ns, types[IMAGE](header, height, width, "mono8", 0, width, gt.reshape(-1)))
    return Path(path)
