"""The flowclas command line: init a bundle, detect on a folder, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from skimage import data

from flowclas_ros.commands.main import main


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(data.chelsea()).save(folder / "chelsea.png")
    Image.fromarray(data.coffee()).save(folder / "coffee.jpg")
    (folder / "broken.png").write_bytes(b"not an image")
    return folder


def test_init_then_detect_on_a_folder(tmp_path, photos, capsys):
    bundle = tmp_path / "bundle"
    assert main(["init", "--output", str(bundle), "--set", "flow.steps=2", "--set", "encoder.input_size=[96,128]"]) == 0
    out = tmp_path / "out"
    assert main(["detect", "--model", str(bundle), "--input", str(photos), "--output", str(out)]) == 0
    assert "skipped" in capsys.readouterr().err
    for stem, image in (("chelsea", data.chelsea()), ("coffee", data.coffee())):
        score = np.load(out / f"{stem}_score.npy")
        assert score.shape == image.shape[:2] and 0 <= score.min() <= score.max() <= 1
        assert np.asarray(Image.open(out / f"{stem}_score.png")).shape == image.shape
        assert set(np.unique(np.asarray(Image.open(out / f"{stem}_mask.png")))) <= {0, 255}
        assert np.asarray(Image.open(out / f"{stem}_overlay.png")).shape == image.shape
    report = json.loads((out / "detections.json").read_text())
    assert set(report["images"]) == {"chelsea.png", "coffee.jpg"}
    assert report["skipped"] == [str(photos / "broken.png")]


@pytest.mark.parametrize(
    "argv,message",
    [
        (["detect", "--model", "/nonexistent", "--input", ".", "--output", "o"], "model bundle not found"),
        (["init", "--output", "o", "--set", "head=unknown"], "unknown head"),
        (["init", "--output", "o", "--set", "flow.steps=0"], "flow.steps"),
        (["init", "--output", "o", "--config", "/nonexistent.yaml"], "cannot read config"),
    ],
)
def test_errors_are_one_clear_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) != 0
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_overrides_accept_yaml_1_1_exponents():
    from flowclas_ros.model.config import ConfigError
    from flowclas_ros.training.config import load_train_config

    assert load_train_config("synthetic", ["optim.lr=5e-5"]).optim.lr == 5e-5
    with pytest.raises(ConfigError, match="optim.lr: expected a number"):
        load_train_config("synthetic", ["optim.lr=fast"])
