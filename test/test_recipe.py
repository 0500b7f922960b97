"""The small-data recipe: whitening initialised from data, the Gaussian baseline, the input size from the images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from flowclas_ros.model.config import ModelConfig
from flowclas_ros.model.encoders import EncoderConfig
from flowclas_ros.model.flow import Flow, Whitening
from flowclas_ros.model.network import FlowCLASNet
from flowclas_ros.synthetic.objects import sources
from flowclas_ros.synthetic.scenes import DOMAINS
from flowclas_ros.training.config import load_train_config
from flowclas_ros.training.gaussian import fit_gaussian

TINY = EncoderConfig(name="efficientnet_lite0", layers=[1, 2], weights=None, input_size=(32, 48))


def test_whitening_makes_the_covariance_the_identity_and_inverts():
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(6, 6, generator=g)
    x = (torch.randn(4, 6, 10, 10, generator=g).permute(0, 2, 3, 1) @ mix).permute(0, 3, 1, 2) + 3.0
    w = Whitening(6, ridge=0.0)
    w.initialize(x)
    y, logdet = w(x)
    v = y.permute(0, 2, 3, 1).reshape(-1, 6).double()
    assert torch.allclose(torch.cov(v.t()), torch.eye(6, dtype=v.dtype), atol=1e-3)
    assert torch.allclose(v.mean(0), torch.zeros(6, dtype=v.dtype), atol=1e-4)
    assert torch.allclose(w.inverse(y), x, atol=1e-3)
    expected = torch.linalg.slogdet(w.weight.double())[1] * 100
    assert torch.allclose(logdet.double(), expected.expand(4), rtol=1e-4)


def test_flow_with_whitening_is_invertible_and_identity_until_initialised():
    flow = Flow(8, steps=3, whiten=True).eval()
    x = torch.randn(2, 8, 5, 5)
    assert torch.equal(flow.whiten(x)[0], x)
    flow.whiten.initialize(x * 2 + 1)
    z, _ = flow(x)
    assert torch.allclose(flow.inverse(z), x, atol=1e-4)


def test_data_initialised_network_scores_and_round_trips_the_state(tmp_path):
    from flowclas_ros.model import save_bundle
    from flowclas_ros.model.bundle import load_bundle

    config = ModelConfig(encoder=TINY)
    config.flow.steps, config.flow.whiten = 2, True
    net = FlowCLASNet(config)
    net.initialize_from_data(torch.randn(3, 3, 32, 48))
    assert all(bool(s.actnorm.initialized) for f in net.flows for s in f.steps)
    assert not torch.equal(net.flows[0].whiten.weight, torch.eye(net.flows[0].whiten.weight.shape[0]))
    save_bundle(net.eval(), tmp_path / "b")
    again = load_bundle(tmp_path / "b")
    x = torch.randn(1, 3, 32, 48)
    assert torch.allclose(again(x), net(x), atol=1e-5)


def test_gaussian_baseline_scores_in_unit_range_and_flags_the_odd_patch():
    rng = np.random.default_rng(0)
    images = [np.clip(rng.normal(120, 10, (32, 48, 3)), 0, 255).astype(np.uint8) for _ in range(6)]
    scorer = fit_gaussian(ModelConfig(encoder=TINY), images)
    odd = images[0].copy()
    odd[8:24, 16:32] = rng.integers(0, 255, (16, 16, 3))
    x = torch.from_numpy(odd).permute(2, 0, 1)[None].float() / 255
    x = (x - torch.tensor(ModelConfig().mean).view(1, 3, 1, 1)) / torch.tensor(ModelConfig().std).view(1, 3, 1, 1)
    s = scorer(x)[0]
    assert s.shape == (32, 48) and float(s.min()) >= 0 and float(s.max()) <= 1
    assert float(s[12:20, 20:28].mean()) > float(s[:, :8].mean())


def _images(folder, sizes):
    (folder / "train" / "images").mkdir(parents=True)
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(folder / "train" / "images" / f"{i}.png")


@pytest.mark.parametrize("sizes, expected", [([(100, 150)] * 3, (100, 150)), ([(100, 150), (120, 150)], (240, 320)),
                                             ([(1200, 1600)] * 2, (240, 320))])
def test_folder_recipe_adopts_the_images_size(tmp_path, sizes, expected):
    _images(tmp_path, sizes)
    config = load_train_config("folder", [f"data.root={tmp_path}", f"data.outliers={tmp_path}"])
    assert tuple(config.model.encoder.input_size) == expected


def test_an_explicit_input_size_wins(tmp_path):
    _images(tmp_path, [(100, 150)])
    config = load_train_config("folder", [f"data.root={tmp_path}", f"data.outliers={tmp_path}",
                                          "model.encoder.input_size=[64,96]"])
    assert tuple(config.model.encoder.input_size) == (64, 96)


@pytest.mark.parametrize("domain", DOMAINS)
def test_every_domain_tests_on_object_kinds_it_never_pastes(domain):
    train, test = {s.name for s in sources(domain, "train")}, {s.name for s in sources(domain, "test")}
    assert train and test and not train & test


@pytest.mark.parametrize("root", ["null", "2024", "yes", "a: b", "data #1", "[x]"])
def test_train_flags_are_taken_as_given_not_parsed_as_yaml(root):
    import argparse

    from flowclas_ros.commands.train import add_arguments, overrides

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--config", "synthetic", "--output", "o", "--data-root", root, "--outliers", root,
                              "--set", "optim.steps=7"])
    config = load_train_config("synthetic", overrides(args))
    assert config.data.root == root and config.data.outliers == root and config.optim.steps == 7
