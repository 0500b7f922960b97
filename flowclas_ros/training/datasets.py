"""Image datasets in the layouts of docs/method.md section 6 and docs/design.md "Dataset layouts".

``build_dataset(name, root, split, **options)`` returns a sequence of
``(image H x W x 3 uint8 RGB, labels H x W uint8, name)`` with one label convention per split:

- ``train``: 0 inlier, 255 ignore;
- ``test``: 0 inlier, 1 anomaly, 255 void;
- ``outliers``: 254 object, 0 background, 255 ignore.

Loaders check their folders when built and raise ``UserError`` naming the missing path and
the expected pattern. An item that cannot be used at fetch time (unreadable, truncated or
oversized image or mask - ``flowclas_ros.images.open_image`` -, label values the layout does
not define, image and mask sizes differ, an outlier mask without object pixels) is logged
once as a warning naming the file and replaced by the next usable item in index order, so
an epoch never stops halfway and a batch is always full; ``dataset.skipped`` records what
was skipped and why (in this process: DataLoader workers keep their own). The replacement
depends only on which files are unusable, never on what was fetched before, so training
draws the same samples in every run and after every resume.

``rosbag`` reads frames (and optional masks) from a rosbag2 topic: indexed once when built,
each message fetched and decoded on demand (``RosbagDataset``).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flowclas_ros.errors import FlowclasError, UserError
from flowclas_ros.images import IMAGE_SUFFIXES, open_image, read_rgb
from flowclas_ros.vocabulary import Label

log = logging.getLogger(__name__)

INLIER, ANOMALY, OBJECT, IGNORE = (int(v) for v in (Label.INLIER, Label.ANOMALY, Label.OBJECT, Label.VOID))
_UNDEFINED = 256  # label-table entry for a raw value the layout does not define

Item = tuple[np.ndarray, np.ndarray, str]


class BadItem(Exception):
    """Why one item cannot be used; its dataset skips it."""


def label_table(mapping: dict[int, int], default: int = _UNDEFINED) -> np.ndarray:
    """A 256-entry lookup table from raw mask values to labels (``default`` for the rest)."""
    table = np.full(256, default, np.uint16)
    for raw, label in mapping.items():
        table[raw] = label
    return table


TRAIN_TABLE = label_table({IGNORE: IGNORE}, default=INLIER)
TEST_TABLE = label_table({INLIER: INLIER, ANOMALY: ANOMALY, IGNORE: IGNORE})
OUTLIER_TABLE = label_table({0: 0, OBJECT: OBJECT, IGNORE: IGNORE})
OUTLIER_TABLE_NO_BACKGROUND = label_table({0: IGNORE, OBJECT: OBJECT, IGNORE: IGNORE})
# ALLO: inlier classes 0..7, class 8 is the anomaly (ignored when training on inliers).
ALLO_TRAIN_TABLE = label_table({**{c: INLIER for c in range(8)}, 8: IGNORE, IGNORE: IGNORE})
ALLO_TEST_TABLE = label_table({**{c: INLIER for c in range(8)}, 8: ANOMALY, IGNORE: IGNORE})
# Cityscapes labelIds that have one of the 19 train ids; every other id is void.
CITYSCAPES_TRAIN_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
CITYSCAPES_TABLE = label_table({i: INLIER for i in CITYSCAPES_TRAIN_LABEL_IDS}, default=IGNORE)
# The same pixels labelled with their train id 0..18 (semantic labels for the segmentation head).
CITYSCAPES_TRAIN_ID_TABLE = label_table({i: t for t, i in enumerate(CITYSCAPES_TRAIN_LABEL_IDS)}, default=IGNORE)
# Road Anomaly: 2 marks the anomaly, 255 void; every other value is the (inlier) scene.
ROAD_ANOMALY_TABLE = label_table({2: ANOMALY, IGNORE: IGNORE}, default=INLIER)


def apply_table(raw: np.ndarray, table: np.ndarray, source: Path | str) -> np.ndarray:
    """Map a raw mask through ``table``; ``BadItem`` if it holds values the table leaves undefined."""
    if raw.dtype != np.uint8:
        if raw.size and (raw.min() < 0 or raw.max() > 255):
            raise BadItem(f"{source}: mask values outside 0..255 (max {raw.max()})")
        raw = raw.astype(np.uint8)
    labels = table[raw]
    if labels.max(initial=0) == _UNDEFINED:
        found = np.unique(raw[labels == _UNDEFINED])[:8].tolist()
        allowed = np.flatnonzero(table != _UNDEFINED).tolist()
        raise BadItem(f"{source}: mask values {found} are not in this layout's {allowed}")
    return labels.astype(np.uint8)


def read_image(path: Path) -> np.ndarray:
    """An image file as H x W x 3 uint8 RGB; ``BadItem`` if unreadable."""
    try:
        return read_rgb(path)
    except UserError as exc:
        raise BadItem(str(exc)) from None


def read_mask(path: Path) -> np.ndarray:
    """A single-channel label image (8 or 16 bit) as its stored values; ``BadItem`` if unusable.

    Opened like every image (``open_image``: EXIF orientation applied, as for the image it
    labels). Accepted: 1-bit (0/1), grey and palette (the indices), 16-bit grey, grey with
    alpha (alpha ignored), and RGB(A) whose three colour channels are equal.
    """
    try:
        img = open_image(path, "mask")
    except UserError as exc:
        raise BadItem(str(exc)) from None
    if img.mode in ("LA", "PA"):
        img = img.getchannel(0)
    if img.mode not in ("1", "L", "P", "RGB", "RGBA", "I;16", "I;16L", "I;16B", "I;16N", "I"):
        raise BadItem(f"{path}: mask has mode {img.mode}, expected one channel of label values")
    array = np.asarray(img)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if array.ndim == 3:
        if not (array[..., :3] == array[..., :1]).all():
            raise BadItem(f"{path}: mask is a colour image, expected one channel of label values")
        array = array[..., 0]
    return array


class ImageSequence(Sequence):
    """Items by index; an unusable item is reported once and replaced by the next usable one.

    Subclasses implement ``__len__`` and ``load(index) -> Item`` (raising ``BadItem``).
    """

    source: str

    def __init__(self) -> None:
        self.skipped: dict[int, str] = {}

    def load(self, index: int) -> Item:
        """Item ``index``: ``(image, labels, name)``; BadItem when unusable."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> Item:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} items")
        for step in range(n):
            j = (index + step) % n
            if j in self.skipped:
                continue
            try:
                return self.load(j)
            except BadItem as exc:
                self.skipped[j] = str(exc)
                log.warning("skipped item %d of %s (%d so far): %s", j, self.source, len(self.skipped), exc)
        raise UserError(f"no usable items in {self.source} ({n} skipped, e.g. {next(iter(self.skipped.values()))})")


@dataclass(frozen=True)
class Entry:
    """One image, its raw mask (None: every pixel gets the dataset's fill label) and its name."""

    image: Path
    mask: Path | None
    name: str


class FileDataset(ImageSequence):
    """Images and masks on disk; raw mask values mapped through a label table.

    ``need``: a label every usable item must have at least one pixel of (outlier sources:
    ``OBJECT``, since a mask without object pixels has nothing to paste).
    """

    def __init__(self, source: str, entries: list[Entry], table: np.ndarray, fill: int = INLIER,
                 need: int | None = None) -> None:
        super().__init__()
        self.source, self.entries, self.table, self.fill, self.need = source, entries, table, fill, need

    def __len__(self) -> int:
        return len(self.entries)

    def load(self, index: int) -> Item:
        """Item ``index``: ``(image, labels, name)``; BadItem when unusable."""
        entry = self.entries[index]
        image = read_image(entry.image)
        if entry.mask is None:
            return image, np.full(image.shape[:2], self.fill, np.uint8), entry.name
        labels = apply_table(read_mask(entry.mask), self.table, entry.mask)
        if labels.shape != image.shape[:2]:
            turned = " (EXIF orientation turns the image or the mask: give both the same)" \
                if labels.shape == image.shape[1::-1] else ""
            raise BadItem(f"{entry.mask}: mask is {labels.shape[::-1]} (w, h), image {entry.image} is "
                          f"{image.shape[1::-1]}{turned}")
        if self.need is not None and not (labels == self.need).any():
            raise BadItem(f"{entry.mask}: no pixel has label {self.need} (an outlier mask needs object pixels)")
        return image, labels, entry.name


# --- checking layouts ---------------------------------------------------------------------


def _folder(path: Path, dataset: str, expected: str) -> Path:
    if not path.is_dir():
        raise UserError(f"{dataset}: missing folder {path} (expected {expected})")
    return path


def _images(folder: Path, dataset: str, patterns: tuple[str, ...] | None = None) -> list[Path]:
    """Images in ``folder`` matching ``patterns`` (default: any image suffix); UserError if none."""
    _folder(folder, dataset, _describe(folder, patterns))
    if patterns is None:
        found = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    else:
        found = [p for pattern in patterns for p in folder.glob(pattern) if p.is_file()]
    if not found:
        raise UserError(f"{dataset}: no images in {folder} (expected {_describe(folder, patterns)})")
    return sorted(set(found))


def _describe(folder: Path, patterns: tuple[str, ...] | None) -> str:
    if patterns is None:
        return f"{folder}/*{{{','.join(IMAGE_SUFFIXES)}}}"
    return " or ".join(f"{folder}/{p}" for p in patterns)


def _pair(
    dataset: str,
    images: list[Path],
    mask_of: Callable[[Path], Path],
    name_of: Callable[[Path], str],
    required: Callable[[Path], bool] = lambda image: True,
) -> list[Entry]:
    """Entries with their masks; UserError listing images whose required mask is missing."""
    entries, missing = [], []
    for image in images:
        mask = mask_of(image)
        if not mask.is_file():
            if required(image):
                missing.append(f"{image} -> {mask}")
            mask = None
        entries.append(Entry(image, mask, name_of(image)))
    if missing:
        examples = "; ".join(missing[:3])
        raise UserError(f"{dataset}: {len(missing)} of {len(images)} images have no mask, e.g. {examples}")
    return entries


def _check_split(dataset: str, split: str, splits: tuple[str, ...]) -> None:
    if split not in splits:
        raise UserError(f"{dataset}: unknown split {split!r} (choose from {', '.join(splits)})")


def _limit(entries: list, max_images: int | None) -> list:
    return entries if max_images is None else entries[:max_images]


# --- layouts --------------------------------------------------------------------------------


def folder_dataset(root: Path, split: str, max_images: int | None = None, ignore_background: bool = False) -> FileDataset:
    """docs/design.md layout: ``ROOT/{train,test}/images`` + ``masks/<stem>.png``;
    outliers: ``OUTLIERS/images`` + ``OUTLIERS/masks``.

    Training masks are optional per image (255 ignore, anything else inlier; no mask = all
    inlier); test and outlier masks are required. ``ignore_background``: outlier background 0 -> 255.
    """
    _check_split("folder", split, ("train", "test", "outliers"))
    base = root if split == "outliers" else root / split
    images = _limit(_images(base / "images", "folder"), max_images)
    table = {"train": TRAIN_TABLE, "test": TEST_TABLE, "outliers": _outlier_table(ignore_background)}[split]
    required = (lambda image: False) if split == "train" else (lambda image: True)
    entries = _pair("folder", images, lambda p: base / "masks" / f"{p.stem}.png", lambda p: p.stem, required)
    return FileDataset(f"folder dataset {base}", entries, table, need=OBJECT if split == "outliers" else None)


def _outlier_table(ignore_background: bool) -> np.ndarray:
    return OUTLIER_TABLE_NO_BACKGROUND if ignore_background else OUTLIER_TABLE


def _allo_mask(image: Path) -> Path:
    """The mask of an ALLO frame: the same path with its last ``images`` folder renamed ``masks``."""
    parts = list(image.parts)
    k = len(parts) - 1 - parts[::-1].index("images")
    return Path(*parts[:k], "masks", *parts[k + 1 :])


def allo_dataset(root: Path, split: str, max_images: int | None = None) -> FileDataset:
    """ALLO: ``train_v3/**/normal/**/images/*.png`` and ``test_v3/**/images/*.png``, masks under ``masks``.

    Training frames need masks (classes 0..7 -> 0, anomaly class 8 -> 255 ignore). Test
    frames: 0..7 -> 0, 8 -> 1, 255 void. A test frame without a mask counts as all inlier
    when its path does not say ``anomalous`` (the layout marks anomalous frames by path);
    an anomalous frame without a mask is an error.
    """
    _check_split("allo", split, ("train", "test"))
    pattern = "**/normal/**/images/*.png" if split == "train" else "**/images/*.png"
    top = _folder(root / f"{split}_v3", "allo", f"{root}/{split}_v3/{pattern}")
    images = sorted(set(top.glob(pattern)))
    if not images:
        raise UserError(f"allo: no images matching {top}/{pattern}")
    images = _limit(images, max_images)

    def name_of(image: Path) -> str:
        return "_".join(image.relative_to(top).with_suffix("").parts)

    def required(image: Path) -> bool:
        return split == "train" or "anomalous" in image.relative_to(top).as_posix()

    entries = _pair("allo", images, _allo_mask, name_of, required)
    table = ALLO_TRAIN_TABLE if split == "train" else ALLO_TEST_TABLE
    return FileDataset(f"allo {top}", entries, table)


def cityscapes_dataset(root: Path, split: str, max_images: int | None = None, semantic: bool = False) -> FileDataset:
    """Cityscapes ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` with ``gtFine`` labelIds; all inlier.

    Pixels whose labelId has a train id -> 0, all others (void) -> 255, in every split.
    ``semantic``: label pixels with their train id 0..18 instead of 0 (void still 255), for
    the segmentation head (``objective.use_seg``); every non-255 value is still an inlier.
    """
    _check_split("cityscapes", split, ("train", "val"))
    top = _folder(root / "leftImg8bit" / split, "cityscapes", f"{root}/leftImg8bit/{split}/<city>/*_leftImg8bit.png")
    _folder(root / "gtFine" / split, "cityscapes", f"{root}/gtFine/{split}/<city>/*_gtFine_labelIds.png")
    images = sorted(top.glob("*/*_leftImg8bit.png"))
    if not images:
        raise UserError(f"cityscapes: no images matching {top}/<city>/*_leftImg8bit.png")

    def mask_of(image: Path) -> Path:
        prefix = image.name[: -len("_leftImg8bit.png")]
        return root / "gtFine" / split / image.parent.name / f"{prefix}_gtFine_labelIds.png"

    def name_of(image: Path) -> str:
        return image.name[: -len("_leftImg8bit.png")]

    entries = _pair("cityscapes", _limit(images, max_images), mask_of, name_of)
    table = CITYSCAPES_TRAIN_ID_TABLE if semantic else CITYSCAPES_TABLE
    return FileDataset(f"cityscapes {top}", entries, table)


def coco_dataset(root: Path, split: str, max_images: int | None = None, ignore_background: bool = False) -> FileDataset:
    """Prepared COCO outliers (``flowclas prepare-coco``): ``ood_seg_train2017/<stem>.png`` + ``train2017/<stem>.jpg``.

    The masks define the set (``train2017`` may hold all of COCO). ``ignore_background``:
    background 0 -> 255 (ALLO).
    """
    _check_split("coco", split, ("outliers",))
    masks = _images(root / "ood_seg_train2017", "coco", ("*.png",))
    _folder(root / "train2017", "coco", f"{root}/train2017/<stem>.jpg")
    entries = [Entry(root / "train2017" / f"{m.stem}.jpg", m, m.stem) for m in _limit(masks, max_images)]
    missing = [f"{e.mask} -> {e.image}" for e in entries if not e.image.is_file()]
    if missing:
        raise UserError(f"coco: {len(missing)} of {len(entries)} masks have no image, e.g. {'; '.join(missing[:3])}")
    return FileDataset(f"coco outliers {root}", entries, _outlier_table(ignore_background), need=OBJECT)


def fishyscapes_laf_dataset(root: Path, split: str, max_images: int | None = None) -> FileDataset:
    """Fishyscapes Lost & Found (validation): ``images/*.png`` and ``labels/<stem>.png`` (0 / 1 / 255)."""
    _check_split("fishyscapes_laf", split, ("test",))
    images = _limit(_images(root / "images", "fishyscapes_laf", ("*.png",)), max_images)
    entries = _pair("fishyscapes_laf", images, lambda p: root / "labels" / f"{p.stem}.png", lambda p: p.stem)
    return FileDataset(f"fishyscapes_laf {root}", entries, TEST_TABLE)


def road_anomaly_dataset(root: Path, split: str, max_images: int | None = None) -> FileDataset:
    """Road Anomaly: ``frames/<name>.jpg`` and ``frames/<name>.labels/labels_semantic.png`` (2 -> 1)."""
    _check_split("road_anomaly", split, ("test",))
    images = _limit(_images(root / "frames", "road_anomaly", ("*.jpg", "*.webp")), max_images)
    mask_of = lambda p: p.parent / f"{p.stem}.labels" / "labels_semantic.png"  # noqa: E731
    entries = _pair("road_anomaly", images, mask_of, lambda p: p.stem)
    return FileDataset(f"road_anomaly {root}", entries, ROAD_ANOMALY_TABLE)


def _smiyc(track: str, suffix: str, dataset: str, root: Path, split: str, max_images: int | None) -> FileDataset:
    """SegmentMeIfYouCan: ``<track>/images/validation*<suffix>`` + ``<track>/labels_masks/<stem>_labels_semantic.png``.

    ``root`` is the folder holding ``<track>`` or the track folder itself. Only the
    validation frames have public labels.
    """
    _check_split(dataset, split, ("test",))
    base = root / track if (root / track).is_dir() else root
    images = _limit(_images(base / "images", dataset, (f"validation*{suffix}",)), max_images)
    mask_of = lambda p: base / "labels_masks" / f"{p.stem}_labels_semantic.png"  # noqa: E731
    entries = _pair(dataset, images, mask_of, lambda p: p.stem)
    return FileDataset(f"{dataset} {base}", entries, TEST_TABLE)


def smiyc_anomaly_dataset(root: Path, split: str, max_images: int | None = None) -> FileDataset:
    """SegmentMeIfYouCan RoadAnomaly21 (``dataset_AnomalyTrack``, .jpg)."""
    return _smiyc("dataset_AnomalyTrack", ".jpg", "smiyc_anomaly", root, split, max_images)


def smiyc_obstacle_dataset(root: Path, split: str, max_images: int | None = None) -> FileDataset:
    """SegmentMeIfYouCan RoadObstacle21 (``dataset_ObstacleTrack``, .webp)."""
    return _smiyc("dataset_ObstacleTrack", ".webp", "smiyc_obstacle", root, split, max_images)


# rosbag masks follow write_camera_bag: 0 inlier, 1 anomaly, 255 void; training ignores anomalies.
ROSBAG_TRAIN_TABLE = label_table({INLIER: INLIER, ANOMALY: IGNORE, IGNORE: IGNORE})


@dataclass(frozen=True)
class _BagMessage:
    """Where one message sits in a bag: connection index, log time, rank among equal log times."""

    connection: int
    log_time: int
    rank: int


class RosbagDataset(ImageSequence):
    """Frames of a rosbag2 image topic (sensor_msgs/Image or CompressedImage), masks from ``mask_topic``.

    Masks (0 inlier, 1 anomaly, 255 void; mono8/mono16 Image or PNG CompressedImage) are
    paired with frames by header stamp. ``test``: every frame needs a mask; ``train``: a
    mask is optional (none: all inlier) and anomaly pixels become ignore (255).

    Indexing, not preloading: construction reads the bag once, deserialising each message
    only to learn its header stamp, and keeps ``(connection, log time, rank)`` per frame.
    ``__getitem__`` then fetches just that message with a time-bounded read (indexed in
    both sqlite3 and mcap storage) and decodes it, so memory does not grow with the bag and
    items come in any order. The reader is opened lazily per process (DataLoader workers
    each open their own).
    """

    def __init__(
        self,
        root: Path,
        split: str,
        image_topic: str = "/camera/image_raw",
        mask_topic: str | None = "/camera/anomaly_gt",
        max_images: int | None = None,
    ) -> None:
        from flowclas_ros.bagio import COMPRESSED_IMAGE, IMAGE, open_bag, stamp_to_ns, topic_types

        super().__init__()
        _check_split("rosbag", split, ("train", "test"))
        self.root, self.split, self.source = Path(root), split, f"rosbag {root} {image_topic}"
        self.table = ROSBAG_TRAIN_TABLE if split == "train" else TEST_TABLE
        self._reader, self._closer, self._pid = None, None, None
        with open_bag(self.root) as reader:
            types = topic_types(reader)
            listing = ", ".join(f"{t} ({m})" for t, m in sorted(types.items())) or "none"
            if types.get(image_topic) not in (IMAGE, COMPRESSED_IMAGE):
                what = "is not in the bag" if image_topic not in types else f"has type {types[image_topic]}, not an image"
                raise UserError(f"rosbag {root}: image_topic {image_topic} {what} (topics: {listing})")
            if mask_topic is not None and mask_topic not in types and split == "test":
                raise UserError(f"rosbag {root}: mask_topic {mask_topic} is not in the bag (topics: {listing})")
            images: list[tuple[int, _BagMessage]] = []
            masks: dict[int, _BagMessage] = {}
            index = {id(c): i for i, c in enumerate(reader.connections)}
            wanted = [c for c in reader.connections if c.topic in (image_topic, mask_topic)]
            seen: dict[int, int] = {}  # connection -> messages so far at the current log time
            current = None
            unreadable = 0
            for connection, log_time, data in reader.messages(connections=wanted):
                if log_time != current:
                    seen, current = {}, log_time
                k = index[id(connection)]
                seen[k] = rank = seen.get(k, -1) + 1
                try:
                    stamp = stamp_to_ns(reader.deserialize(data, connection.msgtype).header.stamp)
                except FlowclasError as exc:  # one damaged message: left out of the index, counted
                    unreadable += 1
                    log.warning("rosbag %s: skipped an unreadable message on %s (%d so far): %s",
                                root, connection.topic, unreadable, exc)
                    continue
                where = _BagMessage(k, log_time, rank)
                if connection.topic == image_topic:
                    images.append((stamp, where))
                else:
                    masks.setdefault(stamp, where)
        if not images:
            raise UserError(f"rosbag {root}: no messages on {image_topic}")
        images = _limit(images, max_images)
        unpaired = [stamp for stamp, _ in images if stamp not in masks]
        if split == "test" and unpaired:
            raise UserError(
                f"rosbag {root}: {len(unpaired)} of {len(images)} frames on {image_topic} have no mask on "
                f"{mask_topic} with the same header stamp, e.g. stamp {unpaired[0] // 10**9}.{unpaired[0] % 10**9:09d}"
            )
        self.frames = [(where, masks.get(stamp), f"{i:06d}_{stamp // 10**9}.{stamp % 10**9:09d}")
                       for i, (stamp, where) in enumerate(images)]

    def __len__(self) -> int:
        return len(self.frames)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_reader": None, "_closer": None, "_pid": None}

    def close(self) -> None:
        """Close this process's reader (reopened on the next access)."""
        if self._closer is not None:
            self._closer()
        self._reader, self._closer, self._pid = None, None, None

    def _message(self, where: _BagMessage):
        import contextlib
        import os
        import weakref

        from flowclas_ros.bagio import open_bag

        if self._pid != os.getpid():
            stack = contextlib.ExitStack()
            self._reader, self._pid = stack.enter_context(open_bag(self.root)), os.getpid()
            # closed when the dataset goes away or, at the latest, at interpreter exit (before teardown)
            self._closer = weakref.finalize(self, stack.close)
        connection = self._reader.connections[where.connection]
        found = self._reader.messages(connections=[connection], start=where.log_time, stop=where.log_time + 1)
        for rank, (_, _, data) in enumerate(found):
            if rank == where.rank:
                return self._reader.deserialize(data, connection.msgtype)
        raise BadItem(f"{self.root}: message on {connection.topic} at log time {where.log_time} vanished from the bag")

    def load(self, index: int) -> Item:
        """Item ``index``: ``(image, labels, name)``; BadItem when unusable."""
        from flowclas_ros.runtime.codecs import MessageError, decode_image, decode_mask

        image_at, mask_at, name = self.frames[index]
        try:
            image = np.ascontiguousarray(decode_image(self._message(image_at)))
            raw = None if mask_at is None else decode_mask(self._message(mask_at))
        except MessageError as exc:
            raise BadItem(f"{self.root} frame {name}: {exc}") from None
        if raw is None:
            return image, np.full(image.shape[:2], INLIER, np.uint8), name
        labels = apply_table(raw, self.table, f"{self.root} mask of frame {name}")
        if labels.shape != image.shape[:2]:
            raise BadItem(f"{self.root} frame {name}: mask is {labels.shape}, image {image.shape[:2]}")
        return image, labels, name


BUILDERS: dict[str, Callable[..., ImageSequence]] = {
    "folder": folder_dataset,
    "allo": allo_dataset,
    "cityscapes": cityscapes_dataset,
    "coco": coco_dataset,
    "fishyscapes_laf": fishyscapes_laf_dataset,
    "road_anomaly": road_anomaly_dataset,
    "smiyc_anomaly": smiyc_anomaly_dataset,
    "smiyc_obstacle": smiyc_obstacle_dataset,
    "rosbag": RosbagDataset,
}
DATASETS = tuple(BUILDERS)


def build_dataset(name: str, root: str | Path, split: str, **options) -> ImageSequence:
    """The dataset ``name`` at ``root``: a sequence of ``(image, labels, name)`` (module docstring).

    Options: ``max_images`` (keep the first N in sorted order) for every layout;
    ``ignore_background`` for ``folder``/``coco`` outliers; ``image_topic``/``mask_topic`` for ``rosbag``.
    """
    if name not in BUILDERS:
        raise UserError(f"unknown dataset {name!r} (choose from {', '.join(DATASETS)})")
    builder = BUILDERS[name]
    accepted = [p for p in inspect.signature(builder).parameters if p not in ("root", "split")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise UserError(f"dataset {name}: unknown option(s) {', '.join(unknown)} (accepted: {', '.join(accepted)})")
    max_images = options.get("max_images")
    if max_images is not None and (isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 1):
        raise UserError(f"dataset {name}: max_images must be a positive integer, got {max_images!r}")
    root = Path(root).expanduser()
    if not root.exists():
        raise UserError(f"dataset {name}: {root} does not exist")
    return builder(root, split, **options)


def random_crop(
    image: np.ndarray, labels: np.ndarray, size: tuple[int, int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A random ``size`` (h, w) window; a side shorter than ``size`` is padded (image 0, labels 255) at a random offset."""
    h, w = int(size[0]), int(size[1])
    if h < 1 or w < 1:
        raise ValueError(f"crop size must be positive, got {size}")
    if image.shape[:2] != labels.shape:
        raise ValueError(f"image {image.shape[:2]} and labels {labels.shape} differ in size")
    pad_h, pad_w = max(h - labels.shape[0], 0), max(w - labels.shape[1], 0)
    if pad_h or pad_w:
        top, left = int(rng.integers(pad_h + 1)), int(rng.integers(pad_w + 1))
        spec = ((top, pad_h - top), (left, pad_w - left))
        image = np.pad(image, spec + ((0, 0),) * (image.ndim - 2), constant_values=0)
        labels = np.pad(labels, spec, constant_values=IGNORE)
    y = int(rng.integers(labels.shape[0] - h + 1))
    x = int(rng.integers(labels.shape[1] - w + 1))
    return np.ascontiguousarray(image[y : y + h, x : x + w]), np.ascontiguousarray(labels[y : y + h, x : x + w])
