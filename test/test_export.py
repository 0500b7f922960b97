"""The whole score-map module passes torch.export and matches eager."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import randomize_head, small_config

from flowclas_ros.model import EncoderConfig, FlowCLASNet

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


def test_dynamic_height_and_width_in_multiples(small_net):
    from flowclas_ros.deploy.compile import export_program
    from flowclas_ros.deploy.shapes import InputShape, check_shape

    m = small_net.encoder.pad_multiple
    shape = InputShape((1, 1, 1), (4 * m, 8 * m, 12 * m), (4 * m, 12 * m, 16 * m))
    check_shape(small_net, shape)
    module = export_program(small_net, shape, m).module()
    for h, w in ((4 * m, 16 * m), (11 * m, 5 * m)):
        x = torch.randn(1, 3, h, w)
        with torch.no_grad():
            torch.testing.assert_close(module(x), small_net(x), atol=1e-5, rtol=1e-5)


def test_export_command(tmp_path, small_net, capsys):
    from flowclas_ros.commands.main import main
    from flowclas_ros.model import save_bundle

    bundle = save_bundle(small_net, tmp_path / "b")
    assert main(["export", "--model", str(bundle), "--format", "torch-export", "--height", "32", "--width", "48"]) == 0
    artefact = next((bundle / "engines").glob("torch-export-fp32-b1x32x48-*/model.pt2"))
    assert str(artefact) in capsys.readouterr().out
    bad = [
        (["--height", "32", "--min", "32x32", "--max", "64x64"], "not both"),
        (["--min", "32x32"], "needs both --min and --max"),
        (["--min", "30x32", "--max", "64x64"], "multiples of"),
        (["--precision", "fp16"], "onnxruntime backend does not run fp16"),
    ]
    for extra, message in bad:
        assert main(["export", "--model", str(bundle), "--format", "onnx", *extra]) == 1
        assert message in capsys.readouterr().err


def test_exported_ops_are_on_the_allow_list(net):
    """Our exports stay inside deploy.ops.TORCH_OPS (regenerate it from program_ops when this fails)."""
    from flowclas_ros.deploy.compile import export_program
    from flowclas_ros.deploy.ops import TORCH_OPS, check_program, program_ops
    from flowclas_ros.deploy.shapes import InputShape

    program = export_program(net, InputShape.static(*net.config.encoder.input_size), net.encoder.pad_multiple)
    assert program_ops(program) <= TORCH_OPS, program_ops(program) - TORCH_OPS
    check_program(program, Path("model.pt2"))


def test_allowed_ops_write_nothing():
    from flowclas_ros.deploy.ops import TORCH_OPS, op_refusal

    for name in TORCH_OPS:
        assert op_refusal(name) is None, name
        if name.startswith("torch.ops."):
            _, _, namespace, op, overload = name.split(".")
            assert not getattr(getattr(getattr(torch.ops, namespace), op), overload)._schema.is_mutable, name
