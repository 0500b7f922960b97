"""Hostile image files and datasets: ``detect``, ``eval``, ``prepare-coco``, training data, the
detector's array API, and a fuzz target for the image-file decoder.

Categories (one test id per case): image files a single ``detect`` input refuses in one line;
pixel modes and EXIF orientation read right; frame arrays ``Detector`` accepts or refuses;
``detect`` flags and outputs; items inside an ``eval`` test set (skipped, counted, warned);
``prepare-coco`` annotations (a whole file refused, or an entry skipped and counted);
training data (skipped deterministically, batches full); and random/mutated bytes.
"""

from __future__ import annotations

import io
import json
import os
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flowclas_ros.errors import UserError
from flowclas_ros.images import read_rgb
from flowclas_ros.vocabulary import MAX_FILE_PIXELS, MAX_SIDE

from .conftest import expect_refused

H, W = 24, 32


def noise(seed: int = 0, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def encoded(img: Image.Image | np.ndarray, fmt: str = "PNG", **options) -> bytes:
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    buffer = io.BytesIO()
    img.save(buffer, fmt, **options)
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def claimed_png(width: int, height: int) -> bytes:
    """A PNG of a few dozen bytes whose header claims ``width`` x ``height`` RGB pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + _chunk(b"IEND", b""))


def png16(array: np.ndarray, color_type: int) -> bytes:
    """A 16-bit PNG (Pillow writes none with colour): ``array`` H x W x channels uint16."""
    h, w = array.shape[:2]
    rows = array.astype(">u2").reshape(h, -1).tobytes()
    raw = b"".join(b"\0" + rows[i * len(rows) // h:(i + 1) * len(rows) // h] for i in range(h))
    header = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw))
            + _chunk(b"IEND", b""))


def claimed_jpeg(width: int, height: int) -> bytes:
    """A small JPEG whose frame header (SOF0) claims ``width`` x ``height`` pixels."""
    data = encoded(noise(), "JPEG")
    sof = data.index(b"\xff\xc0")
    return data[: sof + 5] + struct.pack(">HH", height, width) + data[sof + 9 :]


def oriented(array: np.ndarray, orientation: int, fmt: str = "PNG") -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encoded(array, fmt, exif=exif)


@pytest.fixture
def bundle(tmp_path, small_net):
    from flowclas_ros.model import save_bundle

    return save_bundle(small_net, tmp_path / "bundle").relative_to(tmp_path)


# --- image files: one bad input, one line ------------------------------------------------------

PNG = encoded(noise())
JPEG = encoded(noise(), "JPEG", quality=80)
BAD_FILES = {
    "bomb-pil-error": ("b.png", claimed_png(100_000, 100_000)),  # Pillow's DecompressionBombError
    "bomb-pil-warning": ("b.png", claimed_png(10_000, 10_000)),  # DecompressionBombWarning range
    "bomb-our-budget": ("b.png", claimed_png(8200, 8200)),  # under Pillow's limit, over MAX_FILE_PIXELS
    "side-over-max": ("b.png", claimed_png(MAX_SIDE + 1, 2)),
    "bomb-jpeg-header": ("b.jpg", claimed_jpeg(60_000, 60_000)),
    "bomb-jpeg-budget": ("b.jpg", claimed_jpeg(9000, 9000)),
    "truncated-png": ("t.png", PNG[: len(PNG) // 2]),
    "truncated-jpeg": ("t.jpg", JPEG[: len(JPEG) // 2]),
    "header-only-png": ("t.png", PNG[:33]),
    "bad-crc-png": ("c.png", PNG[:40] + bytes([PNG[40] ^ 0xFF]) + PNG[41:]),
    "empty-png": ("e.png", b""),
    "random-bytes": ("r.png", np.random.default_rng(1).bytes(300)),
    "text-as-jpeg": ("x.jpg", b"hello, not an image\n"),
    "gif-as-png": ("g.png", encoded(noise(), "GIF")),
    "eps-as-png": ("s.png", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n"),
    "float-tiff": ("f.tif", encoded(Image.new("F", (W, H), 0.5), "TIFF")),
    "zero-height-png": ("z.png", claimed_png(5, 0)),
    "ztxt-bomb-png": ("z.png", PNG[:33] + _chunk(b"zTXt", b"k\0\0" + zlib.compress(b"a" * 2**24, 9)) + PNG[33:]),
    "fifo": ("p.png", None),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_detect_refuses_bad_image_file(case, tmp_path, bundle, flowclas):
    name, data = BAD_FILES[case]
    if data is None:
        os.mkfifo(tmp_path / name)  # opening it for reading would block forever
    else:
        (tmp_path / name).write_bytes(data)
    outcome = flowclas("detect", "--model", bundle, "--input", name, "--output", "out", outputs=["out"])
    expect_refused(outcome, name)
    assert not (tmp_path / "out").exists()
    with pytest.raises(UserError, match=name):
        read_rgb(tmp_path / name)


def test_pixel_budget_is_below_pillows_and_within_max_side():
    assert MAX_FILE_PIXELS < Image.MAX_IMAGE_PIXELS and MAX_FILE_PIXELS <= MAX_SIDE**2


# --- pixel modes and orientation --------------------------------------------------------------

GREY16 = np.array([[0, 257, 32896, 65535]], np.uint16).repeat(2, axis=0)
GREY8 = np.array([[0, 1, 128, 255]], np.uint8).repeat(2, axis=0)
PALETTE = Image.fromarray(noise()).convert("P")
TRANSPARENT = PALETTE.copy()
TRANSPARENT.info["transparency"] = 0
MODES = {
    "I;16-png": (encoded(GREY16), GREY8),
    "I;16B-tiff": (encoded(Image.frombytes("I;16B", (4, 2), GREY16.astype(">u2").tobytes()), "TIFF"), GREY8),
    "I-tiff": (encoded(Image.fromarray(GREY16.astype(np.int32), "I"), "TIFF"), GREY8),
    "1-bit": (encoded(Image.fromarray(GREY8 > 100)), np.where(GREY8 > 100, 255, 0).astype(np.uint8)),
    "L": (encoded(GREY8), GREY8),
    "LA": (encoded(Image.fromarray(np.stack([GREY8, GREY8[::-1]], -1), "LA")), GREY8),
    "P": (encoded(PALETTE), np.asarray(PALETTE.convert("RGB"))),
    "P-transparency": (encoded(TRANSPARENT), np.asarray(PALETTE.convert("RGB"))),
    "RGBA": (encoded(np.dstack([noise(2), np.zeros((H, W), np.uint8)])), noise(2)),
    "RGB48-png": (png16(np.repeat(GREY16[..., None], 3, axis=2), 2), GREY8),
    "LA32-png": (png16(np.stack([GREY16, GREY16[::-1]], -1), 4), GREY8),
    "CMYK-jpeg": (encoded(Image.new("CMYK", (W, H), (0, 0, 0, 0)), "JPEG", quality=95), np.full((H, W, 3), 255)),
}


@pytest.mark.parametrize("case", sorted(MODES))
def test_pixel_modes_read_as_rgb(case, tmp_path):
    data, expected = MODES[case]
    (tmp_path / "m.img").write_bytes(data)
    rgb = read_rgb(tmp_path / "m.img")
    assert rgb.dtype == np.uint8 and rgb.shape == (*expected.shape[:2], 3)
    want = expected if expected.ndim == 3 else np.repeat(expected[..., None], 3, axis=2)
    assert np.abs(rgb.astype(int) - want).max() <= (2 if "jpeg" in case else 0)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_exif_orientation_is_applied(fmt, tmp_path):
    image = noise(3)
    (tmp_path / "o.img").write_bytes(oriented(image, 6, fmt))  # 6: rotate 90 degrees clockwise to view
    rgb = read_rgb(tmp_path / "o.img")
    assert rgb.shape == (W, H, 3)
    if fmt == "PNG":
        np.testing.assert_array_equal(rgb, np.rot90(image, -1))


def test_exif_orientation_applies_to_masks_alike(tmp_path):
    from flowclas_ros.training.datasets import build_dataset

    root = tmp_path / "data" / "test"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    labels = np.zeros((H, W), np.uint8)
    labels[:5, :7] = 1
    (root / "images" / "a.png").write_bytes(oriented(noise(4), 6))
    (root / "masks" / "a.png").write_bytes(oriented(labels, 6))
    image, got, _ = build_dataset("folder", tmp_path / "data", "test")[0]
    assert image.shape[:2] == got.shape == (W, H)
    np.testing.assert_array_equal(got, np.rot90(labels, -1))
    (root / "masks" / "a.png").write_bytes(encoded(labels))  # not turned: the sizes differ, said so
    ds = build_dataset("folder", tmp_path / "data", "test")
    with pytest.raises(UserError, match="no usable items"):
        ds[0]
    assert "EXIF orientation" in ds.skipped[0]


# --- frame arrays -----------------------------------------------------------------------------

ACCEPTED = {"HxW": (H, W), "HxWx1": (H, W, 1), "HxWx3": (H, W, 3), "HxWx4": (H, W, 4), "1x1x3": (1, 1, 3),
            "sliver": (1, MAX_SIDE, 3),
            "BxHxWx3": (2, H, W, 3), "BxHxWx1": (2, H, W, 1)}
REFUSED_SHAPES = {"HxWx2": (H, W, 2), "HxWx5": (H, W, 5), "BxHxW": (2, H, W), "5-axes": (1, 2, H, W, 3),
                  "1-axis": (W,), "empty": (0, W, 3), "too-wide": (1, MAX_SIDE + 1, 3)}
REFUSED_TYPES = {"float32": np.float32, "float64-nan": np.float64, "bool": bool, "int16": np.int16, "uint16": np.uint16}


@pytest.fixture
def detector(small_net):
    from flowclas_ros.runtime import Detector

    return Detector(small_net)


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_detector_accepts_frame_shape(case, detector):
    shape = ACCEPTED[case]
    frames = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    score = detector.score(frames)
    assert score.shape == (shape[:3] if len(shape) == 4 else shape[:2])
    if case == "HxWx1":
        np.testing.assert_array_equal(score, detector.score(frames[..., 0]))
    if len(shape) < 4:
        assert detector.detect(frames).mask.shape == shape[:2]


@pytest.mark.parametrize("case", sorted(REFUSED_SHAPES))
def test_detector_refuses_frame_shape(case, detector):
    shape = REFUSED_SHAPES[case]
    with pytest.raises(UserError, match=r"shape|outside") as info:
        detector.score(np.zeros(shape, np.uint8))
    assert str(shape[-1]) in str(info.value)


@pytest.mark.parametrize("case", sorted(REFUSED_TYPES))
def test_detector_refuses_dtype(case, detector):
    frame = np.zeros((H, W, 3), REFUSED_TYPES[case])
    if case.endswith("nan"):
        frame[0, 0] = np.nan
    with pytest.raises(UserError, match=f"uint8.*{np.dtype(REFUSED_TYPES[case])}"):
        detector.detect(frame)


@pytest.mark.parametrize("min_area", [-1, 2.5, "3", True])
def test_detector_refuses_bad_min_area(min_area, small_net):
    from flowclas_ros.runtime import Detector

    with pytest.raises(UserError, match="min_area"):
        Detector(small_net, min_area=min_area)


def test_detector_detect_refuses_a_batch(detector):
    with pytest.raises(UserError, match="detect_batch"):
        detector.detect(np.zeros((2, H, W, 3), np.uint8))


# --- detect: flags, outputs, folders ----------------------------------------------------------


@pytest.mark.parametrize("area", ["-1", "-0.5", "many"])
def test_detect_refuses_bad_min_area(area, tmp_path, bundle, flowclas):
    (tmp_path / "a.png").write_bytes(PNG)
    outcome = flowclas("detect", "--model", bundle, "--input", "a.png", "--output", "out", "--min-area", area)
    expect_refused(outcome, code=2)
    assert "--min-area" in outcome.stderr


@pytest.mark.parametrize("case", ["output-is-file", "output-under-file", "output-read-only", "output-in-proc"])
def test_detect_refuses_unusable_output(case, tmp_path, bundle, flowclas):
    (tmp_path / "a.png").write_bytes(PNG)
    (tmp_path / "file").write_text("mine\n")
    output = {"output-is-file": "file", "output-under-file": "file/out", "output-read-only": "locked/out",
              "output-in-proc": "/proc/flowclas-hostile/out"}[case]
    if case == "output-read-only":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        (tmp_path / "locked").mkdir(mode=0o555)
    outcome = flowclas("detect", "--model", bundle, "--input", "a.png", "--output", output)
    expect_refused(outcome, "--output", output)


def test_detect_refuses_a_folder_it_did_not_create(tmp_path, bundle, flowclas):
    (tmp_path / "a.png").write_bytes(PNG)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "a_mask.png").write_text("precious\n")
    expect_refused(flowclas("detect", "--model", bundle, "--input", "a.png", "--output", "theirs"),
                   "non-empty folder that flowclas did not create")
    assert (theirs / "a_mask.png").read_text() == "precious\n"


def test_detect_replaces_a_planted_symlink_and_never_writes_through_it(tmp_path, bundle, flowclas):
    (tmp_path / "a.png").write_bytes(PNG)
    victim = tmp_path / "victim.txt"
    victim.write_text("victim\n")
    assert flowclas("detect", "--model", bundle, "--input", "a.png", "--output", "out", outputs=["out"]).code == 0
    for name in ("a_mask.png", "a_score.npy", "detections.json"):  # planted into our own folder afterwards
        (tmp_path / "out" / name).unlink()
        (tmp_path / "out" / name).symlink_to(victim)
    assert flowclas("detect", "--model", bundle, "--input", "a.png", "--output", "out", outputs=["out"]).code == 0
    assert victim.read_text() == "victim\n"
    assert not (tmp_path / "out" / "a_mask.png").is_symlink() and (tmp_path / "out" / "a_mask.png").stat().st_size > 8


def test_file_names_cannot_forge_log_lines(tmp_path, bundle, flowclas):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.png").write_bytes(PNG)
    (photos / "bad\nflowclas detect: 9 image(s) \x1b[31mFAKE.png").write_bytes(b"not an image")
    outcome = flowclas("detect", "--model", bundle, "--input", "photos", "--output", "out", outputs=["out"])
    assert outcome.code == 0, outcome.stderr
    warnings = [line for line in outcome.stderr.splitlines() if "FAKE" in line]
    assert len(warnings) == 1 and ": warning: skipped" in warnings[0] and "\\n" in warnings[0], outcome.stderr
    assert "\x1b" not in outcome.stderr


def test_detect_keeps_the_maps_of_images_sharing_a_stem(tmp_path, bundle, flowclas):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "ok.png").write_bytes(PNG)
    Image.open(io.BytesIO(PNG)).convert("RGB").save(photos / "ok.jpg")
    (photos / "solo.png").write_bytes(PNG)
    assert flowclas("detect", "--model", bundle, "--input", "photos", "--output", "out", outputs=["out"]).code == 0
    written = {p.name for p in (tmp_path / "out").glob("*_mask.png")}
    assert written == {"ok.png_mask.png", "ok.jpg_mask.png", "solo_mask.png"}
    report = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert report["images"]["ok.jpg"]["outputs"] == "ok.jpg" and report["images"]["solo.png"]["outputs"] == "solo"


@pytest.mark.parametrize("threshold", ["nan", "1.5", "-0.1", "inf"])
def test_detect_refuses_bad_threshold(threshold, tmp_path, bundle, flowclas):
    (tmp_path / "a.png").write_bytes(PNG)
    outcome = flowclas("detect", "--model", bundle, "--input", "a.png", "--output", "out", "--threshold", threshold)
    expect_refused(outcome, "threshold", threshold)


def test_detect_folder_skips_and_counts_bad_images(tmp_path, bundle, flowclas):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.png").write_bytes(PNG)
    (photos / "bomb.png").write_bytes(claimed_png(100_000, 100_000))
    (photos / "grey16.png").write_bytes(encoded(GREY16))
    os.mkfifo(photos / "pipe.png")  # not a regular file: not listed (reading would block)
    (tmp_path / "out").mkdir()  # the harness compares the listing of tmp_path itself
    outcome = flowclas("detect", "--model", bundle, "--input", "photos", "--output", "out", outputs=["out"])
    assert outcome.code == 0 and not outcome.errors, outcome.stderr
    assert "2 image(s)" in outcome.stdout and "(1 skipped)" in outcome.stdout
    assert sum("warning" in line and "bomb.png" in line for line in outcome.stderr.splitlines()) == 1
    report = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert sorted(report["images"]) == ["a.png", "grey16.png"] and report["skipped"] == ["photos/bomb.png"]


# --- eval: unusable items in the test set -----------------------------------------------------

GOOD_LABELS = np.zeros((H, W), np.uint8)
GOOD_LABELS[4:12, 6:14] = 1
GOOD_LABELS[-2:] = 255
BAD_ITEMS = {  # item "x": (image bytes, mask bytes)
    "mask-not-an-image": (PNG, b"\x89PNG\r\n\x1a\n this is not a PNG"),
    "mask-truncated": (PNG, encoded(GOOD_LABELS)[:60]),
    "mask-wrong-size": (PNG, encoded(np.zeros((H + 1, W), np.uint8))),
    "mask-colour": (PNG, encoded(noise(5))),
    "mask-label-77": (PNG, encoded(np.where(GOOD_LABELS == 1, 77, GOOD_LABELS).astype(np.uint8))),
    "mask-16bit-300": (PNG, encoded(np.full((H, W), 300, np.uint16))),
    "mask-bomb": (PNG, claimed_png(100_000, 100_000)),
    "mask-cmyk": (PNG, encoded(Image.new("CMYK", (W, H)), "TIFF")),
    "image-bomb": (claimed_png(10_000, 10_000), encoded(GOOD_LABELS)),
    "image-truncated": (JPEG[:200], encoded(GOOD_LABELS)),
    "image-eps": (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n", encoded(GOOD_LABELS)),
}
USABLE_ITEMS = {  # accepted as they are
    "mask-grey-as-rgb": (PNG, encoded(np.repeat(GOOD_LABELS[..., None], 3, axis=2))),
    "mask-1-bit": (PNG, encoded(Image.fromarray(GOOD_LABELS == 1))),
    "mask-16bit": (PNG, encoded(GOOD_LABELS.astype(np.uint16))),
}


def _test_set(root: Path, extra: tuple[bytes, bytes] | None, good: int = 3) -> None:
    (root / "test" / "images").mkdir(parents=True)
    (root / "test" / "masks").mkdir()
    for i in range(good):
        (root / "test" / "images" / f"f{i}.png").write_bytes(encoded(noise(10 + i)))
        (root / "test" / "masks" / f"f{i}.png").write_bytes(encoded(GOOD_LABELS))
    if extra is not None:
        (root / "test" / "images" / "x.png").write_bytes(extra[0])
        (root / "test" / "masks" / "x.png").write_bytes(extra[1])


def _eval(flowclas, bundle, tmp_path: Path):
    (tmp_path / "out").mkdir(exist_ok=True)  # the harness compares the listing of tmp_path itself
    return flowclas("eval", "--model", bundle, "--dataset", "folder", "--root", "data", "--output", "out",
                    "--num-overlays", "1", "--bins", "50", outputs=["out"])


def _evaluate(detector, root: Path) -> dict:
    from flowclas_ros.training.datasets import build_dataset
    from flowclas_ros.training.evaluate import evaluate

    return evaluate(detector, build_dataset("folder", root, "test"), bins=50, progress=False)


@pytest.mark.parametrize("case", sorted(BAD_ITEMS))
def test_eval_skips_and_counts_unusable_item(case, tmp_path, detector, warned):
    _test_set(tmp_path / "data", BAD_ITEMS[case])
    metrics = _evaluate(detector, tmp_path / "data")
    assert metrics["num_images"] == 3 and metrics["num_skipped"] == 1
    assert len(warned) == 1 and "x.png" in warned[0]


@pytest.mark.parametrize("case", sorted(USABLE_ITEMS))
def test_eval_uses_odd_but_valid_item(case, tmp_path, detector, warned):
    _test_set(tmp_path / "data", USABLE_ITEMS[case])
    metrics = _evaluate(detector, tmp_path / "data")
    assert metrics["num_images"] == 4 and metrics["num_skipped"] == 0 and not warned


@pytest.mark.parametrize("case", ["mask-label-77", "image-bomb"])
def test_eval_command_reports_skipped_item(case, tmp_path, bundle, flowclas):
    _test_set(tmp_path / "data", BAD_ITEMS[case])
    outcome = _eval(flowclas, bundle, tmp_path)
    assert outcome.code == 0 and not outcome.errors, outcome.stderr
    warnings = [line for line in outcome.stderr.splitlines() if ": warning:" in line]
    assert len(warnings) == 1 and "x.png" in warnings[0], outcome.stderr
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["num_images"] == 3 and metrics["num_skipped"] == 1
    assert "1 unusable skipped" in outcome.stdout


def test_eval_refuses_a_test_set_without_usable_items(tmp_path, bundle, flowclas):
    _test_set(tmp_path / "data", BAD_ITEMS["mask-label-77"], good=0)
    expect_refused(_eval(flowclas, bundle, tmp_path), "no usable items")


@pytest.mark.parametrize("flags", [("--bins", "1000000000"), ("--bins", "1"), ("--max-images", "0")])
def test_eval_refuses_bad_flag(flags, tmp_path, bundle, flowclas):
    _test_set(tmp_path / "data", None)
    outcome = flowclas("eval", "--model", bundle, "--dataset", "folder", "--root", "data", "--output", "out", *flags)
    expect_refused(outcome, *flags, code=2 if flags[0] == "--bins" else 1)  # --bins: checked by argparse
    assert all(flag in outcome.stderr for flag in flags), outcome.stderr


def test_eval_refuses_output_that_is_a_file(tmp_path, bundle, flowclas):
    _test_set(tmp_path / "data", None)
    (tmp_path / "out").write_text("mine\n")
    outcome = flowclas("eval", "--model", bundle, "--dataset", "folder", "--root", "data", "--output", "out")
    expect_refused(outcome, "--output", "is a file")


# --- prepare-coco -----------------------------------------------------------------------------

COCO_SIDE = 12
CATEGORIES = [{"id": i, "name": n} for i, n in enumerate(
    ("person", "bicycle", "car", "motorcycle", "bus", "truck", "traffic light", "stop sign", "dog"))]
SQUARE = [[2, 2, 9, 2, 9, 9, 2, 9]]


def _coco(root: Path, images: list, annotations: list) -> None:
    (root / "train2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    for name in ("good.jpg", "other.jpg"):
        (root / "train2017" / name).write_bytes(encoded(noise(7, COCO_SIDE, COCO_SIDE), "JPEG"))
    good = {"id": 1, "file_name": "good.jpg", "height": COCO_SIDE, "width": COCO_SIDE}
    data = {"images": [good, *images], "categories": CATEGORIES,
            "annotations": [{"id": 1, "image_id": 1, "category_id": 8, "segmentation": SQUARE}, *annotations]}
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps(data))


def _image(**fields):
    return {"id": 2, "file_name": "other.jpg", "height": COCO_SIDE, "width": COCO_SIDE, **fields}


def _ann(segmentation, **fields):
    return {"id": 9, "image_id": 1, "category_id": 8, "segmentation": segmentation, **fields}


BAD_IMAGE_ENTRIES = {
    "size-1e9": _image(height=10**9, width=10**9),
    "size-over-budget": _image(height=9000, width=9000),
    "size-negative": _image(height=-5),
    "size-string": _image(width="640"),
    "size-float-inf": _image(width=float("inf")),
    "size-bool": _image(height=True),
    "entry-list": [1, 2, 3],
    "entry-number": 7,
    "file-name-parent": _image(file_name="../other.jpg"),
    "file-name-absolute": _image(file_name="/etc/passwd"),
    "file-name-nul": _image(file_name="oth\0er.jpg"),
    "file-name-number": _image(file_name=5),
    "id-list": _image(id=[2]),
}
BAD_ANNOTATIONS = {
    "not-a-mapping": "segmentation",
    "image-id-list": _ann(SQUARE, image_id=[1]),
    "category-id-dict": _ann(SQUARE, category_id={"a": 1}),
    "no-segmentation": {"id": 9, "image_id": 1, "category_id": 8},
    "segmentation-string": _ann("polygon"),
    "polygon-nan": _ann([[float("nan"), 2, 9, 2, 9, 9]]),
    "polygon-huge": _ann([[1e300, 2, 9, 2, 9, 9]]),
    "polygon-odd": _ann([[2, 2, 9, 2, 9]]),
    "polygon-strings": _ann([["2", 2, 9, 2, 9, 9]]),
    "polygon-nested": _ann([[[2, 2], [9, 2], [9, 9]]]),
    "rle-size-int": _ann({"size": 12, "counts": [144]}),
    "rle-size-wrong": _ann({"size": [10**9, 10**9], "counts": [10**18]}),
    "rle-negative-runs": _ann({"size": [COCO_SIDE, COCO_SIDE], "counts": [-10, 154]}),
    "rle-runs-short": _ann({"size": [COCO_SIDE, COCO_SIDE], "counts": [10, 20]}),
    "rle-string-garbage": _ann({"size": [COCO_SIDE, COCO_SIDE], "counts": "\x01\x02 \u20ac"}),
    "rle-string-endless-value": _ann({"size": [COCO_SIDE, COCO_SIDE], "counts": "o" * 100_000 + "0"}),
    "rle-string-negative": _ann({"size": [COCO_SIDE, COCO_SIDE], "counts": "P0"}),
}


def _prepare(flowclas, tmp_path: Path):
    (tmp_path / "prepared").mkdir(exist_ok=True)  # the harness compares the listing of tmp_path itself
    return flowclas("prepare-coco", "--coco-root", "coco", "--output", "prepared", "--filter", "cityscapes",
                    "--min-side", "1", outputs=["prepared"])


@pytest.mark.parametrize("case", sorted(BAD_IMAGE_ENTRIES))
def test_prepare_coco_skips_bad_image_entry(case, tmp_path, flowclas):
    _coco(tmp_path / "coco", [BAD_IMAGE_ENTRIES[case]], [])
    outcome = _prepare(flowclas, tmp_path)
    assert outcome.code == 0 and not outcome.errors, outcome.stderr
    assert "kept 1 of 2 images" in outcome.stdout and "1 malformed image entries" in outcome.stdout
    assert sum(": warning:" in line for line in outcome.stderr.splitlines()) == 1
    assert [p.name for p in (tmp_path / "prepared" / "ood_seg_train2017").iterdir()] == ["good.png"]


def test_prepare_coco_drops_image_with_too_many_annotations(tmp_path, flowclas):
    rle = {"size": [8000, 8000], "counts": [0, 64_000_000]}  # 2 numbers, 64 M pixels each
    _coco(tmp_path / "coco", [_image(height=8000, width=8000)], [_ann(rle, image_id=2, id=k) for k in range(100)])
    outcome = _prepare(flowclas, tmp_path)
    assert outcome.code == 0 and not outcome.errors, outcome.stderr
    assert "kept 1 of 2 images" in outcome.stdout and "1 too many annotations" in outcome.stdout


@pytest.mark.parametrize("case", sorted(BAD_ANNOTATIONS))
def test_prepare_coco_skips_bad_annotation(case, tmp_path, flowclas):
    _coco(tmp_path / "coco", [], [BAD_ANNOTATIONS[case]])
    outcome = _prepare(flowclas, tmp_path)
    assert outcome.code == 0 and not outcome.errors, outcome.stderr
    assert "kept 1 of 1 images" in outcome.stdout and "1 malformed annotations" in outcome.stdout
    mask = np.asarray(Image.open(tmp_path / "prepared" / "ood_seg_train2017" / "good.png"))
    assert mask.shape == (COCO_SIDE, COCO_SIDE) and (mask == 254).sum() == 64  # the good square only


WHOLE_FILES = {
    "list": ("[1, 2, 3]", "not a COCO instances file"),
    "string": ('"instances"', "not a COCO instances file"),
    "images-not-list": ('{"images": {}, "annotations": [], "categories": []}', "not a COCO instances file"),
    "nested-deep": ('{"images": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested"),
    "not-json": ("{images: nope", "not valid JSON"),
    "not-utf8": (b"\xff\xfe{\x00}".decode("latin-1"), "not"),
    "no-categories": ('{"images": [], "annotations": [], "categories": [{"id": [], "name": "person"}]}',
                      "no categories named"),
}


@pytest.mark.parametrize("case", sorted(WHOLE_FILES))
def test_prepare_coco_refuses_bad_annotations_file(case, tmp_path, flowclas):
    text, needle = WHOLE_FILES[case]
    _coco(tmp_path / "coco", [], [])
    path = tmp_path / "coco" / "annotations" / "instances_train2017.json"
    path.write_bytes(text.encode("latin-1") if case == "not-utf8" else text.encode())
    expect_refused(_prepare(flowclas, tmp_path), needle)


def test_prepare_coco_skips_a_second_image_with_the_same_stem_and_a_lying_size(tmp_path, flowclas):
    root = tmp_path / "coco"
    _coco(root, [_image(id=2, file_name="good.png"), _image(id=3, height=COCO_SIDE * 4)],
          [_ann(SQUARE, id=2, image_id=2), _ann(SQUARE, id=3, image_id=3)])
    (root / "train2017" / "good.png").write_bytes(encoded(noise(7, COCO_SIDE, COCO_SIDE), "PNG"))
    outcome = _prepare(flowclas, tmp_path)
    assert outcome.code == 0, outcome.stderr
    assert "kept 1 of 3 images" in outcome.stdout, outcome.stdout
    assert "stem seen before" in outcome.stdout and "size differs" in outcome.stdout, outcome.stdout
    assert [p.name for p in (tmp_path / "prepared" / "ood_seg_train2017").iterdir()] == ["good.png"]


def test_prepare_coco_refuses_to_write_into_the_coco_images(tmp_path, flowclas):
    _coco(tmp_path / "coco", [], [])
    outcome = flowclas("prepare-coco", "--coco-root", "coco", "--output", "coco/.", "--filter", "cityscapes",
                       "--min-side", "1")
    expect_refused(outcome, "would write into the COCO images")


def test_prepare_coco_keeps_a_file_it_did_not_write(tmp_path, flowclas):
    _coco(tmp_path / "coco", [_image()], [_ann(SQUARE, image_id=2)])
    mine = tmp_path / "prepared" / "train2017" / "other.jpg"
    mine.parent.mkdir(parents=True)
    mine.write_text("the user's own file\n")
    expect_refused(_prepare(flowclas, tmp_path), "non-empty folder that flowclas did not create")
    (tmp_path / "prepared" / ".flowclas-coco").write_text("")  # as if an earlier run had made it, then the user added
    for _ in range(2):  # a second run replaces its own links
        outcome = _prepare(flowclas, tmp_path)
        assert outcome.code == 0 and not outcome.errors, outcome.stderr
        assert "kept 1 of 2 images" in outcome.stdout and "1 existing files kept" in outcome.stdout
    assert mine.read_text() == "the user's own file\n" and (mine.parent / "good.jpg").is_symlink()
    (mine.parent / "good.jpg").unlink()
    for _ in range(2):  # --copy, twice: the second run finds its own copy
        outcome = flowclas("prepare-coco", "--coco-root", "coco", "--output", "prepared", "--filter", "cityscapes",
                           "--min-side", "1", "--copy", outputs=["prepared"])
        assert outcome.code == 0 and "kept 1 of 2 images" in outcome.stdout, outcome.stdout
    assert mine.read_text() == "the user's own file\n" and not (mine.parent / "good.jpg").is_symlink()


def test_prepare_coco_refuses_output_that_is_a_file(tmp_path, flowclas):
    _coco(tmp_path / "coco", [], [])
    (tmp_path / "prepared").write_text("mine\n")
    outcome = flowclas("prepare-coco", "--coco-root", "coco", "--output", "prepared", "--filter", "cityscapes")
    expect_refused(outcome, "prepared")


def test_annotations_may_be_as_large_as_coco():
    from flowclas_ros.training.coco import MAX_ANNOTATION_BYTES

    assert MAX_ANNOTATION_BYTES > 450 * 2**20  # instances_train2017.json


# --- training data ----------------------------------------------------------------------------

TRAIN_BAD = {
    "bomb": claimed_png(100_000, 100_000),
    "bomb-warning": claimed_png(10_000, 10_000),
    "truncated": PNG[:100],
    "eps": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n",
}


def _train_set(root: Path, bad: bytes, count: int = 5) -> None:
    (root / "train" / "images").mkdir(parents=True)
    for i in range(count):
        (root / "train" / "images" / f"{i}.png").write_bytes(encoded(noise(20 + i)) if i != 2 else bad)


@pytest.mark.parametrize("case", sorted(TRAIN_BAD))
def test_training_set_replaces_bad_item_deterministically(case, tmp_path, warned):
    from flowclas_ros.training.datasets import build_dataset

    _train_set(tmp_path / "data", TRAIN_BAD[case])
    first = build_dataset("folder", tmp_path / "data", "train")
    names = [first[i][2] for i in range(len(first))]
    assert names == ["0", "1", "3", "3", "4"] and list(first.skipped) == [2]
    assert len(warned) == 1 and "2.png" in warned[0]
    resumed = build_dataset("folder", tmp_path / "data", "train")  # a fresh process after a restart
    assert [resumed[i][2] for i in (4, 2, 0, 3, 1)] == ["4", "3", "0", "3", "1"]


def test_auto_input_size_passes_over_bad_training_images(tmp_path):
    from flowclas_ros.training.config import adopt_input_size

    _train_set(tmp_path / "data", TRAIN_BAD["bomb"])
    recipe = {"data": {"dataset": "folder", "root": str(tmp_path / "data"), "auto_size": True}}
    adopt_input_size(recipe)
    assert recipe["model"]["encoder"]["input_size"] == [H, W]


def _outliers(root: Path, masks: list[np.ndarray]) -> None:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, mask in enumerate(masks):
        (root / "images" / f"o{i}.png").write_bytes(encoded(noise(30 + i)))
        (root / "masks" / f"o{i}.png").write_bytes(encoded(mask))


OBJECT_MASK = np.zeros((H, W), np.uint8)
OBJECT_MASK[5:15, 5:20] = 254
EMPTY_MASKS = {"all-background": np.zeros((H, W), np.uint8), "all-ignore": np.full((H, W), 255, np.uint8),
               "background-and-ignore": np.where(OBJECT_MASK, 255, 0).astype(np.uint8)}


@pytest.mark.parametrize("case", sorted(EMPTY_MASKS))
def test_outlier_mask_without_object_pixels_is_skipped(case, tmp_path, warned):
    from flowclas_ros.training.datasets import build_dataset

    _outliers(tmp_path / "out", [OBJECT_MASK, EMPTY_MASKS[case], OBJECT_MASK])
    outliers = build_dataset("folder", tmp_path / "out", "outliers")
    assert [outliers[i][2] for i in range(3)] == ["o0", "o2", "o2"]
    assert list(outliers.skipped) == [1] and "no pixel has label 254" in outliers.skipped[1]
    assert len(warned) == 1 and "o1.png" in warned[0]


def test_prepared_coco_mask_without_objects_is_skipped(tmp_path, warned):
    from flowclas_ros.training.datasets import build_dataset

    for name, mask in (("a", np.zeros((H, W), np.uint8)), ("b", OBJECT_MASK)):
        (tmp_path / "train2017").mkdir(exist_ok=True)
        (tmp_path / "ood_seg_train2017").mkdir(exist_ok=True)
        (tmp_path / "train2017" / f"{name}.jpg").write_bytes(JPEG)
        (tmp_path / "ood_seg_train2017" / f"{name}.png").write_bytes(encoded(mask))
    ds = build_dataset("coco", tmp_path, "outliers")
    assert ds[0][2] == "b" and list(ds.skipped) == [0] and len(warned) == 1


def test_training_runs_past_bad_inliers_and_outliers(tmp_path, flowclas):
    import yaml

    _train_set(tmp_path / "data", TRAIN_BAD["bomb"], count=6)
    _outliers(tmp_path / "outliers", [OBJECT_MASK, EMPTY_MASKS["all-background"], OBJECT_MASK])
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump({
        "model": {"encoder": {"name": "efficientnet_lite0", "layers": [2, 4], "weights": None, "input_size": [32, 32]},
                  "flow": {"steps": 2, "hidden_ratio": 0.5}, "projection_dim": 8},
        "optim": {"lr": 1e-3, "batch_size": 2, "precision": "fp32"},
        "run": {"val_every": 2, "checkpoint_every": 2, "bins": 50},
    }))
    argv = ["train", "--config", "tiny.yaml", "--output", "run", "--data-root", "data", "--outliers", "outliers",
            "--steps", "2"]
    (tmp_path / "run").mkdir()  # the harness compares the listing of tmp_path itself
    outcome = flowclas(*argv, outputs=["run"])
    assert outcome.code == 0 and "Traceback" not in outcome.stderr, outcome.stderr
    assert "2.png" in outcome.stderr and "o1.png" in outcome.stderr  # each skip logged
    assert (tmp_path / "run" / "model" / "config.json").is_file()


# --- fuzz: the image-file decoder -------------------------------------------------------------

SEEDS = [encoded(noise(40, 6, 5)), encoded(noise(41, 6, 5), "JPEG", quality=70), encoded(GREY16),
         encoded(PALETTE.resize((5, 4))), encoded(noise(42, 4, 4), "BMP"), encoded(noise(43, 4, 4), "TIFF"),
         encoded(noise(44, 4, 4), "WEBP"), oriented(noise(45, 3, 5), 6, "JPEG")]


def test_fuzz_image_decoder_gives_an_image_or_a_user_error(tmp_path_factory):
    """Mutated, truncated or replaced bytes of small PNG/JPEG/BMP/TIFF/WebP files: ``read_rgb``
    gives RGB or a one-line UserError, ``read_mask`` labels or a BadItem, never anything else."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from flowclas_ros.training.datasets import BadItem, read_mask

    folder = Path(tempfile.mkdtemp(dir=tmp_path_factory.getbasetemp()))
    edits = st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)), max_size=8)

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(seed=st.sampled_from(SEEDS), edits=edits, cut=st.integers(0, 4096) | st.none(),
           raw=st.binary(max_size=64) | st.none())
    def decode(seed: bytes, edits: list, cut: int | None, raw: bytes | None) -> None:
        data = bytearray(seed if raw is None else seed[:8] + raw)
        for position, value in edits:
            if data:
                data[position % len(data)] = value
        path = folder / "fuzz.png"
        path.write_bytes(bytes(data[:cut] if cut is not None else data))
        try:
            rgb = read_rgb(path)
            assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
        except UserError as exc:
            assert "\n" not in str(exc)
        try:
            labels = read_mask(path)
            assert labels.ndim == 2 and labels.dtype.kind in "ui"
        except BadItem as exc:
            assert "\n" not in str(exc)

    decode()
