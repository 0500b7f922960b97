"""int8: the precision registry's refusals, calibration frames, and a real quantised ONNX Runtime session."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import randomize_head, small_config

from flowclas_ros.deploy.cache import MANIFEST, ensure_artefact
from flowclas_ros.deploy.errors import ArtefactError
from flowclas_ros.deploy.quantize import (
    calibration_images,
    calibration_inputs,
    default_calibration,
    head_nodes,
    resolve_calibration,
)
from flowclas_ros.deploy.shapes import InputShape
from flowclas_ros.images import write_png
from flowclas_ros.model import EncoderConfig, FlowCLASNet, FlowConfig, save_bundle
from flowclas_ros.model.precision import PRECISIONS, RUNS_ON, precision_refusal
from flowclas_ros.runtime import Detector
from flowclas_ros.runtime.backends import BackendError, create_backend

pytest.importorskip("onnxruntime")

LITE = EncoderConfig(name="efficientnet_lite0", layers=[1, 2], weights=None, input_size=(64, 96))


def _frames(folder, n, seed=0, size=(80, 120)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        # smooth images (like camera frames) rather than white noise
        small = rng.integers(0, 256, (size[0] // 8, size[1] // 8, 3), dtype=np.uint8)
        write_png(folder / f"{i:03d}.png", np.kron(small, np.ones((8, 8, 1), dtype=np.uint8)))
    return folder


@pytest.fixture(scope="module")
def lite(tmp_path_factory):
    torch.manual_seed(0)
    net = randomize_head(FlowCLASNet(small_config(encoder=LITE, flow=FlowConfig(steps=1, hidden_ratio=0.5)))).eval()
    root = tmp_path_factory.mktemp("data")
    _frames(root / "train" / "images", 6)
    net.config.training = {"dataset": "folder", "root": str(root)}
    return net, save_bundle(net, tmp_path_factory.mktemp("bundle")), root


def test_registry_says_who_runs_each_precision():
    assert set(RUNS_ON) == set(PRECISIONS)
    assert precision_refusal("onnxruntime", "int8") is None and precision_refusal("onnx", "int8") is None
    reason = precision_refusal("torch", "int8")
    assert "torch backend does not run int8" in reason and "onnxruntime" in reason and "--calibration" in reason
    assert "tensorrt backend does not run int8" in precision_refusal("tensorrt", "int8")
    assert "torch-export backend does not run fp16" in precision_refusal("torch-export", "fp16")
    assert "must be one of" in precision_refusal("torch", "int4")


def test_backends_refusing_int8_say_so(lite):
    net, bundle, _ = lite
    for name in ("torch", "torch-export"):
        with pytest.raises(BackendError, match=f"the {name} backend does not run int8; int8 runs on onnxruntime only"):
            create_backend(name, bundle, precision="int8", net=net)


def test_calibration_frames_are_spread_and_preprocessed_like_the_detector(lite, tmp_path):
    net, _, root = lite
    folder = _frames(tmp_path / "many", 10)
    picked = calibration_images(folder, 4)
    assert [p.name for p in picked] == ["000.png", "002.png", "005.png", "007.png"]
    assert calibration_images(root, 32) == sorted((root / "train" / "images").iterdir())  # dataset root layout
    size = tuple(net.config.encoder.input_size)
    (x,) = calibration_inputs(picked[:1], net.config, size)
    from flowclas_ros.images import read_rgb

    detector = Detector(net)
    expected = detector.preprocess(read_rgb(picked[0])[None]).numpy()
    assert x.shape == (1, 3, *size) and x.dtype == np.float32
    np.testing.assert_allclose(x, expected, atol=1e-6)


def test_calibration_source_errors(lite, tmp_path):
    net, _, root = lite
    assert default_calibration(net.config) == root / "train" / "images"
    with pytest.raises(ArtefactError, match="does not exist"):
        calibration_images(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtefactError, match="no images"):
        calibration_images(tmp_path / "empty")
    config = net.config.__class__(**{**net.config.__dict__, "training": {"root": str(tmp_path / "gone")}})
    with pytest.raises(ArtefactError, match=r"--calibration DIR; the bundle's training data .* is not there"):
        resolve_calibration(config, None)


def test_int8_artefact_runs_close_to_fp32_and_records_its_calibration(lite, tmp_path):
    net, bundle, root = lite
    shape = InputShape.static(64, 96)
    int8 = create_backend("onnxruntime", bundle, precision="int8", shape=shape, net=net)  # default: training images
    fp32 = create_backend("onnxruntime", bundle, precision="fp32", shape=shape, net=net)
    import onnx

    path = ensure_artefact(bundle, "onnx", "int8", shape, build=False)
    record = json.loads((path.parent / MANIFEST).read_text())["calibration"]
    assert record["source"] == str((root / "train" / "images").resolve()) and record["frames"] == 6
    assert record["format"] == "QDQ" and record["per_channel"] is True
    graph = onnx.load(str(path)).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert record["scope"] == "head"
    # only the head is quantised: the encoder's convolutions read float32 weights (no DequantizeLinear before them)
    produced_by = {o: n for n in graph.node for o in n.output}
    quantised = {n.name for n in graph.node if n.op_type == "Conv" and any(
        produced_by.get(i) is not None and produced_by[i].op_type == "DequantizeLinear" for i in n.input[1:2])}
    fp32_graph = onnx.load(str(ensure_artefact(bundle, "onnx", "fp32", shape, build=False)))
    assert quantised and quantised <= set(head_nodes(fp32_graph))
    encoder_convs = {n.name for n in fp32_graph.graph.node if n.op_type == "Conv"} - set(head_nodes(fp32_graph))
    assert encoder_convs and not quantised & encoder_convs
    x = torch.from_numpy(calibration_inputs(sorted((root / "train" / "images").iterdir())[:2], net.config, (64, 96))[1])
    a, b = int8(x), fp32(x)
    assert a.shape == b.shape == (1, 64, 96)
    assert float((a - b).abs().mean()) < 0.05  # quantised, not broken


def test_export_command_int8(lite, tmp_path, capsys):
    from flowclas_ros.commands.main import main

    net, bundle, _ = lite
    frames = _frames(tmp_path / "calib", 3, seed=1)
    assert main(["export", "--model", str(bundle), "--format", "onnx", "--precision", "int8", "--height", "32",
                 "--width", "48", "--calibration", str(frames), "--calibration-frames", "2"]) == 0
    manifest = json.loads(next((bundle / "engines").glob("onnx-int8-b1x32x48-*/" + MANIFEST)).read_text())
    assert manifest["calibration"]["frames"] == 2 and manifest["calibration"]["source"] == str(frames.resolve())
    assert main(["export", "--model", str(bundle), "--format", "torch-export", "--precision", "int8"]) == 1
    assert "torch-export backend does not run int8" in capsys.readouterr().err
    assert main(["export", "--model", str(bundle), "--format", "onnx", "--calibration", str(frames)]) == 1
    assert "--precision int8 only" in capsys.readouterr().err


def test_head_nodes_refuse_a_graph_without_module_scopes():
    import onnx
    from onnx import helper

    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv0")  # no exporter scope metadata
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 4, 4])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
                              [helper.make_tensor("w", onnx.TensorProto.FLOAT, [1, 1, 1, 1], [1.0])])
    with pytest.raises(ArtefactError, match="does not say which nodes belong to the head"):
        head_nodes(helper.make_model(graph))


def test_calibration_skips_unreadable_images_and_refuses_when_none_is_left(tmp_path, caplog):
    folder = tmp_path / "calib"
    folder.mkdir()
    write_png(folder / "a.png", np.full((20, 30, 3), 90, np.uint8))
    (folder / "b.png").write_bytes(b"not a png")
    config = small_config()
    with caplog.at_level("WARNING"):
        inputs = calibration_inputs(calibration_images(folder), config, (64, 96))
    assert len(inputs) == 1 and inputs[0].shape == (1, 3, 64, 96)
    assert any("b.png" in r.getMessage() for r in caplog.records)
    with pytest.raises(ArtefactError, match="none of the 1 calibration images"):
        calibration_inputs([folder / "b.png"], config, (64, 96))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ArtefactError, match="is not a folder"):
        calibration_images(tmp_path / "file")
