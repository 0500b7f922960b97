"""The whole score-map module passes torch.export and matches eager."""

from __future__ import annotations

import pytest
import torch

from flowclas_ros.model import EncoderConfig, FlowCLASNet

from conftest import randomize_head, small_config

VIT_S = EncoderConfig(name="dinov2_vits14", layers=[2, 3], weights=None, input_size=(64, 100))


@pytest.fixture(params=["efficientnet_lite0", "dinov2_vits14"])
def net(request, small_net):
    if request.param == "efficientnet_lite0":
        return small_net
    torch.manual_seed(0)
    return randomize_head(FlowCLASNet(small_config(encoder=VIT_S))).eval()


def test_torch_export_matches_eager(net):
    x = torch.randn(1, 3, *net.config.encoder.input_size)
    program = torch.export.export(net, (x,))
    with torch.no_grad():
        eager = net(x)
        exported = program.module()(x)
    assert eager.shape == (1, *net.config.encoder.input_size)
    torch.testing.assert_close(exported, eager, atol=1e-5, rtol=1e-5)


def test_torch_export_with_dynamic_batch(net):
    batch = torch.export.Dim("batch", min=1, max=8)
    size = net.config.encoder.input_size
    program = torch.export.export(net, (torch.randn(2, 3, *size),), dynamic_shapes=({0: batch},))
    x3 = torch.randn(3, 3, *size)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x3), net(x3), atol=1e-5, rtol=1e-5)
