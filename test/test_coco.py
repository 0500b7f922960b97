"""COCO preparation from a tiny instances JSON: class and size filters, polygon and RLE masks."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flowclas_ros.commands import prepare_coco as prepare_coco_command
from flowclas_ros.errors import UserError
from flowclas_ros.training.coco import ALLO_EXTRA_CLASSES, CITYSCAPES_CLASSES, prepare_coco, rle_counts, rle_mask
from flowclas_ros.training.datasets import build_dataset

NAMES = CITYSCAPES_CLASSES + ALLO_EXTRA_CLASSES + ("dog", "kite")
CATEGORY = {name: 100 + i for i, name in enumerate(NAMES)}


def encode_counts(runs: list[int]) -> str:
    """COCO's compressed RLE string (test-side encoder: 5-bit groups, delta to the value two before)."""
    out = []
    for i, run in enumerate(runs):
        x = run - runs[i - 2] if i > 2 else run
        while True:
            group, x = x & 0x1F, x >> 5
            more = x != -1 if group & 0x10 else x != 0
            out.append(chr(group + (0x20 if more else 0) + 48))
            if not more:
                break
    return "".join(out)


def runs_of(mask: np.ndarray) -> list[int]:
    """Run lengths of a boolean mask in column-major order, starting with a run of zeros."""
    flat = mask.T.reshape(-1).astype(np.int8)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    return np.diff(np.concatenate([[0], edges])).tolist()


def test_rle_counts_hand_decoded():
    # '5' '3' '2' literal; 'N' = 30: value -2 (sign bit 0x10) added to the value two before (3)
    assert rle_counts("532N") == [5, 3, 2, 1]
    assert rle_counts("T3") == [100]  # 'T' = 36: 4 with a continuation bit, then 3 << 5
    mask = rle_mask({"size": [3, 4], "counts": [1, 2, 3, 6]}, 3, 4)
    np.testing.assert_array_equal(mask, [[0, 0, 1, 1], [1, 0, 1, 1], [1, 0, 1, 1]])
    with pytest.raises(ValueError, match="cover 11 pixels"):
        rle_mask({"size": [3, 4], "counts": "532N"}, 3, 4)
    with pytest.raises(ValueError, match="ends inside a value"):
        rle_counts("T")


def test_encoder_round_trip():
    mask = np.random.default_rng(0).random((37, 29)) < 0.3
    runs = runs_of(mask)
    assert rle_counts(encode_counts(runs)) == runs
    np.testing.assert_array_equal(rle_mask({"size": [37, 29], "counts": encode_counts(runs)}, 37, 29), mask)


def write_coco(root: Path) -> dict[str, np.ndarray]:
    """train2017 JPEGs and an instances JSON; returns the expected mask of each kept stem."""
    h, w = 480, 500
    expected_poly = np.zeros((h, w), bool)
    expected_poly[20:61, 10:41] = True  # polygon corners (10, 20)..(40, 60), edges included
    crowd = np.zeros((h, w), bool)
    crowd[100:150, 300:420] = True
    blob = np.zeros((h, w), bool)
    blob[400:470, 5:30] = True
    images = [
        ("000000000001.jpg", h, w),  # kept: polygon dog + uncompressed crowd RLE kite
        ("000000000002.jpg", 600, 600),  # dropped: contains a person
        ("000000000003.jpg", 479, 640),  # dropped: under 480 px on a side
        ("000000000004.jpg", 500, 500),  # dropped: no annotations
        ("000000000005.jpg", h, w),  # oven (compressed RLE): kept for Cityscapes, dropped for ALLO
        ("000000000006.jpg", h, w),  # listed but missing on disk
    ]
    anns = [
        (1, "dog", [[10, 20, 40, 20, 40, 60, 10, 60]], 0),
        (1, "kite", {"size": [h, w], "counts": runs_of(crowd)}, 1),
        (2, "person", [[1, 1, 50, 1, 50, 50]], 0),
        (2, "dog", [[100, 100, 200, 100, 200, 200]], 0),
        (3, "dog", [[1, 1, 50, 1, 50, 50]], 0),
        (5, "oven", {"size": [h, w], "counts": encode_counts(runs_of(blob))}, 0),
        (6, "dog", [[1, 1, 50, 1, 50, 50]], 0),
    ]
    data = {
        "images": [{"id": i + 1, "file_name": f, "height": hh, "width": ww} for i, (f, hh, ww) in enumerate(images)],
        "annotations": [
            {"id": k, "image_id": img, "category_id": CATEGORY[c], "segmentation": seg, "iscrowd": crowd_flag}
            for k, (img, c, seg, crowd_flag) in enumerate(anns)
        ],
        "categories": [{"id": i, "name": n} for n, i in CATEGORY.items()],
    }
    (root / "annotations").mkdir(parents=True)
    (root / "annotations/instances_train2017.json").write_text(json.dumps(data))
    (root / "train2017").mkdir()
    rng = np.random.default_rng(0)
    for name, hh, ww in images[:5]:
        Image.fromarray(rng.integers(0, 256, (hh, ww, 3), dtype=np.uint8)).save(root / "train2017" / name, quality=60)
    return {"000000000001": expected_poly | crowd, "000000000005": blob}


def test_prepare_coco_cityscapes_filter(tmp_path, capsys, warned):
    expected = write_coco(tmp_path / "coco")
    out = tmp_path / "prepared"
    parser = argparse.ArgumentParser()
    prepare_coco_command.add_arguments(parser)
    args = parser.parse_args(["--coco-root", str(tmp_path / "coco"), "--output", str(out), "--filter", "cityscapes"])
    assert prepare_coco_command.run(args) == 0
    printed = capsys.readouterr()
    assert "kept 2 of 6 images" in printed.out
    assert "1 filtered classes" in printed.out and "1 smaller than 480 px" in printed.out
    assert "1 no objects" in printed.out and "1 missing image file" in printed.out
    assert len(warned) == 1 and "000000000006.jpg" in warned[0]
    assert sorted(p.name for p in (out / "train2017").iterdir()) == ["000000000001.jpg", "000000000005.jpg"]
    assert (out / "train2017/000000000001.jpg").is_symlink()
    for stem, objects in expected.items():
        mask = np.asarray(Image.open(out / f"ood_seg_train2017/{stem}.png"))
        assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 254}
        np.testing.assert_array_equal(mask == 254, objects)

    ds = build_dataset("coco", out, "outliers")
    assert [item[2] for item in ds] == ["000000000001", "000000000005"]
    image, labels, _ = ds[0]
    assert image.shape == (480, 500, 3)
    np.testing.assert_array_equal(labels == 254, expected["000000000001"])


def test_prepare_coco_allo_filter_copies(tmp_path):
    write_coco(tmp_path / "coco")
    out = tmp_path / "prepared"
    kept, dropped = prepare_coco(tmp_path / "coco", out, "allo", copy=True)
    assert kept == 1 and dropped["filtered classes"] == 2
    assert [p.name for p in (out / "ood_seg_train2017").iterdir()] == ["000000000001.png"]
    copied = out / "train2017/000000000001.jpg"
    assert not copied.is_symlink() and copied.read_bytes() == (tmp_path / "coco/train2017/000000000001.jpg").read_bytes()


def test_prepare_coco_bad_inputs(tmp_path):
    with pytest.raises(UserError, match=f"missing folder {tmp_path}/train2017"):
        prepare_coco(tmp_path, tmp_path / "out", "cityscapes")
    (tmp_path / "train2017").mkdir()
    with pytest.raises(UserError, match="missing annotations .*instances_train2017.json"):
        prepare_coco(tmp_path, tmp_path / "out", "cityscapes")
    (tmp_path / "annotations").mkdir()
    path = tmp_path / "annotations/instances_train2017.json"
    path.write_text('{"images": []}')
    with pytest.raises(UserError, match="not a COCO instances file"):
        prepare_coco(tmp_path, tmp_path / "out", "cityscapes")
    path.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "dog"}]}))
    with pytest.raises(UserError, match="no categories named person, bicycle"):
        prepare_coco(tmp_path, tmp_path / "out", "cityscapes")
    categories = [{"id": i, "name": n} for n, i in CATEGORY.items()]
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "../x.jpg", "height": 500, "width": 500}],
                                "annotations": [], "categories": categories}))
    assert prepare_coco(tmp_path, tmp_path / "out", "cityscapes") == (0, {"malformed image entries": 1})
