"""Backends give the eager score maps; the artefact cache rebuilds stale and refuses corrupt files.

Parity tolerance: 1e-4 absolute on score maps in [0, 1] (float32 graphs, reordered sums).
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from conftest import randomize_head, small_config

from flowclas_ros.deploy import cache
from flowclas_ros.deploy.archive import load_program, save_program
from flowclas_ros.deploy.cache import MANIFEST, ensure_artefact, library_versions
from flowclas_ros.deploy.compile import Fp32Island, export_program, mixed_precision
from flowclas_ros.deploy.errors import ArtefactError
from flowclas_ros.deploy.shapes import InputShape
from flowclas_ros.model import EncoderConfig, FlowCLASNet, FlowConfig, save_bundle
from flowclas_ros.runtime import Detector
from flowclas_ros.runtime.backends import BackendError, create_backend, tensorrt_unavailable

ATOL = 1e-4


def _bundle(tmp_path_factory, name: str, **changes):
    torch.manual_seed(0)
    net = randomize_head(FlowCLASNet(small_config(**changes))).eval()
    return net, save_bundle(net, tmp_path_factory.mktemp(name))


LITE = EncoderConfig(name="efficientnet_lite0", layers=[1, 2], weights=None, input_size=(64, 96))


@pytest.fixture(scope="module")
def lite(tmp_path_factory):
    """EfficientNet-Lite0 cut after block 2, two scales, one flow step: cheap to export."""
    return _bundle(tmp_path_factory, "lite", encoder=LITE, flow=FlowConfig(steps=1, hidden_ratio=0.5))


def _vit(size):
    return dict(encoder=EncoderConfig(name="dinov2_vits14", layers=[0], weights=None, input_size=size))


@pytest.fixture(scope="module", params=[(42, 56), (56, 84)], ids=lambda s: f"vit{s[0]}x{s[1]}")
def vit(request, tmp_path_factory):
    return _bundle(tmp_path_factory, "vit", **_vit(request.param))


def _check_parity(net, bundle, shape, sizes):
    for name in ("torch-export", "onnxruntime"):
        backend = create_backend(name, bundle, shape=shape)
        for b, h, w in sizes:
            x = torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(h))
            with torch.no_grad():
                eager = net(x)
            got = backend(x)
            assert got.shape == eager.shape == (b, h, w)
            torch.testing.assert_close(got, eager, atol=ATOL, rtol=0, msg=f"{name} at {b}x{h}x{w}")


def test_lite0_dynamic_sizes_match_eager(lite):
    net, bundle = lite
    m = net.encoder.pad_multiple
    shape = InputShape((1, 1, 2), (4 * m, 8 * m, 16 * m), (4 * m, 12 * m, 16 * m))
    _check_parity(net, bundle, shape, [(1, 8 * m, 12 * m), (2, 5 * m, 16 * m)])
    with pytest.raises(BackendError, match=f"multiples of {m}"):
        create_backend("onnxruntime", bundle, shape=shape)(torch.zeros(1, 3, 8 * m + 1, 8 * m))


# ---- the heads of model/heads (cflow, uflow): dynamic sizes, two of them, and the Detector


@pytest.fixture(scope="module", params=["cflow", "uflow"])
def other_head(request, tmp_path_factory):
    """Lite0 blocks 2 and 4 (strides 4, 8: U-Flow joins them by a pixel shuffle), one step."""
    from flowclas_ros.model.config import CflowOptions

    head = request.param
    torch.manual_seed(0)
    encoder = EncoderConfig(name="efficientnet_lite0", layers=[2, 4], weights=None, input_size=(64, 96))
    config = small_config(encoder=encoder, head=head, flow=FlowConfig(**{**vars(FlowConfig.for_head(head)), "steps": 1}),
                          cflow=CflowOptions(condition_dim=16) if head == "cflow" else None)
    net = randomize_head(FlowCLASNet(config)).eval()
    if head == "cflow":
        net.head.reference.fill_(-1.0)  # a trained reference: exp(logp - reference) not all clamped
    return net, save_bundle(net, tmp_path_factory.mktemp(head))


def test_other_heads_dynamic_sizes_match_eager(other_head):
    net, bundle = other_head
    m = net.encoder.pad_multiple
    shape = InputShape((1, 1, 2), (4 * m, 8 * m, 16 * m), (4 * m, 12 * m, 16 * m))
    _check_parity(net, bundle, shape, [(1, 8 * m, 12 * m), (2, 5 * m, 16 * m)])
    frame = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    compiled = Detector(None, backend=create_backend("onnxruntime", bundle, shape=shape), config=net.config)
    eager = Detector(net)
    eager.input_size = compiled.input_size
    np.testing.assert_allclose(compiled.score(frame), eager.score(frame), atol=ATOL)


def test_vit_static_matches_eager(vit):
    net, bundle = vit
    h, w = net.config.encoder.input_size
    _check_parity(net, bundle, InputShape((1, 1, 2), (h,) * 3, (w,) * 3), [(1, h, w), (2, h, w)])


def test_vit_refuses_other_size(vit):
    net, bundle = vit
    with pytest.raises(ArtefactError, match="fixed input size"):
        create_backend("onnxruntime", bundle, shape=InputShape.static(70, 70))


def test_dynamic_size_must_be_multiple(lite):
    net, bundle = lite
    with pytest.raises(ArtefactError, match="multiples of"):
        create_backend("onnxruntime", bundle, shape=InputShape((1, 1, 1), (33, 40, 64), (64, 64, 64)))


def test_detector_resizes_to_static_engine(lite):
    net, bundle = lite
    frame = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    engine = create_backend("onnxruntime", bundle, shape=InputShape.static(32, 48))  # not the bundle's 64x96
    compiled = Detector(None, backend=engine, config=net.config)
    eager = Detector(net)
    eager.input_size = (32, 48)
    assert compiled.input_size == (32, 48)
    np.testing.assert_allclose(compiled.score(frame), eager.score(frame), atol=ATOL)
    batch = np.stack([frame, frame[::-1]])  # static batch-1 engine: run in chunks
    np.testing.assert_allclose(compiled.score(batch), eager.score(batch), atol=ATOL)


def test_detector_from_bundle_uses_cached_artefact(lite):
    net, bundle = lite
    ensure_artefact(bundle, "torch-export", "fp32", InputShape.static(*net.config.encoder.input_size))
    detector = Detector.from_bundle(bundle, backend="torch-export", build=False)
    assert detector.model is None and detector.backend.name == "torch-export"
    frame = np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    np.testing.assert_allclose(detector.score(frame), Detector(net).score(frame), atol=ATOL)


def test_stale_key_rebuilds_or_refuses(lite, monkeypatch):
    _, bundle = lite
    shape = InputShape.static(32, 40)
    first = ensure_artefact(bundle, "torch-export", "fp32", shape)
    assert ensure_artefact(bundle, "torch-export", "fp32", shape, build=False) == first
    real = library_versions
    monkeypatch.setattr(cache, "library_versions", lambda b: {**real(b), "torch": "0.0-other"})
    with pytest.raises(ArtefactError, match=r"stale \(versions"):
        ensure_artefact(bundle, "torch-export", "fp32", shape, build=False)
    rebuilt = ensure_artefact(bundle, "torch-export", "fp32", shape)
    assert rebuilt != first and not first.exists()
    manifest = json.loads((rebuilt.parent / MANIFEST).read_text())
    assert manifest["key"]["versions"]["torch"] == "0.0-other"
    assert manifest["key"]["weights_sha256"] and manifest["key"]["device"] == "cpu"


def test_corrupt_artefact_is_refused(lite):
    _, bundle = lite
    shape = InputShape.static(32, 48)
    path = ensure_artefact(bundle, "torch-export", "fp32", shape)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ArtefactError, match="corrupt or was altered"):
        ensure_artefact(bundle, "torch-export", "fp32", shape)  # building allowed: still refused
    rebuilt = ensure_artefact(bundle, "torch-export", "fp32", shape, force=True)
    assert create_backend("torch-export", bundle, shape=shape)(torch.zeros(1, 3, 32, 48)).shape == (1, 32, 48)
    assert rebuilt == path


def test_program_with_pickled_inputs_is_refused(tmp_path, lite):
    program = export_program(lite[0], InputShape.static(64, 96), lite[0].encoder.pad_multiple)
    torch.export.save(program, str(tmp_path / "pickled.pt2"))  # keeps sample inputs (a pickle)
    with pytest.raises(ArtefactError, match="pickled sample inputs"):
        load_program(tmp_path / "pickled.pt2")
    save_program(program, tmp_path / "clean.pt2")
    assert load_program(tmp_path / "clean.pt2").module()(torch.zeros(1, 3, 64, 96)).shape == (1, 64, 96)


def test_fp32_only_backends_refuse_half(lite):
    _, bundle = lite
    with pytest.raises(BackendError, match="onnxruntime backend does not run fp16; fp16 runs on torch, tensorrt only"):
        create_backend("onnxruntime", bundle, precision="fp16")


def test_auto_falls_back_on_cpu(lite, caplog):
    _, bundle = lite
    with caplog.at_level(logging.WARNING):
        backend = create_backend("auto", bundle, shape=InputShape.static(32, 48))
    assert backend.name == "onnxruntime"
    assert "tensorrt unavailable" in caplog.text


def test_mixed_precision_keeps_norms_and_density_fp32(small_net):
    half = mixed_precision(small_net, torch.bfloat16)
    islands = [m for m in half.modules() if isinstance(m, Fp32Island)]
    assert islands and all(p.dtype == torch.float32 for m in islands for p in m.parameters())
    assert all(p.dtype == torch.float32 for b in half.bases for p in b.parameters())
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        out = half(x.bfloat16())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, small_net(x), atol=0.05, rtol=0)


@pytest.mark.skipif(tensorrt_unavailable("cuda") is not None, reason=f"{tensorrt_unavailable('cuda')}")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_matches_eager_and_reloads(lite, precision):
    net, bundle = lite
    shape = InputShape.static(*net.config.encoder.input_size)
    backend = create_backend("tensorrt", bundle, device="cuda", precision=precision, shape=shape)
    x = torch.randn(1, 3, *net.config.encoder.input_size)
    with torch.no_grad():
        eager = net.to("cuda")(x.cuda()).cpu()
    torch.testing.assert_close(backend(x).cpu(), eager, atol=1e-3 if precision == "fp32" else 2e-2, rtol=0)
    again = create_backend("tensorrt", bundle, device="cuda", precision=precision, shape=shape, build=False)
    torch.testing.assert_close(again(x).cpu(), backend(x).cpu())


def test_tensorrt_on_cpu_is_a_clear_error(lite):
    _, bundle = lite
    with pytest.raises(BackendError, match="tensorrt backend unavailable"):
        create_backend("tensorrt", bundle, device="cpu")
