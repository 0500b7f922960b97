"""The trainer: really trains, resumes exactly, and two gloo processes equal one."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import small_config
from PIL import Image

from flowclas_ros.model import load_bundle
from flowclas_ros.training.config import DataConfig, OptimConfig, RunConfig, TrainConfig
from flowclas_ros.training.objectives import ObjectiveConfig
from flowclas_ros.training.trainer import load_checkpoint, lr_factor, parameter_groups, train


def _write_folder(root: Path, outliers: Path, count: int = 10) -> None:
    """Inlier images (smooth stripes) and outlier sources (noisy discs) in the folder layout."""
    rng = np.random.default_rng(0)
    (root / "train" / "images").mkdir(parents=True)
    yy, xx = np.mgrid[0:72, 0:104]
    for i in range(count):
        phase = rng.uniform(0, 6)
        base = 120 + 60 * np.sin(xx / 9.0 + phase)[..., None] * np.array([1.0, 0.8, 0.6])
        Image.fromarray(base.clip(0, 255).astype(np.uint8)).save(root / "train" / "images" / f"{i:03d}.png")
    (outliers / "images").mkdir(parents=True)
    (outliers / "masks").mkdir(parents=True)
    for i in range(3):
        img = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
        mask = np.where((yy[:60, :80] - 30) ** 2 + (xx[:60, :80] - 40) ** 2 < 400, 254, 0).astype(np.uint8)
        Image.fromarray(img).save(outliers / "images" / f"o{i}.png")
        Image.fromarray(mask).save(outliers / "masks" / f"o{i}.png")


def _config(tmp_path: Path, objective: str = "flowclas", **optim) -> TrainConfig:
    root, outliers = tmp_path / "data", tmp_path / "outliers"
    if not root.exists():
        _write_folder(root, outliers)
    return TrainConfig(
        model=small_config(),
        data=DataConfig(dataset="folder", root=str(root), outliers=str(outliers), val_fraction=0.2),
        objective=ObjectiveConfig(name=objective, max_samples=64),
        optim=OptimConfig(**{"lr": 1e-3, "batch_size": 4, "steps": 6, "precision": "fp32", "warmup": 0.2, **optim}),
        run=RunConfig(log_every=1, val_every=3, checkpoint_every=2, bins=200),
    )


def _head(bundle: Path) -> dict[str, torch.Tensor]:
    return load_bundle(bundle).head_state_dict()


def test_schedule_and_parameter_groups():
    factors = [lr_factor(s, 100, 0.1) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[9:], factors[10:])) and factors[-1] < 0.01
    from flowclas_ros.model import FlowCLASNet

    decay, rest = parameter_groups(FlowCLASNet(small_config()), 1e-5)
    assert decay["params"] and all(p.dim() == 4 for p in decay["params"])  # projection conv weights
    assert decay["weight_decay"] == 1e-5 and rest["weight_decay"] == 0.0


def test_validation_pastes_held_out_outliers(tmp_path):
    from flowclas_ros.training.data import build_samples

    train_set, val_set = build_samples(_config(tmp_path))
    assert set(train_set.indices).isdisjoint(val_set.indices)
    assert set(train_set.outlier_indices).isdisjoint(val_set.outlier_indices)
    assert len(train_set.outlier_indices) + len(val_set.outlier_indices) == 3


def test_training_writes_a_calibrated_bundle_and_logs(tmp_path):
    config = _config(tmp_path)
    bundle = train(config, tmp_path / "run", progress=False)
    meta = json.loads((bundle / "config.json").read_text())["model"]
    assert 0.0 <= meta["threshold"] <= 1.0 and meta["threshold_fpr"] == 0.05
    assert set(meta["metrics"]["validation"]) >= {"ap", "fpr95", "auroc", "auprc_trapz"}
    rows = list(csv.DictReader(open(tmp_path / "run" / "logs" / "train.csv")))
    assert [int(r["step"]) for r in rows] == list(range(1, 7))
    assert all(np.isfinite(float(r["loss"])) for r in rows) and float(rows[0]["contrastive"]) > 0
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["step"] == 6
    untrained = FlowCLASNet_head(config)
    trained = _head(bundle)
    assert any(not torch.equal(trained[k], untrained[k]) for k in trained)  # it really trained


def FlowCLASNet_head(config: TrainConfig) -> dict[str, torch.Tensor]:
    from flowclas_ros.model import FlowCLASNet

    torch.manual_seed(config.run.seed)
    return FlowCLASNet(config.model).head_state_dict()


class Killed(Exception):
    """Stands in for a kill: raised between steps, after the last periodic checkpoint."""


def test_resume_after_interruption_matches_an_uninterrupted_run(tmp_path):
    config = _config(tmp_path)
    whole = _head(train(config, tmp_path / "whole", progress=False))

    from flowclas_ros.training.trainer import Context, Trainer

    def kill_at_5(step: int) -> None:
        if step == 5:
            raise Killed

    with pytest.raises(Killed):
        Trainer(config, tmp_path / "cut", Context(), progress=False, on_step=kill_at_5).run()
    assert load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["step"] == 4
    resumed = _head(Trainer(config, tmp_path / "cut", Context(), progress=False).run())
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process(tmp_path):
    # Maximum likelihood: the loss is a mean over samples, so the gradient of the global
    # batch is the mean of the two processes' gradients. Right after ActNorm's data-dependent
    # initialisation the gradients of the shift/scale tensors before the first coupling are
    # zero up to rounding, as are those inside each coupling's subnet until its zero-initialised
    # output conv has moved, and Adam turns rounding noise into full-size steps of either
    # sign. With epsilon 1 Adam's step is about lr * gradient, which compares gradients
    # rather than the signs of rounding errors (with the default epsilon, parameters differ
    # by up to lr per step while the same runs agree to 1e-6 with epsilon 1).
    one = _head(train(_config(tmp_path, "ml", eps=1.0), tmp_path / "one", progress=False))
    config = _config(tmp_path, "ml", eps=1.0)
    config.run.devices = 2
    two = _head(train(config, tmp_path / "two", progress=False))
    for k in one:
        assert torch.allclose(one[k], two[k], rtol=1e-4, atol=1e-5), k
    untrained = FlowCLASNet_head(config)
    assert any(not torch.allclose(one[k], untrained[k]) for k in one)


def test_chunked_encoding_equals_one_batch():
    from flowclas_ros.model import FlowCLASNet

    net = FlowCLASNet(small_config()).eval()
    x = torch.randn(5, 3, 64, 96)
    whole, chunked = net.features(x), net.features(x, chunk=2)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(whole, chunked))


def test_train_command_with_flags_writes_preview_and_bundle(tmp_path, capsys):
    import yaml

    from flowclas_ros.commands.main import main

    _write_folder(tmp_path / "data", tmp_path / "outliers")
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"encoder": {"name": "efficientnet_lite0", "layers": [2, 4], "weights": None, "input_size": [64, 96]},
                  "flow": {"steps": 2, "hidden_ratio": 0.5}, "projection_dim": 16},
        "optim": {"lr": 1e-3, "batch_size": 2, "precision": "fp32"},
        "run": {"val_every": 2, "checkpoint_every": 2, "bins": 100},
    }))
    argv = ["train", "--config", str(recipe), "--output", str(tmp_path / "run"), "--data-root", str(tmp_path / "data"),
            "--outliers", str(tmp_path / "outliers"), "--steps", "2", "--head", "fastflow", "--preview", "4"]
    assert main(argv) == 0
    assert (tmp_path / "run" / "pasting_preview.png").is_file()
    net = load_bundle(tmp_path / "run" / "model")
    assert net.config.head == "fastflow" and net.config.flow.subnet == "simple"
    assert main(argv + ["--set", "optim.lr=-1"]) == 1
    assert "optim.lr must be in (0, 1]" in capsys.readouterr().err
