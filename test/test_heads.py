"""The cflow and uflow heads: exact inverses and log-determinants, the positional encoding,
scores in [0, 1], bundles, every objective, and training runs whose loss falls."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import randomize_head

from flowclas_ros.model import EncoderConfig, FlowCLASNet, FlowConfig, ModelConfig, load_bundle, save_bundle
from flowclas_ros.model.config import HEADS, CflowOptions, ConfigError, load_model_config
from flowclas_ros.model.heads.blocks import positional_encoding_2d, softplus_half
from flowclas_ros.model.heads.cflow import ConditionalFlow, ConditionalSubnet
from flowclas_ros.model.heads.uflow import UFlow
from flowclas_ros.training.objectives import ObjectiveConfig, compute_loss


def _randomized(module: torch.nn.Module, seed: int = 0, scale: float = 0.3) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return module


def head_config(head: str, **changes) -> ModelConfig:
    """EfficientNet-Lite0 with random weights, blocks 2 and 4 (strides 4, 8), two flow steps."""
    fields = dict(
        encoder=EncoderConfig(name="efficientnet_lite0", layers=[2, 4], weights=None, input_size=(32, 48)),
        head=head,
        flow=FlowConfig(**{**vars(FlowConfig.for_head(head)), "steps": 2}),
        projection_dim=8,
        cflow=CflowOptions(condition_dim=16, vectors=64) if head == "cflow" else None,
    )
    fields.update(changes)
    return ModelConfig(**fields)


# ------------------------------------------------------------------ building blocks


def test_softplus_half_matches_torch():
    x = torch.linspace(-60, 60, 241, dtype=torch.float64)
    torch.testing.assert_close(softplus_half(x), torch.nn.functional.softplus(x, beta=0.5))


def test_positional_encoding_hand_computed():
    p = positional_encoding_2d(8, 3, 4)  # 8 channels: column part 0..3, row part 4..7
    assert p.shape == (8, 3, 4)
    y, x = 2, 3
    f1 = 10000 ** (-2 / 4)  # second frequency of a 4-channel half
    expected = [math.sin(x), math.cos(x), math.sin(x * f1), math.cos(x * f1),
                math.sin(y), math.cos(y), math.sin(y * f1), math.cos(y * f1)]
    torch.testing.assert_close(p[:, y, x], torch.tensor(expected), atol=1e-6, rtol=0)
    big = positional_encoding_2d(128, 5, 7)
    assert big[2, 4, 6].item() == pytest.approx(math.sin(6 * 10000 ** (-2 / 64)), abs=1e-6)
    assert big[64 + 3, 4, 6].item() == pytest.approx(math.cos(4 * 10000 ** (-2 / 64)), abs=1e-6)


def test_separable_condition_equals_concatenated_encoding():
    """Per map the subnet adds W_c P(y, x) from the two 1D parts; the concatenated form agrees."""
    torch.manual_seed(0)
    flow = ConditionalFlow(6, steps=1, hidden_ratio=2.0, clamp=1.9, condition_dim=8, seed=0)
    subnet: ConditionalSubnet = flow.blocks[0].subnet
    x = torch.zeros(1, 6, 3, 5)
    got = subnet.condition(flow.grid_condition(x))[0]
    expected = torch.einsum("hc,cyx->hyx", subnet.cond.weight, positional_encoding_2d(8, 3, 5))
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


# ------------------------------------------------------------------ cflow: exact flow


def _cflow(channels: int = 5) -> ConditionalFlow:
    return _randomized(ConditionalFlow(channels, steps=3, hidden_ratio=2.0, clamp=1.9, condition_dim=8, seed=1)).double()


def test_cflow_inverse_is_exact():
    flow = _cflow()
    v = torch.randn(4, 5, dtype=torch.float64)
    rows, cols = torch.tensor([0, 1, 2, 7]), torch.tensor([3, 0, 5, 1])
    z, _ = flow.vectors(v, rows, cols)
    assert not torch.allclose(z, v)
    back = flow.inverse(z[:, :, None, None], flow.point_condition(rows, cols, v.dtype))[:, :, 0, 0]
    torch.testing.assert_close(back, v, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("channels", [4, 5])
def test_cflow_logdet_matches_autograd_jacobian(channels):
    flow = _cflow(channels)
    v = torch.randn(3, channels, dtype=torch.float64)
    rows, cols = torch.tensor([1, 4, 0]), torch.tensor([2, 2, 6])
    _, logdet = flow.vectors(v, rows, cols)
    for i in range(3):
        jac = torch.autograd.functional.jacobian(lambda u: flow.vectors(u[None], rows[i : i + 1], cols[i : i + 1])[0][0], v[i])
        torch.testing.assert_close(logdet[i], torch.linalg.slogdet(jac)[1], atol=1e-9, rtol=1e-9)


def test_cflow_map_equals_vectors():
    """Inference (1x1 convs over the map) and training (sampled vectors) give the same numbers."""
    flow = _cflow()
    x = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    z_map, ld_map = flow.map(x)
    b, r, c = torch.tensor([0, 1, 1, 0]), torch.tensor([0, 2, 1, 2]), torch.tensor([3, 0, 2, 1])
    z, ld = flow.vectors(x[b, :, r, c], r, c)
    torch.testing.assert_close(z, z_map[b, :, r, c], atol=1e-12, rtol=0)
    torch.testing.assert_close(ld, ld_map[b, r, c], atol=1e-12, rtol=0)


# ------------------------------------------------------------------ uflow: exact flow


def _uflow_case():
    """Three scales: strides 4, 4, 8 (a same-grid concatenation and a 2x pixel shuffle)."""
    flow = _randomized(UFlow([3, 4, 8], [4, 4, 8], steps=2, hidden_ratio=1.0, clamp=2.0, seed=2), scale=0.2).double()
    g = torch.Generator().manual_seed(5)
    feats = [torch.randn(1, c, s, s, generator=g, dtype=torch.float64) for c, s in ((3, 4), (4, 4), (8, 2))]
    return flow, feats


def test_uflow_shapes_and_inverse_is_exact():
    flow, feats = _uflow_case()
    zs, _ = flow(feats)
    assert [tuple(z.shape[1:]) for z in zs] == [(5, 4, 4), (3, 4, 4), (4, 2, 2)]
    assert sum(z.numel() for z in zs) == sum(f.numel() for f in feats)
    back = flow.inverse(zs)
    for f, r in zip(feats, back):
        torch.testing.assert_close(r, f, atol=1e-10, rtol=1e-10)


def test_uflow_logdet_matches_autograd_jacobian():
    flow, feats = _uflow_case()
    shapes = [f.shape for f in feats]
    sizes = [f.numel() for f in feats]

    def whole(flat):
        parts = [p.view(s) for p, s in zip(flat.split(sizes), shapes)]
        return torch.cat([z.reshape(-1) for z in flow(parts)[0]])

    flat = torch.cat([f.reshape(-1) for f in feats])
    jac = torch.autograd.functional.jacobian(whole, flat)
    _, logdet = flow(feats)
    torch.testing.assert_close(logdet[0], torch.linalg.slogdet(jac)[1], atol=1e-8, rtol=1e-8)


def test_uflow_refuses_strides_it_cannot_join():
    with pytest.raises(ValueError, match="power-of-two"):
        UFlow([4, 4], [4, 12])


# ------------------------------------------------------------------ the network with a head


@pytest.mark.parametrize("head", ["cflow", "uflow"])
def test_head_scores_in_unit_range_and_bundle_round_trip(head, tmp_path):
    torch.manual_seed(0)
    net = randomize_head(FlowCLASNet(head_config(head))).eval()
    if head == "cflow":
        net.head.reference.fill_(-1.0)
    x = torch.randn(2, 3, 30, 45)  # padded to multiples of 8 inside, cropped back
    with torch.no_grad():
        score = net(x)
    assert score.shape == (2, 30, 45) and 0.0 <= float(score.min()) and float(score.max()) <= 1.0
    assert float(score.std()) > 0
    loaded = load_bundle(save_bundle(net, tmp_path / "bundle"))
    assert loaded.config.head == head
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), score)


def test_uflow_logdet_shares_sum_to_the_flow_logdet():
    net = randomize_head(FlowCLASNet(head_config("uflow"))).eval()
    feats = net.features(torch.randn(2, 3, 32, 48))
    shares = net.latents(feats)
    _, total = net.head.flow([n(f) for f, n in zip(feats, net.head.norms)])
    torch.testing.assert_close(sum(ld for _, ld in shares), total)


def test_head_registry_and_defaults():
    assert {"cflow", "uflow"} <= set(HEADS)
    cflow = load_model_config(None, ["head=cflow"])
    assert (cflow.flow.steps, cflow.flow.clamp, cflow.flow.hidden_ratio, cflow.flow.learnable_base) == (8, 1.9, 2.0, False)
    assert cflow.cflow == CflowOptions() and cflow.cflow.condition_dim == 128
    uflow = load_model_config(None, ["head=uflow"])
    assert (uflow.flow.steps, uflow.flow.clamp, uflow.cflow) == (4, 2.0, None)
    with pytest.raises(ConfigError, match="cflow.condition_dim"):
        load_model_config(None, ["head=cflow", "cflow.condition_dim=10"])
    with pytest.raises(ConfigError, match="cflow.ml_form"):
        load_model_config(None, ["head=cflow", "cflow.ml_form=other"])


# ------------------------------------------------------------------ objectives and training


def _batch(seed: int = 0):
    """Two mixed images with an outlier square, two outlier images with object and background."""
    g = torch.Generator().manual_seed(seed)
    x_mix, x_out = torch.randn(2, 3, 32, 48, generator=g), torch.randn(2, 3, 32, 48, generator=g) * 2
    y_mix = torch.zeros(2, 32, 48, dtype=torch.long)
    y_mix[:, 8:24, 16:40] = 1
    y_mix[:, :, :4] = 255
    y_out = torch.zeros(2, 32, 48, dtype=torch.long)
    y_out[:, 4:28, 8:40] = 1
    x_mix[:, :, 8:24, 16:40] = x_out[:, :, 8:24, 16:40]
    return x_mix, y_mix, x_out, y_out


@pytest.mark.parametrize("head", ["cflow", "uflow"])
@pytest.mark.parametrize("objective", ["flowclas", "ml", "outlier_nll"])
def test_every_objective_trains_the_head(head, objective):
    torch.manual_seed(0)
    net = FlowCLASNet(head_config(head)).train()
    x_mix, y_mix, x_out, y_out = _batch()
    config = ObjectiveConfig(name=objective, max_samples=32, alpha=1e-3)
    loss, parts = compute_loss(net, x_mix, y_mix, x_out, y_out, config, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
    key = {"flowclas": "contrastive", "ml": "ml", "outlier_nll": "outlier_nll"}[objective]
    assert parts[key] != 0.0
    loss.backward()
    flows = net.head.flows if head == "cflow" else [net.head.flow]
    grads = [p.grad for f in flows for p in f.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads) and any(float(g.abs().max()) > 0 for g in grads)
    assert all(p.grad is None for p in net.head.norms.parameters())  # frozen LayerNorm
    if objective == "flowclas":
        assert any(p.grad is not None and float(p.grad.abs().max()) > 0 for p in net.head.projections.parameters())
    if head == "cflow":
        assert bool(net.head.observed.all()) and float(net.head.reference.abs().min()) > 0


@pytest.mark.parametrize("head,form", [("cflow", "nll"), ("cflow", "logsigmoid"), ("uflow", None)])
@pytest.mark.parametrize("objective", ["ml", "flowclas"])
def test_tiny_training_run_lowers_the_loss(head, form, objective):
    torch.manual_seed(0)
    changes = {"cflow": CflowOptions(condition_dim=16, vectors=64, ml_form=form)} if form else {}
    net = FlowCLASNet(head_config(head, **changes)).train()
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=2e-3)
    config = ObjectiveConfig(name=objective, max_samples=32, alpha=1e-3)
    x_mix, y_mix, x_out, y_out = _batch()
    losses = []
    for _ in range(25):
        loss, _ = compute_loss(net, x_mix, y_mix, x_out, y_out, config, torch.Generator().manual_seed(1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.05 * abs(sum(losses[:3]) / 3), losses


@pytest.mark.parametrize("head", ["cflow", "uflow"])
def test_train_command_with_head_flag_writes_a_bundle_that_detects(head, tmp_path):
    """``flowclas train --head``, then ``flowclas detect`` on the bundle."""
    import yaml
    from test_trainer import _write_folder

    from flowclas_ros.commands.main import main

    _write_folder(tmp_path / "data", tmp_path / "outliers", count=6)
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"encoder": {"name": "efficientnet_lite0", "layers": [2, 4], "weights": None, "input_size": [64, 96]},
                  "flow": {"steps": 1}, "projection_dim": 8, **({"cflow": {"condition_dim": 16}} if head == "cflow" else {})},
        "objective": {"max_samples": 32},
        "optim": {"lr": 1e-3, "batch_size": 2, "precision": "fp32"},
        "run": {"val_every": 2, "checkpoint_every": 2, "bins": 100},
    }))
    argv = ["train", "--config", str(recipe), "--output", str(tmp_path / "run"), "--data-root", str(tmp_path / "data"),
            "--outliers", str(tmp_path / "outliers"), "--steps", "2", "--head", head, "--preview", "0"]
    assert main(argv) == 0
    net = load_bundle(tmp_path / "run" / "model")
    assert net.config.head == head and net.config.flow.clamp == FlowConfig.for_head(head).clamp
    if head == "cflow":
        assert bool(net.head.observed.all())  # the trained reference travels in the bundle
    images = tmp_path / "data" / "train" / "images"
    assert main(["detect", "--model", str(tmp_path / "run" / "model"), "--input", str(images), "--output", str(tmp_path / "det")]) == 0
    assert any((tmp_path / "det").iterdir())
