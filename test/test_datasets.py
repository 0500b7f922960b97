"""Dataset loaders on tiny fixtures written in each real layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flowclas_ros.errors import UserError
from flowclas_ros.training.datasets import DATASETS, build_dataset, random_crop

H, W = 6, 8


def rgb(seed: int, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def save(path: Path, array: np.ndarray, **kwargs) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return array


def raw_mask(values: list[int], h: int = H, w: int = W) -> np.ndarray:
    """A mask whose rows cycle through ``values`` (every value present)."""
    return np.array(values, np.uint8)[np.arange(h) % len(values)][:, None].repeat(w, axis=1)


def check_item(item, image: np.ndarray, labels: np.ndarray, name: str, exact: bool = True) -> None:
    """An item's image (pixel-exact unless it went through JPEG), labels and name."""
    got_image, got_labels, got_name = item
    assert got_image.dtype == np.uint8 and got_image.shape == image.shape
    if exact:
        np.testing.assert_array_equal(got_image, image)
    assert got_labels.dtype == np.uint8
    np.testing.assert_array_equal(got_labels, labels)
    assert got_name == name


# --- folder ----------------------------------------------------------------------------------


def test_folder_train_masks_optional(tmp_path):
    a = save(tmp_path / "train/images/a.png", rgb(0))
    b = save(tmp_path / "train/images/b.jpg", rgb(1))
    save(tmp_path / "train/images/notes.txt.bak", np.zeros((2, 2), np.uint8), format="PNG")  # not an image suffix
    save(tmp_path / "train/masks/a.png", raw_mask([0, 3, 255]))
    ds = build_dataset("folder", tmp_path, "train")
    assert len(ds) == 2
    check_item(ds[0], a, raw_mask([0, 0, 255]), "a")
    check_item(ds[1], b, np.zeros((H, W), np.uint8), "b", exact=False)  # no mask: all inlier
    assert len(build_dataset("folder", tmp_path, "train", max_images=1)) == 1


def test_folder_test_and_outliers(tmp_path):
    image = save(tmp_path / "test/images/x.png", rgb(2))
    save(tmp_path / "test/masks/x.png", raw_mask([0, 1, 255]))
    check_item(build_dataset("folder", tmp_path, "test")[0], image, raw_mask([0, 1, 255]), "x")

    out = tmp_path / "outliers"
    obj = save(out / "images/o.png", rgb(3))
    save(out / "masks/o.png", raw_mask([0, 254, 255]))
    check_item(build_dataset("folder", out, "outliers")[0], obj, raw_mask([0, 254, 255]), "o")
    ignored = build_dataset("folder", out, "outliers", ignore_background=True)[0]
    check_item(ignored, obj, raw_mask([255, 254, 255]), "o")


def test_folder_missing_parts_are_named(tmp_path):
    with pytest.raises(UserError, match=f"missing folder {tmp_path}/train/images"):
        build_dataset("folder", tmp_path, "train")
    (tmp_path / "train/images").mkdir(parents=True)
    with pytest.raises(UserError, match=r"no images in .*train/images \(expected .*\*\{\.png"):
        build_dataset("folder", tmp_path, "train")
    save(tmp_path / "test/images/x.png", rgb(0))
    save(tmp_path / "test/images/y.png", rgb(1))
    save(tmp_path / "test/masks/y.png", raw_mask([0]))
    with pytest.raises(UserError, match=r"1 of 2 images have no mask, e.g. .*test/images/x.png -> .*test/masks/x.png"):
        build_dataset("folder", tmp_path, "test")
    with pytest.raises(UserError, match="unknown split 'val'"):
        build_dataset("folder", tmp_path, "val")
    with pytest.raises(UserError, match="does not exist"):
        build_dataset("folder", tmp_path / "nowhere", "train")


def test_bad_names_and_options(tmp_path):
    assert set(DATASETS) >= {"folder", "allo", "cityscapes", "coco", "rosbag", "smiyc_obstacle"}
    with pytest.raises(UserError, match="unknown dataset 'imagenet'"):
        build_dataset("imagenet", tmp_path, "train")
    with pytest.raises(UserError, match=r"unknown option\(s\) image_topic \(accepted: max_images"):
        build_dataset("cityscapes", tmp_path, "train", image_topic="/x")
    with pytest.raises(UserError, match="max_images must be a positive integer"):
        build_dataset("folder", tmp_path, "train", max_images=0)


def test_corrupt_items_are_skipped_and_reported_once(tmp_path, warned):
    a = save(tmp_path / "test/images/a.png", rgb(0))
    (tmp_path / "test/images/b.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")  # corrupt image
    c = save(tmp_path / "test/images/c.png", rgb(2))
    save(tmp_path / "test/images/d.png", rgb(3))
    for stem in "abc":
        save(tmp_path / f"test/masks/{stem}.png", raw_mask([0, 1]))
    save(tmp_path / "test/masks/d.png", raw_mask([0, 7]))  # value outside 0/1/255
    ds = build_dataset("folder", tmp_path, "test")
    item = ds[1]
    check_item(item, c, raw_mask([0, 1]), "c")  # the next readable item
    assert len(warned) == 1 and "b.png" in warned[0]
    check_item(ds[3], a, raw_mask([0, 1]), "a")  # wraps around
    assert len(warned) == 2 and "d.png: mask values [7] are not in this layout's [0, 1, 255]" in warned[1]
    assert [item[2] for item in ds] == ["a", "c", "c", "a"]
    assert len(warned) == 2  # reported once: no second warning
    assert sorted(ds.skipped) == [1, 3] and "cannot read image" in ds.skipped[1]
    np.testing.assert_array_equal(ds[0][0], a)


def test_mask_size_mismatch_is_skipped(tmp_path, warned):
    save(tmp_path / "test/images/a.png", rgb(0))
    save(tmp_path / "test/masks/a.png", raw_mask([0], h=H + 1))
    ds = build_dataset("folder", tmp_path, "test")
    with pytest.raises(UserError, match="no usable items"):
        ds[0]
    assert len(warned) == 1 and "mask is" in warned[0]


# --- named benchmark and training sets ---------------------------------------------------------


def test_allo(tmp_path):
    train = tmp_path / "train_v3/site1/normal/run2/images/0001.png"
    image = save(train, rgb(0))
    save(tmp_path / "train_v3/site1/normal/run2/masks/0001.png", raw_mask([0, 7, 8, 255]))
    save(tmp_path / "train_v3/site1/anomalous/run3/images/0002.png", rgb(1))  # not a normal frame: not training
    ds = build_dataset("allo", tmp_path, "train")
    assert len(ds) == 1
    check_item(ds[0], image, raw_mask([0, 0, 255, 255]), "site1_normal_run2_images_0001")

    anomalous = save(tmp_path / "test_v3/s/anomalous/images/0003.png", rgb(2))
    save(tmp_path / "test_v3/s/anomalous/masks/0003.png", raw_mask([3, 8, 255]))
    normal = save(tmp_path / "test_v3/s/normal/images/0004.png", rgb(3))  # no mask: all inlier
    ds = build_dataset("allo", tmp_path, "test")
    check_item(ds[0], anomalous, raw_mask([0, 1, 255]), "s_anomalous_images_0003")
    check_item(ds[1], normal, np.zeros((H, W), np.uint8), "s_normal_images_0004")

    (tmp_path / "test_v3/s/anomalous/masks/0003.png").unlink()
    with pytest.raises(UserError, match=r"allo: 1 of 2 images have no mask, e.g. .*anomalous/images/0003.png -> .*anomalous/masks/0003.png"):
        build_dataset("allo", tmp_path, "test")
    with pytest.raises(UserError, match=r"missing folder .*/site1/train_v3 \(expected .*/site1/train_v3/\*\*/normal/"):
        build_dataset("allo", tmp_path / "train_v3/site1", "train")  # a root without train_v3
    (tmp_path / "train_v3/site1/normal").rename(tmp_path / "train_v3/site1/other")
    with pytest.raises(UserError, match=r"no images matching .*train_v3/\*\*/normal/\*\*/images/\*.png"):
        build_dataset("allo", tmp_path, "train")

def test_cityscapes(tmp_path):
    image = save(tmp_path / "leftImg8bit/val/bonn/bonn_000001_000019_leftImg8bit.png", rgb(0))
    label_ids = raw_mask([0, 7, 26, 33, 34, 6, 255])  # unlabeled, road, car, bicycle, unknown, ground, license plate
    save(tmp_path / "gtFine/val/bonn/bonn_000001_000019_gtFine_labelIds.png", label_ids)
    ds = build_dataset("cityscapes", tmp_path, "val")
    check_item(ds[0], image, raw_mask([255, 0, 0, 0, 255, 255, 255]), "bonn_000001_000019")
    # semantic labels for the segmentation head: train ids (road 0, car 13, bicycle 18)
    semantic = build_dataset("cityscapes", tmp_path, "val", semantic=True)
    check_item(semantic[0], image, raw_mask([255, 0, 13, 18, 255, 255, 255]), "bonn_000001_000019")
    with pytest.raises(UserError, match=f"cityscapes: missing folder {tmp_path}/leftImg8bit/train"):
        build_dataset("cityscapes", tmp_path, "train")
    (tmp_path / "gtFine/val/bonn/bonn_000001_000019_gtFine_labelIds.png").unlink()
    with pytest.raises(UserError, match="bonn_000001_000019_gtFine_labelIds.png"):
        build_dataset("cityscapes", tmp_path, "val")


def test_coco_outliers(tmp_path):
    image = save(tmp_path / "train2017/000000000009.jpg", rgb(0))
    save(tmp_path / "train2017/000000000025.jpg", rgb(1))  # filtered out: no mask, not in the set
    save(tmp_path / "ood_seg_train2017/000000000009.png", raw_mask([0, 254]))
    ds = build_dataset("coco", tmp_path, "outliers")
    assert len(ds) == 1
    check_item(ds[0], image, raw_mask([0, 254]), "000000000009", exact=False)
    background_ignored = build_dataset("coco", tmp_path, "outliers", ignore_background=True)[0]
    check_item(background_ignored, image, raw_mask([255, 254]), "000000000009", exact=False)
    save(tmp_path / "ood_seg_train2017/000000000030.png", raw_mask([0, 254]))
    with pytest.raises(UserError, match=r"1 of 2 masks have no image, e.g. .*000000000030.png -> .*train2017/000000000030.jpg"):
        build_dataset("coco", tmp_path, "outliers")
    with pytest.raises(UserError, match="unknown split 'train'"):
        build_dataset("coco", tmp_path, "train")


def test_fishyscapes_laf(tmp_path):
    image = save(tmp_path / "images/0000_04_Maurener_Weg_8_000000_000030.png", rgb(0))
    save(tmp_path / "labels/0000_04_Maurener_Weg_8_000000_000030.png", raw_mask([0, 1, 255]))
    check_item(build_dataset("fishyscapes_laf", tmp_path, "test")[0], image, raw_mask([0, 1, 255]), "0000_04_Maurener_Weg_8_000000_000030")
    with pytest.raises(UserError, match=f"fishyscapes_laf: missing folder {tmp_path}/labels/images"):
        build_dataset("fishyscapes_laf", tmp_path / "labels", "test")


def test_road_anomaly(tmp_path):
    image = save(tmp_path / "frames/animals01_calves.jpg", rgb(0))
    save(tmp_path / "frames/animals01_calves.labels/labels_semantic.png", raw_mask([0, 2, 255]))
    check_item(build_dataset("road_anomaly", tmp_path, "test")[0], image, raw_mask([0, 1, 255]), "animals01_calves", exact=False)


@pytest.mark.parametrize("name, track, suffix", [("smiyc_anomaly", "dataset_AnomalyTrack", "jpg"), ("smiyc_obstacle", "dataset_ObstacleTrack", "webp")])
def test_smiyc(tmp_path, name, track, suffix):
    base = tmp_path / track
    image = save(base / f"images/validation0001.{suffix}", rgb(0), **({"lossless": True} if suffix == "webp" else {}))
    save(base / f"images/test0001.{suffix}", rgb(1))  # unlabelled test frame: not part of the set
    save(base / "labels_masks/validation0001_labels_semantic.png", raw_mask([0, 1, 255]))
    for root in (tmp_path, base):  # the parent folder or the track folder itself
        ds = build_dataset(name, root, "test")
        assert len(ds) == 1
        check_item(ds[0], image, raw_mask([0, 1, 255]), "validation0001", exact=suffix == "webp")


# --- random_crop --------------------------------------------------------------------------------


def test_random_crop_crops_inside():
    image = np.arange(10 * 12 * 3, dtype=np.uint32).reshape(10, 12, 3).astype(np.uint8)
    labels = (np.arange(10 * 12).reshape(10, 12) % 250).astype(np.uint8)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(20):
        crop, crop_labels = random_crop(image, labels, (4, 5), rng)
        assert crop.shape == (4, 5, 3) and crop_labels.shape == (4, 5)
        y, x = divmod(int(np.flatnonzero(labels == crop_labels[0, 0])[0]), 12)
        np.testing.assert_array_equal(crop_labels, labels[y : y + 4, x : x + 5])
        np.testing.assert_array_equal(crop, image[y : y + 4, x : x + 5])
        seen.add((y, x))
    assert len(seen) > 5  # random positions


def test_random_crop_pads_small_sides():
    image = np.full((3, 20, 3), 9, np.uint8)
    labels = np.full((3, 20), 1, np.uint8)
    crop, crop_labels = random_crop(image, labels, (8, 6), np.random.default_rng(1))
    assert crop.shape == (8, 6, 3) and crop_labels.shape == (8, 6)
    real = crop_labels == 1
    assert real.sum() == 3 * 6 and (crop[real] == 9).all()  # all 3 rows of the image are inside
    assert (crop_labels[~real] == 255).all() and (crop[~real] == 0).all()
    with pytest.raises(ValueError, match="differ"):
        random_crop(image, labels[:2], (2, 2), np.random.default_rng(0))


# --- rosbag ----------------------------------------------------------------------------------------


def bag_frames(count: int = 4) -> list[tuple[np.ndarray, np.ndarray | None]]:
    return [(rgb(10 + i), raw_mask([0, 1, 255][: 1 + i % 3])) for i in range(count)]


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_rosbag_frames_and_masks(tmp_path, storage):
    from flowclas_ros.synthetic.camera_bag import write_camera_bag

    frames = bag_frames()
    frames[2] = (frames[2][0], None)  # this frame has no mask
    bag = write_camera_bag(tmp_path / "bag", frames, storage=storage)
    with pytest.raises(UserError, match=r"1 of 4 frames on /camera/image_raw have no mask on /camera/anomaly_gt .* stamp 1700000000\.200000000"):
        build_dataset("rosbag", bag, "test")

    ds = build_dataset("rosbag", bag, "train", max_images=3)
    assert len(ds) == 3
    for i in (2, 0, 1):  # random access
        image, labels, name = ds[i]
        np.testing.assert_array_equal(image, frames[i][0])
        want = np.zeros((H, W), np.uint8) if frames[i][1] is None else np.where(frames[i][1] == 0, 0, 255)
        np.testing.assert_array_equal(labels, want)  # training: anomaly -> ignore, no mask -> inlier
        assert name == f"{i:06d}_1700000000.{i * 100_000_000:09d}"


def test_rosbag_test_split_compressed_and_pickled(tmp_path):
    import pickle

    from flowclas_ros.synthetic.camera_bag import write_camera_bag

    ramp = np.linspace(0, 120, W, dtype=np.uint8)[None, :, None]
    frames = [(np.full((H, W, 3), (40 * i, 100, 120 - 40 * i), np.uint8) + ramp, gt) for i, (_, gt) in enumerate(bag_frames(3))]
    bag = write_camera_bag(tmp_path / "bag", frames, image_topic="/cam/compressed", mask_topic="/cam/gt", storage="mcap", compressed=True)
    ds = build_dataset("rosbag", bag, "test", image_topic="/cam/compressed", mask_topic="/cam/gt")
    assert ds[1][0].shape == (H, W, 3)
    copy = pickle.loads(pickle.dumps(ds))  # what a spawned DataLoader worker gets
    for i, (image, gt) in enumerate(frames):
        got_image, got_labels, _ = copy[i]
        np.testing.assert_array_equal(got_labels, gt)
        assert np.abs(got_image.astype(int) - image).mean() < 6  # JPEG is lossy
    ds.close()
    with pytest.raises(UserError, match=r"image_topic /camera/image_raw is not in the bag \(topics: /cam/compressed \(sensor_msgs/msg/CompressedImage\), /cam/gt"):
        build_dataset("rosbag", bag, "test")
    with pytest.raises(UserError, match="mask_topic /nope is not in the bag"):
        build_dataset("rosbag", bag, "test", image_topic="/cam/compressed", mask_topic="/nope")


def test_rosbag_corrupt_message_is_skipped(tmp_path, warned):
    from flowclas_ros.bagio import IMAGE, BagWriter, ns_to_stamp

    with BagWriter(tmp_path / "bag", "sqlite3") as bag:
        types = bag.store.types
        conn = bag.add("/camera/image_raw", IMAGE)
        for i in range(3):
            header = types["std_msgs/msg/Header"](stamp=ns_to_stamp(bag.store, 10 + i), frame_id="camera")
            data = rgb(i).reshape(-1)[: (None if i != 1 else 10)]  # frame 1: data far too short
            bag.write(conn, 10 + i, types[IMAGE](header, H, W, "rgb8", 0, W * 3, data))
    ds = build_dataset("rosbag", tmp_path / "bag", "train", mask_topic=None)
    image, _, name = ds[1]
    assert len(warned) == 1 and "frame 000001_0.000000011: data holds 10 bytes" in warned[0]
    assert name.startswith("000002") and np.array_equal(image, rgb(2))
    assert list(ds.skipped) == [1]
