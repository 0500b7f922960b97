"""``flowclas eval`` on a tiny folder dataset with a tiny bundle, and ``evaluate`` itself."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from PIL import Image

from flowclas_ros.commands import eval as evaluate_command
from flowclas_ros.errors import UserError
from flowclas_ros.metrics import BinnedMetrics, exact_metrics
from flowclas_ros.model import save_bundle
from flowclas_ros.runtime import Detector
from flowclas_ros.training.evaluate import evaluate

H, W = 48, 64


def frames(count: int = 4, seed: int = 0):
    """Noisy grey scenes with a bright square anomaly (labels 1), a void strip (255)."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        image = rng.integers(60, 90, size=(H, W, 3), dtype=np.uint8)
        labels = np.zeros((H, W), np.uint8)
        top, left = 8 + 4 * i, 10 + 6 * i
        image[top : top + 14, left : left + 14] = rng.integers(200, 255, size=(14, 14, 3), dtype=np.uint8)
        labels[top : top + 14, left : left + 14] = 1
        labels[-3:] = 255
        yield image, labels, f"city/frame {i}"


@pytest.fixture
def bundle(tmp_path, small_net):
    return save_bundle(small_net, tmp_path / "bundle")


@pytest.fixture
def folder_root(tmp_path):
    root = tmp_path / "data"
    (root / "test" / "images").mkdir(parents=True)
    (root / "test" / "masks").mkdir(parents=True)
    for i, (image, labels, _) in enumerate(frames()):
        Image.fromarray(image).save(root / "test" / "images" / f"f{i}.png")
        Image.fromarray(labels).save(root / "test" / "masks" / f"f{i}.png")
    return root


def run_eval(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    evaluate_command.add_arguments(parser)
    return evaluate_command.run(parser.parse_args(list(argv)))


def test_eval_command_writes_metrics_curves_and_overlays(tmp_path, bundle, folder_root, capsys):
    out = tmp_path / "eval"
    code = run_eval("--model", str(bundle), "--dataset", "folder", "--root", str(folder_root),
                    "--output", str(out), "--num-overlays", "2", "--component", "obstacle", "--bins", "500")
    assert code == 0
    data = json.loads((out / "metrics.json").read_text())
    for key in ("ap", "auprc_trapz", "fpr95", "auroc"):
        assert 0.0 <= data[key] <= 100.0
    assert data["num_images"] == 4 and data["num_pixels"] == 4 * (H - 3) * W
    assert data["method"] == "exact" and data["dataset"] == "folder"
    assert set(data["component"]) >= {"f1_mean", "siou_gt", "ppv", "track"}
    assert data["component"]["num_gt_components"] == 4
    # the percentages are the exact metrics of the detector's own score maps
    detector = Detector.from_bundle(bundle)
    scores = np.stack([detector.score(image) for image, _, _ in frames()])
    labels = np.stack([labels for _, labels, _ in frames()])
    assert data["ap"] == pytest.approx(100 * exact_metrics(scores, labels)["ap"])
    for name in ("pr_curve.png", "roc_curve.png", "score_histogram.png"):
        with Image.open(out / name) as img:
            assert img.format == "PNG"
    overlays = sorted(p.name for p in (out / "overlays").iterdir())
    assert overlays == ["00_f0.png", "01_f1.png"]
    assert not [p for p in out.iterdir() if p.name.startswith(".flowclas-eval-")]  # cache removed
    assert str(out) in capsys.readouterr().out


def test_evaluate_binned_beyond_the_pixel_limit_and_skips_substitutes(small_net):
    class Flaky(list):
        """A sequence that, like training.datasets, hands over the next item for a bad one."""

        skipped = {1: "unreadable"}

        def __getitem__(self, index):
            return super().__getitem__(index + 1 if index == 1 else index)

    items = Flaky(frames())
    detector = Detector(small_net)
    binned = evaluate(detector, items, exact_max_pixels=100, bins=2000, progress=False)
    assert binned["method"] == "binned" and binned["num_images"] == 3
    exact = evaluate(detector, items, progress=False)
    assert exact["method"] == "exact" and exact["num_pixels"] == binned["num_pixels"] == 3 * (H - 3) * W
    reference = BinnedMetrics(2000)
    for i in (0, 2, 3):
        reference.update(detector.score(items[i][0]), items[i][1])
    assert binned["ap"] == reference.compute()["ap"]
    assert abs(binned["ap"] - exact["ap"]) < 0.01


def test_eval_command_rejects_bad_input(tmp_path, bundle, folder_root):
    with pytest.raises(SystemExit):  # --bins is range-checked by argparse
        run_eval("--model", str(bundle), "--dataset", "folder", "--root", str(folder_root),
                 "--output", str(tmp_path / "o"), "--bins", "1")
    with pytest.raises(UserError, match="unknown dataset"):
        run_eval("--model", str(bundle), "--dataset", "nope", "--root", str(folder_root), "--output", str(tmp_path / "o"))
    with pytest.raises(UserError, match="missing folder|does not exist"):
        run_eval("--model", str(bundle), "--dataset", "folder", "--root", str(tmp_path), "--output", str(tmp_path / "o"))


def test_eval_on_a_camera_bag_with_a_mask_topic(tmp_path, bundle):
    from flowclas_ros.synthetic.camera_bag import write_camera_bag

    bag = write_camera_bag(tmp_path / "cam", ((image, labels) for image, labels, _ in frames()),
                           "/front/image", "/front/gt", storage="mcap")
    assert run_eval("--model", str(bundle), "--dataset", "rosbag", "--root", str(bag), "--output",
                    str(tmp_path / "out"), "--image-topic", "/front/image", "--gt-topic", "/front/gt") == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["num_images"] == 4 and metrics["dataset"] == "rosbag"


@pytest.mark.parametrize("dataset, given, used", [("cityscapes", None, "val"), ("folder", None, "test"),
                                                  ("allo", "train", "train")])
def test_eval_split_defaults_to_a_labelled_one(monkeypatch, capsys, dataset, given, used):
    import flowclas_ros.training.datasets as datasets
    from flowclas_ros.commands.main import main

    seen = []

    def build(name, root, split, **options):
        seen.append(split)
        raise UserError("stop here")

    monkeypatch.setattr(datasets, "build_dataset", build)
    argv = ["eval", "--model", "m", "--dataset", dataset, "--root", "r", "--output", "o"]
    assert main(argv + (["--split", given] if given else [])) == 1
    assert seen == [used] and "stop here" in capsys.readouterr().err
