"""EfficientNet-Lite0: the packaged ImageNet weights really load and classify a photograph."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data

from flowclas_ros.model.encoders import EncoderConfig, WeightsError, build_encoder
from flowclas_ros.model.encoders.efficientnet import LITE_MEAN, LITE_STD, load_classifier

CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def _normalised(image: np.ndarray, size=(224, 224)) -> torch.Tensor:
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return (x - torch.tensor(LITE_MEAN).view(1, 3, 1, 1)) / torch.tensor(LITE_STD).view(1, 3, 1, 1)


def test_packaged_weights_classify_chelsea_as_a_cat():
    model = load_classifier("package")
    with torch.no_grad():
        probs = model(_normalised(data.chelsea())).softmax(-1)[0]
    assert int(probs.argmax()) in CAT_CLASSES
    assert float(probs[list(CAT_CLASSES)].sum()) > 0.8


def test_encoder_shares_the_classifier_trunk():
    encoder = build_encoder(EncoderConfig(layers=[4, 10, 15], weights="package"))
    classifier = load_classifier("package")
    assert encoder.channels == [40, 112, 320] and encoder.strides == [8, 16, 32]
    assert encoder.pad_multiple == 32
    assert not any(p.requires_grad for p in encoder.parameters())
    x = _normalised(data.chelsea(), size=(96, 128))
    with torch.no_grad():
        feats = encoder(x)
        h = F.relu6(classifier._bn0(classifier._conv_stem(x)))
        for block in classifier._blocks[:16]:
            h = block(h)
    assert [tuple(f.shape) for f in feats] == [(1, 40, 12, 16), (1, 112, 6, 8), (1, 320, 3, 4)]
    torch.testing.assert_close(feats[2], h)


def test_bad_weights_file_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(WeightsError, match="nope.pth"):
        build_encoder(EncoderConfig(weights=str(missing)))
    wrong = tmp_path / "wrong.pth"
    torch.save({"_conv_stem.weight": torch.zeros(8, 3, 3, 3)}, wrong)
    with pytest.raises(WeightsError, match=r"wrong.pth.*_conv_stem.weight"):
        build_encoder(EncoderConfig(weights=str(wrong)))


def test_bad_layer_index_is_rejected():
    with pytest.raises(ValueError, match="block indices"):
        build_encoder(EncoderConfig(layers=[16], weights=None))
