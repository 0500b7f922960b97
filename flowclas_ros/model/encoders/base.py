"""The encoder interface and the registry that builds encoders by name."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from safetensors.torch import load_file
from torch import Tensor, nn

from flowclas_ros.errors import UserError
from flowclas_ros.model.torch_files import load_tensors


class WeightsError(UserError):
    """A pretrained weights file is missing, unreadable or does not fit the encoder."""


@dataclass
class EncoderConfig:
    """What selects and configures a frozen feature encoder.

    name: registry name, e.g. ``efficientnet_lite0`` or ``dinov2_vitb14``.
    layers: indices of the blocks whose outputs are the feature maps (one flow each).
    weights: where pretrained weights come from: a file path, ``"package"`` for weights
        shipped in a Python package, or ``None`` for random initialisation (tests only).
    input_size: (height, width) the model runs at; ViTs size their position embedding
        for it once, at build time.
    options: encoder-specific settings (for example Rein adapter settings).
    """

    name: str = "efficientnet_lite0"
    layers: list[int] = field(default_factory=lambda: [4, 10])
    weights: str | None = "package"
    input_size: tuple[int, int] = (480, 640)
    options: dict = field(default_factory=dict)


class Encoder(nn.Module):
    """A frozen backbone mapping a normalised image batch to a list of feature maps.

    Subclasses set ``channels`` and ``strides`` (one entry per configured layer) and
    ``pad_multiple`` (input height and width are padded to a multiple of it), and
    implement ``forward(x) -> list[Tensor]`` returning ``B x C_i x H/s_i x W/s_i`` maps.
    ``forward`` must be traceable by ``torch.export`` (no data-dependent Python branches).
    """

    channels: list[int]
    strides: list[int]
    pad_multiple: int

    def forward(self, x: Tensor) -> list[Tensor]:  # pragma: no cover - interface
        """Feature maps ``B x C_i x h_i x w_i`` of the configured layers for a normalised batch."""
        raise NotImplementedError


EncoderBuilder = Callable[[EncoderConfig], Encoder]
EncoderCheck = Callable[[EncoderConfig], None]
_REGISTRY: dict[str, EncoderBuilder] = {}
_CHECKS: dict[str, EncoderCheck] = {}


def register_encoder(*names: str, check: EncoderCheck | None = None) -> Callable[[EncoderBuilder], EncoderBuilder]:
    """Decorator registering a builder ``fn(config) -> Encoder`` under one or more names;
    ``check(config)`` raises ValueError on layers or options the encoder does not take."""

    def wrap(fn: EncoderBuilder) -> EncoderBuilder:
        for name in names:
            _REGISTRY[name] = fn
            if check is not None:
                _CHECKS[name] = check
        return fn

    return wrap


def available_encoders() -> list[str]:
    """Names accepted by :func:`build_encoder`."""
    return sorted(_REGISTRY)


def check_encoder(config: EncoderConfig) -> None:
    """Raise ValueError unless ``config`` names a registered encoder with layers and options it takes
    (cheap: nothing is built or read)."""
    if config.name not in _REGISTRY:
        raise ValueError(f"unknown encoder {config.name!r}; available: {', '.join(available_encoders())}")
    if config.name in _CHECKS:
        _CHECKS[config.name](config)


def build_encoder(config: EncoderConfig) -> Encoder:
    """Build the encoder named in ``config``, load its weights and freeze it (eval mode)."""
    check_encoder(config)
    encoder = _REGISTRY[config.name](config)
    encoder.requires_grad_(False)
    return encoder.eval()


def check_state_dict(module: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """Load ``state`` into ``module`` strictly, or raise WeightsError naming the first mismatches."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {', '.join(missing[:5])}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected[:5])}")
    if wrong:
        problems.append(f"shape mismatches: {', '.join(wrong[:5])}")
    if problems:
        raise WeightsError(f"weights in {source} do not fit {type(module).__name__}: " + "; ".join(problems))
    module.load_state_dict(state, strict=True)


def read_weights(path: str | Path) -> dict[str, Tensor]:
    """Read the tensors of a ``.pth`` (``weights_only``) or ``.safetensors`` file.

    A directory means its ``model.safetensors``; tensors nested under a ``state_dict``
    entry (mmseg/mmengine checkpoints) are unwrapped.
    """
    file = Path(path)
    if file.is_dir():
        file = file / "model.safetensors"
    if not file.is_file():
        raise WeightsError(f"weights file not found: {file}")
    try:
        if file.suffix == ".safetensors":
            state = load_file(str(file), device="cpu")
        else:
            state = load_tensors(file)
    except Exception as err:  # unreadable, corrupt, or pickles non-tensor objects
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise WeightsError(
            f"cannot read weights {file} as safetensors or a weights-only torch file "
            f"(for mmengine checkpoints save the 'state_dict' entry alone): {type(err).__name__}: {first}"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # type: ignore[assignment]
    if not isinstance(state, dict):
        raise WeightsError(f"weights in {file} are not a dict of tensors")
    tensors = {k: v for k, v in state.items() if isinstance(v, Tensor)}
    if not tensors:
        raise WeightsError(f"weights in {file} hold no tensors")
    return tensors
