"""The model bundle: bit-identical round trip, and every kind of bad bundle refused."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from conftest import randomize_head, small_config
from safetensors.torch import save_file

from flowclas_ros.model import BundleError, FlowCLASNet, load_bundle, save_bundle
from flowclas_ros.model.bundle import CONFIG_FILE, WEIGHTS_FILE


def test_round_trip_is_bit_identical(tmp_path, small_net):
    x = torch.randn(2, 3, 64, 96)
    save_bundle(small_net, tmp_path / "b")
    loaded = load_bundle(tmp_path / "b")
    with torch.no_grad():
        assert torch.equal(small_net(x), loaded(x))
    assert loaded.config == small_net.config


def test_pretrained_encoder_is_referenced_not_stored(tmp_path):
    config = small_config()
    config.encoder.weights = "package"
    net = randomize_head(FlowCLASNet(config)).eval()
    save_bundle(net, tmp_path / "b")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "b" / WEIGHTS_FILE), "pt") as f:
        assert not any(k.startswith("encoder.") for k in f.keys())
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(net(x), load_bundle(tmp_path / "b")(x))


@pytest.fixture
def bundle(tmp_path, small_net):
    return save_bundle(small_net, tmp_path / "bundle")


def _edit_config(bundle, edit):
    meta = json.loads((bundle / CONFIG_FILE).read_text())
    edit(meta)
    (bundle / CONFIG_FILE).write_text(json.dumps(meta))


def test_missing_bundle(tmp_path):
    with pytest.raises(BundleError, match="not found"):
        load_bundle(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="config.json is missing"):
        load_bundle(tmp_path / "empty")


def test_truncated_weights(bundle):
    data = (bundle / WEIGHTS_FILE).read_bytes()
    (bundle / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match="corrupt or truncated"):
        load_bundle(bundle)


def test_flipped_byte_in_weights(bundle):
    data = bytearray((bundle / WEIGHTS_FILE).read_bytes())
    data[-10] ^= 0xFF
    (bundle / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(BundleError, match="corrupt or truncated"):
        load_bundle(bundle)


def test_corrupt_config(bundle):
    (bundle / CONFIG_FILE).write_text("{not json")
    with pytest.raises(BundleError, match="corrupt bundle config"):
        load_bundle(bundle)


def test_other_format_version(bundle):
    _edit_config(bundle, lambda m: m.update(format_version=99))
    with pytest.raises(BundleError, match="format version 99"):
        load_bundle(bundle)


def test_version_1_bundle_is_refused_naming_both_versions(bundle):
    _edit_config(bundle, lambda m: m.update(format_version=1))
    with pytest.raises(BundleError, match=r"format version 1; this flowclas reads version 2; .*cannot be converted.*retrain"):
        load_bundle(bundle)


def test_unknown_config_key(bundle):
    _edit_config(bundle, lambda m: m["model"].update(colour="red"))
    with pytest.raises(BundleError, match="unknown key.*colour"):
        load_bundle(bundle)


def test_tensors_not_matching_config(bundle):
    # Config says 3 flow steps, tensors hold 2: refused by name, even with a valid checksum.
    _edit_config(bundle, lambda m: m["model"]["flow"].update(steps=3))
    with pytest.raises(BundleError, match=r"missing: .*flows\.0\.steps\.2"):
        load_bundle(bundle)


def test_wrong_dtype_tensor_refused(bundle, small_net):
    tensors = {k: v.contiguous() for k, v in small_net.state_dict().items()}
    key = "bases.0.mu"
    tensors[key] = tensors[key].double()
    save_file(tensors, str(bundle / WEIGHTS_FILE))
    from flowclas_ros.files import sha256 as _sha256

    _edit_config(bundle, lambda m: m.update(weights_sha256=_sha256(bundle / WEIGHTS_FILE)))
    with pytest.raises(BundleError, match="mismatched: bases.0.mu"):
        load_bundle(bundle)


class _Boom:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('x')",))


def test_pickle_payload_cannot_execute(bundle, tmp_path, monkeypatch):
    """A hostile weights file holding a pickle is refused without being unpickled."""
    monkeypatch.chdir(tmp_path)
    payload = pickle.dumps({"bases.0.mu": _Boom()})
    (bundle / WEIGHTS_FILE).write_bytes(payload)
    from flowclas_ros.files import sha256 as _sha256

    _edit_config(bundle, lambda m: m.update(weights_sha256=_sha256(bundle / WEIGHTS_FILE)))
    with pytest.raises(BundleError, match="cannot read"):
        load_bundle(bundle)
    assert not (tmp_path / "PWNED").exists()


def test_relative_encoder_weights_mean_beside_the_bundle_not_the_working_directory(tmp_path, monkeypatch):
    import shutil

    from flowclas_ros.model.encoders import EncoderConfig
    from flowclas_ros.model.encoders.efficientnet import packaged_weights_path

    packaged = packaged_weights_path()
    workdir = tmp_path / "made_here"
    workdir.mkdir()
    shutil.copyfile(packaged, workdir / "enc.pth")
    monkeypatch.chdir(workdir)
    encoder = EncoderConfig(name="efficientnet_lite0", layers=[2, 4], weights="enc.pth", input_size=(64, 96))
    bundle = save_bundle(FlowCLASNet(small_config(encoder=encoder)), tmp_path / "bundle")
    saved = json.loads((bundle / CONFIG_FILE).read_text())["model"]["encoder"]["weights"]
    assert saved == str(workdir / "enc.pth")  # made absolute: what the path meant when saved

    meta = json.loads((bundle / CONFIG_FILE).read_text())
    meta["model"]["encoder"]["weights"] = "enc.pth"  # a hand-made, portable bundle
    (bundle / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=str(bundle.resolve() / "enc.pth")):
        load_bundle(bundle)  # the working directory's enc.pth is never picked up
    shutil.copyfile(packaged, bundle / "enc.pth")
    monkeypatch.chdir(tmp_path)
    assert load_bundle(bundle).config.encoder.weights == str(bundle.resolve() / "enc.pth")
