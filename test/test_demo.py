"""`flowclas demo` end to end on the bundled demo model (a few frames)."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from flowclas_ros.commands.main import main
from flowclas_ros.demo import DEMO_MODEL
from flowclas_ros.model.bundle import load_bundle


def test_demo_model_is_a_trained_calibrated_bundle():
    net = load_bundle(DEMO_MODEL)
    config = net.config
    assert config.encoder.name == "efficientnet_lite0" and config.encoder.weights == "package"
    assert config.threshold_fpr == 0.05 and 0 < config.threshold < 1
    assert config.metrics["validation"]["ap"] > 50  # it learned the synthetic domain


def test_demo_writes_bag_metrics_and_montage(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--output", str(out), "--frames", "6", "--montage-frames", "2"]) == 0
    printed = capsys.readouterr().out
    assert str(out / "montage.png") in printed and "AP" in printed
    metrics = json.loads((out / "replay" / "metrics.json").read_text())
    assert metrics["num_images"] == 6 and 0 <= metrics["ap"] <= 100 and "component" in metrics
    montage = np.asarray(Image.open(out / "montage.png"))
    assert montage.ndim == 3 and montage.shape[0] > 100
    assert (out / "replay" / "camera_bag").is_dir() and (out / "camera_bag").is_dir()
