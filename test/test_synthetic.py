"""Synthetic data: deterministic, correct layout and labels, objects only from real photos."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flowclas_ros import synthetic
from flowclas_ros.commands.main import main

SIZE = (48, 64)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


@pytest.mark.parametrize("domain", synthetic.DOMAINS)
def test_same_seed_same_bytes_other_seed_differs(tmp_path, domain):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        synthetic.write_dataset(
            tmp_path / name, domain, train=2, test=2, outliers=2, size=SIZE, seed=seed, progress=False
        )
    a, b, c = (_files(tmp_path / n) for n in "abc")
    assert len(a) == 10
    assert a == b
    assert all(a[k] != c[k] for k in a)


def test_item_does_not_depend_on_how_many_are_written(tmp_path):
    synthetic.write_dataset(tmp_path / "few", "road", train=1, test=1, outliers=1, size=SIZE, progress=False)
    synthetic.write_dataset(tmp_path / "more", "road", train=3, test=2, outliers=2, size=SIZE, progress=False)
    few, more = _files(tmp_path / "few"), _files(tmp_path / "more")
    assert all(few[k] == more[k] for k in few)


@pytest.mark.parametrize("domain", synthetic.DOMAINS)
def test_layout_and_label_values(tmp_path, domain):
    counts = synthetic.write_dataset(tmp_path, domain, train=3, test=4, outliers=3, size=SIZE, progress=False)
    assert counts["train/images"] == 3 and counts["test/masks"] == 4
    train = sorted((tmp_path / "train/images").glob("*.png"))
    assert len(train) == 3 and not (tmp_path / "train/masks").exists()
    for p in train:
        image = np.asarray(Image.open(p))
        assert image.shape == (*SIZE, 3) and image.dtype == np.uint8
    images, masks = sorted((tmp_path / "test/images").glob("*.png")), sorted((tmp_path / "test/masks").glob("*.png"))
    assert [p.name for p in images] == [p.name for p in masks]
    for p in masks:
        labels = np.asarray(Image.open(p))
        assert labels.shape == SIZE and labels.dtype == np.uint8
        assert set(np.unique(labels)) <= {0, 1, 255}
        assert (labels == 0).any()
    assert any((np.asarray(Image.open(p)) == 1).any() for p in masks)
    for p in sorted((tmp_path / "outliers/images").glob("*.png")):
        mask = np.asarray(Image.open(tmp_path / "outliers/masks" / p.name))
        assert mask.shape == np.asarray(Image.open(p)).shape[:2]
        assert set(np.unique(mask)) == {0, 254}


@pytest.mark.parametrize("domain", synthetic.DOMAINS)
def test_labels_match_where_object_pixels_are(domain):
    for i in range(4):
        sample = synthetic.anomaly_sample(domain, np.random.default_rng(i), (96, 128))
        changed = (sample.image != sample.inlier).any(axis=2)
        assert (sample.labels == 1).sum() > 50
        # every pixel labelled inlier is the untouched inlier image ...
        assert not changed[sample.labels == 0].any()
        # ... and object pixels are photo pixels, different from the scene under them
        assert changed[sample.labels == 1].mean() > 0.8
        # void is only the thin anti-aliased rim of the objects
        assert (sample.labels == 255).sum() < (sample.labels == 1).sum()


def test_sources_are_bundled_photos_split_and_filtered(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("scikit-image tried to download a picture")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    synthetic.objects._picture.cache_clear()
    for source in synthetic.SOURCES:
        picture = synthetic.objects._picture(source.name)
        assert picture.ndim == 3 and picture.shape[2] == 3 and picture.std() > 5
    for domain in synthetic.DOMAINS:
        train, test = synthetic.sources(domain, "train"), synthetic.sources(domain, "test")
        assert train and test and not {s.name for s in train} & {s.name for s in test}
        assert all(domain not in s.exclude for s in train + test)
    assert "grass" not in {s.name for s in synthetic.sources("road", "train")}
    assert "hubble_deep_field" not in {s.name for s in synthetic.sources("orbital", "test")}


@pytest.mark.parametrize("source", synthetic.SOURCES, ids=lambda s: s.name)
def test_cut_objects_have_a_real_irregular_mask(source):
    image, mask = synthetic.cut_object(source, np.random.default_rng(0), longest=96)
    assert image.shape[:2] == mask.shape and max(mask.shape) == 96
    assert 0.15 < mask.mean() < 0.97  # an object, not the whole rectangle


@pytest.mark.parametrize("domain", synthetic.DOMAINS)
def test_sequence_is_coherent_and_labelled(domain):
    frames = list(synthetic.sequence(domain, 40, SIZE, seed=2))
    assert len(frames) == 40
    assert frames[0][0].shape == (*SIZE, 3) and frames[0][1].shape == SIZE
    assert all(set(np.unique(gt)) <= {0, 1, 255} for _, gt in frames)
    assert any((gt == 1).any() for _, gt in frames)
    step = np.mean([np.abs(a[0].astype(int) - b[0].astype(int)).mean() for a, b in zip(frames, frames[1:])])
    other = synthetic.inlier_image(domain, np.random.default_rng(99), SIZE)
    assert step < 0.5 * np.abs(frames[0][0].astype(int) - other.astype(int)).mean()
    again = next(synthetic.sequence(domain, 40, SIZE, seed=2))
    assert np.array_equal(again[0], frames[0][0]) and np.array_equal(again[1], frames[0][1])


def test_command_end_to_end(tmp_path, capsys):
    from rosbags.highlevel import AnyReader

    out, bag = tmp_path / "data", tmp_path / "camera_bag"
    args = [
        "synth",
        "--output",
        str(out),
        "--domain",
        "road",
        "--train",
        "2",
        "--test",
        "2",
        "--outliers",
        "2",
        "--height",
        "48",
        "--width",
        "64",
        "--seed",
        "1",
        "--bag",
        str(bag),
        "--bag-frames",
        "3",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and str(bag) in printed
    preview = np.asarray(Image.open(out / "preview.png"))
    assert preview.shape == (3 * 48, 4 * 64, 3)  # train, test (2 images: one row), outliers
    assert (out / "synth.json").is_file()
    with AnyReader([bag]) as reader:
        topics = {c.topic: c.msgcount for c in reader.connections}
        assert topics == {"/camera/image_raw": 3, "/camera/anomaly_gt": 3}
        msg = next(
            reader.deserialize(raw, c.msgtype) for c, _, raw in reader.messages() if c.topic == "/camera/image_raw"
        )
        assert (msg.height, msg.width, msg.encoding) == (48, 64, "rgb8")


@pytest.mark.parametrize(
    "bad", [["--height", "8"], ["--train", "-1"], ["--seed", "-2"], ["--bag", "x", "--bag-frames", "0"],
            ["--bag", "x", "--bag-rate", "1e-300"], ["--bag", "x", "--bag-rate", "1e-9"],
            ["--bag", "x", "--bag-rate", "inf"], ["--bag", "o/bag"]],
    ids=["height", "train", "seed", "frames", "tiny-rate", "int32-overflow-rate", "inf-rate", "bag-inside-output"],
)
def test_command_rejects_bad_input(tmp_path, capsys, bad):
    bad = [str(tmp_path / a) if a in ("x", "o/bag") else a for a in bad]
    assert main(["synth", "--output", str(tmp_path / "o"), *bad]) == 1
    err = capsys.readouterr().err
    assert "error" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists() and not (tmp_path / "x").exists()


@pytest.mark.parametrize("name, storage, suffix", [("cam.mcap", None, ".mcap"), ("cam", None, ".db3"),
                                                   ("cam.mcap", "sqlite3", ".db3")])
def test_bag_storage_follows_the_bag_name_unless_given(tmp_path, name, storage, suffix):
    args = ["synth", "--output", str(tmp_path / "d"), "--train", "1", "--test", "1", "--outliers", "1",
            "--height", "32", "--width", "32", "--bag", str(tmp_path / name), "--bag-frames", "1"]
    assert main(args + (["--bag-storage", storage] if storage else [])) == 0
    assert [p.suffix for p in (tmp_path / name).iterdir() if p.name != "metadata.yaml"] == [suffix]
