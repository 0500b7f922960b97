"""Import a checkpoint of the authors' FlowCLAS Lightning module as our model bundle.

The authors' module (TRAILab/FlowCLAS, ``core/models/flowclas``) keeps its torch model in
the attribute ``model``; its state-dict keys, with or without that ``model.`` prefix:

=====================================================  =========================================
authors' key                                           ours
=====================================================  =========================================
``norms.{i}.weight|bias`` (C)                          ``norms.{i}.weight|bias`` (1 x C x 1 x 1)
``flow_blocks.{i}.module_list.{3k}.loc|log_scale``     ``flows.{i}.steps.{k}.actnorm.loc|log_scale``
``flow_blocks.{i}.module_list.{3k}.is_initialized``    ``flows.{i}.steps.{k}.actnorm.initialized``
``flow_blocks.{i}.module_list.{3k+1}.perm|perm_inv``   ``flows.{i}.steps.{k}.permute.perm|inv``
``...{3k+2}.subnet.gn1|gn2|gn3.weight|bias``           ``...coupling.subnet.norms.0|1|2.weight|bias``
``...{3k+2}.subnet.conv1|conv2|conv3.weight``          ``...coupling.subnet.convs.0|1|2.weight``
``...{3k+2}.subnet.downsample.0|2.*``                  ``...coupling.subnet.skip.0|2.*``
``...{3k+2}.subnet.conv_out.weight``                   ``...coupling.subnet.out.weight``
``...{3k+2}.subnet.net.0|2.weight|bias`` (simple)      ``...coupling.subnet.conv1|conv2.weight|bias``
``base_dists.{i}.mu|log_scale`` (C)                    ``bases.{i}.mu|ls`` (1 x C x 1 x 1)
``proj_heads.{i}.weight|bias``                         ``projections.{i}.conv.weight|bias``
``seg_heads.{last}.{0,1,3}.*``                         ``seg_head.{0,1,3}.*``
``feature_extractor.{blocks,cls_token,...}``           ``encoder.vit.*`` (position grid resized)
``feature_extractor.reins.*``                          ``encoder.reins.*``
=====================================================  =========================================

Dropped: ``base_dists.{i}.log_normalizer`` (checked: it must equal ``-C/2 log 2 pi``), the
segmentation heads of scales other than the last (the authors train only that one), the
Rein query-linking layers, DINOv2's final ``norm`` and ``mask_token``, and the module's
bookkeeping outside ``model.`` (``prev_loss``, thresholds, metric states).

The authors' ``FlowCLASModel.state_dict`` drops the frozen backbone, so their Lightning
checkpoints usually hold only the heads: the encoder then comes from the model config
(``encoder.weights`` and ``encoder.options.rein.weights`` naming the DINOv2 and Rein files
they load). When the backbone is in the file, it is stored in the bundle.

Files are read with ``torch.load(weights_only=True)`` (or as safetensors) and only tensors are
accepted; a Lightning ``.ckpt`` pickles non-tensor objects (the data transform,
hyper-parameters) and is refused with the one-line recipe to extract its ``state_dict``.
"""

from __future__ import annotations

import logging
import math
import pickle
import re
from pathlib import Path

import torch
from torch import Tensor

from flowclas_ros.errors import UserError
from flowclas_ros.files import sha256
from flowclas_ros.model.bundle import BundleError, check_values, save_bundle
from flowclas_ros.model.config import FlowConfig, ModelConfig, read_config_file, with_head_defaults
from flowclas_ros.model.encoders import EncoderConfig, WeightsError
from flowclas_ros.model.encoders.dinov2 import VIT_SPECS, DINOv2Encoder, load_backbone, load_reins
from flowclas_ros.model.flow import split_channels
from flowclas_ros.model.network import FlowCLASNet
from flowclas_ros.model.torch_files import load_tensors

log = logging.getLogger(__name__)

# the authors' published crop (Cityscapes, 512 x 1024), statistics and clamp; used without --config
DEFAULT_INPUT_SIZE = (512, 1024)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
AUTHORS_CLAMP = 2.0
_BACKBONE = "feature_extractor."

_ACTNORM = {"loc": "loc", "log_scale": "log_scale", "is_initialized": "initialized"}
_PERMUTE = {"perm": "perm", "perm_inv": "inv"}
_RESIDUAL = {
    "gn1": "norms.0", "gn2": "norms.1", "gn3": "norms.2",
    "conv1": "convs.0", "conv2": "convs.1", "conv3": "convs.2",
    "downsample.0": "skip.0", "downsample.2": "skip.2", "conv_out": "out",
}
_SIMPLE = {"net.0": "conv1", "net.2": "conv2"}


class CheckpointError(UserError):
    """A checkpoint that cannot be read safely or does not look like the authors' FlowCLAS."""


def _first_line(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0][:160]
    return type(exc).__name__ + (f": {first}" if first else "")


def read_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a checkpoint: safetensors, or a torch file read with ``weights_only=True``.

    A ``state_dict`` entry (Lightning) is unwrapped; any non-tensor value inside it is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"cannot read {path} as safetensors: {exc}") from None
    try:
        data = load_tensors(path)
    except UserError as exc:
        raise CheckpointError(str(exc)) from None
    except pickle.UnpicklingError as exc:
        if "GLOBAL" not in str(exc):  # no pickled class or function met: garbage bytes, not a checkpoint
            raise CheckpointError(f"cannot read {path} as a torch weights file: {_first_line(exc)}") from None
        raise CheckpointError(  # weights_only met a pickled object: a Lightning checkpoint
            f"{path} pickles objects besides tensors (a Lightning checkpoint does). Where you trust the file "
            "and have the authors' environment, save its tensors alone: python -c \"import torch; c = "
            "torch.load('IN.ckpt', weights_only=False); torch.save(c['state_dict'], 'state_dict.pt')\"; "
            "then import state_dict.pt"
        ) from None
    except Exception as exc:  # noqa: BLE001 - truncated, corrupt or not a torch file
        raise CheckpointError(f"cannot read {path} as a torch weights file: {_first_line(exc)}") from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not data:
        raise CheckpointError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    bad = [str(k) for k, v in data.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{path}: the state dict holds entries that are not tensors: {', '.join(bad[:5])}")
    return data


def _model_keys(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Keys of the authors' torch model without the Lightning ``model.`` prefix; the rest."""
    if any(k.startswith("model.") for k in state):
        inner = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
        return inner, [k for k in state if not k.startswith("model.")]
    return dict(state), []


def _size(state: dict[str, Tensor], key: str, axis: int) -> int:
    """``state[key].shape[axis]``, or a CheckpointError when the tensor has too few dimensions."""
    shape = tuple(state[key].shape)
    if len(shape) <= axis:
        raise CheckpointError(f"{key} has shape {shape}: not the authors' layout")
    return int(shape[axis])


def _count(state: dict[str, Tensor], pattern: str) -> int:
    found = {int(m[1]) for k in state if (m := re.match(pattern, k))}
    if found and found != set(range(len(found))):
        raise CheckpointError(f"checkpoint indices {sorted(found)} of {pattern!r} are not 0..n-1")
    return len(found)


def infer_config(state: dict[str, Tensor], base: ModelConfig | None) -> ModelConfig:
    """Our model config for the authors' tensors: the architecture from their shapes, the rest
    (encoder, input size, normalisation, score variant) from ``base`` or the authors' defaults."""
    scales = _count(state, r"^norms\.(\d+)\.weight$")
    if scales == 0:
        raise CheckpointError("no feature LayerNorm (norms.0.weight): not a checkpoint of the authors' FlowCLAS")
    channels = [int(state[f"norms.{i}.weight"].numel()) for i in range(scales)]
    if min(channels) < 2:
        raise CheckpointError(f"feature LayerNorms of {channels} channels: a coupling flow needs at least 2")
    steps = _count(state, r"^flow_blocks\.0\.module_list\.(\d+)\.") // 3
    if steps == 0:
        raise CheckpointError("no coupling flow (flow_blocks.0.module_list.*): only the authors' FrEIA flows import")
    c1 = split_channels(channels[0])
    prefix = "flow_blocks.0.module_list.2.subnet."
    if f"{prefix}conv2.weight" in state:
        subnet, hidden = "residual", _size(state, f"{prefix}conv2.weight", 0)
    elif f"{prefix}net.0.weight" in state:
        subnet, hidden = "simple", _size(state, f"{prefix}net.0.weight", 0)
    else:
        raise CheckpointError(f"unknown coupling subnet: no {prefix}conv2.weight (residual) or net.0.weight (simple)")
    projection_dim = _size(state, "proj_heads.0.weight", 0) if "proj_heads.0.weight" in state else 0
    seg = f"seg_heads.{scales - 1}.3.weight"
    seg_classes = _size(state, seg, 0) if seg in state else 0

    if base is None:
        encoder = _encoder_from_backbone(state, channels)
        config = ModelConfig(encoder=encoder, mean=IMAGENET_MEAN, std=IMAGENET_STD)
        log.warning("no model config given: Cityscapes input size %s and ImageNet statistics assumed",
                    "x".join(map(str, DEFAULT_INPUT_SIZE)))
    else:
        config = base
        if any(k.startswith(_BACKBONE) for k in state):
            # the backbone comes from the checkpoint and is stored in the bundle
            config.encoder.weights = None
            if isinstance(config.encoder.options.get("rein"), dict):
                config.encoder.options["rein"] = {**config.encoder.options["rein"], "weights": None}
    flow = FlowConfig(steps=steps, subnet=subnet, hidden_ratio=hidden / c1, clamp=AUTHORS_CLAMP,
                      learnable_base=True, seed=config.flow.seed)
    if int(flow.hidden_ratio * c1) != hidden:
        raise CheckpointError(f"subnet width {hidden} is not a whole ratio of {c1} input channels")
    config.head, config.flow = "flowclas", flow
    config.projection_dim, config.seg_classes = projection_dim, seg_classes
    config.validate()
    return config


def _encoder_from_backbone(state: dict[str, Tensor], channels: list[int]) -> EncoderConfig:
    """The DINOv2 variant of the backbone tensors in the checkpoint (no config given)."""
    if not any(k.startswith(_BACKBONE) for k in state):
        raise CheckpointError(
            "the checkpoint holds no backbone (the authors' FlowCLASModel leaves it out of its state dict): "
            "pass --config with a model YAML naming encoder.weights (DINOv2) and encoder.options.rein.weights"
        )
    depth = _count(state, rf"^{re.escape(_BACKBONE)}blocks\.(\d+)\.")
    dim = channels[-1]
    registers = f"{_BACKBONE}register_tokens"
    count = _size(state, registers, 1) if registers in state else 0
    matches = [name for name, spec in VIT_SPECS.items()
               if spec.embed_dim == dim and spec.depth == depth and spec.registers == count]
    if not matches:
        raise CheckpointError(f"no DINOv2 variant has {depth} blocks of width {dim}")
    options = {}
    tokens = f"{_BACKBONE}reins.learnable_tokens_a"
    if tokens in state:
        options["rein"] = {"weights": None, "token_length": _size(state, tokens, 1), "rank": _size(state, tokens, 2)}
    # the authors' Rein DINOv2 returns the last block's patch tokens
    return EncoderConfig(name=matches[0], layers=[depth - 1], weights=None, input_size=DEFAULT_INPUT_SIZE,
                         options=options)


def _as_channels(t: Tensor) -> Tensor:
    return t.reshape(1, -1, 1, 1)


def map_head_keys(state: dict[str, Tensor], config: ModelConfig) -> tuple[dict[str, Tensor], list[str]]:
    """Our head tensors (everything but the encoder) from the authors' keys; returns (ours,
    authors' keys not used)."""
    ours: dict[str, Tensor] = {}
    used: set[str] = set()
    scales = _count(state, r"^norms\.(\d+)\.weight$")
    table = _RESIDUAL if config.flow.subnet == "residual" else _SIMPLE

    def take(key: str, target: str, reshape=None) -> None:
        value = state[key]
        ours[target] = reshape(value) if reshape else value
        used.add(key)

    for i in range(scales):
        for p in ("weight", "bias"):
            take(f"norms.{i}.{p}", f"norms.{i}.{p}", _as_channels)
        for k in range(config.flow.steps):
            src, dst = f"flow_blocks.{i}.module_list", f"flows.{i}.steps.{k}"
            for theirs, mine in _ACTNORM.items():
                key = f"{src}.{3 * k}.{theirs}"
                if key in state:
                    take(key, f"{dst}.actnorm.{mine}", None if mine == "initialized" else _as_channels)
            for theirs, mine in _PERMUTE.items():
                key = f"{src}.{3 * k + 1}.{theirs}"
                if key not in state:
                    raise CheckpointError(f"{key} is missing: the permutation of step {k} is not in the checkpoint "
                                          "(FrEIA versions before the one the authors pin kept it outside the state dict)")
                take(key, f"{dst}.permute.{mine}", lambda t: t.long())
            sub = f"{src}.{3 * k + 2}.subnet."
            for key in [key for key in state if key.startswith(sub)]:
                rest = key[len(sub):]
                module, _, param = rest.rpartition(".")
                if module not in table:
                    raise CheckpointError(f"unknown subnet tensor {key}")
                take(key, f"{dst}.coupling.subnet.{table[module]}.{param}")
        base_mu, base_ls = f"base_dists.{i}.mu", f"base_dists.{i}.log_scale"
        take(base_mu, f"bases.{i}.mu", _as_channels)
        take(base_ls, f"bases.{i}.ls", _as_channels)
        normalizer = state.get(f"base_dists.{i}.log_normalizer")
        if normalizer is not None:
            c = state[base_mu].numel()
            if normalizer.numel() != 1 or not math.isclose(float(normalizer), -0.5 * c * math.log(2 * math.pi), rel_tol=1e-5):
                raise CheckpointError(f"base_dists.{i}.log_normalizer {normalizer.flatten()[:1].tolist()} is not -C/2 log(2 pi)")
            used.add(f"base_dists.{i}.log_normalizer")
        if config.projection_dim:
            for p in ("weight", "bias"):
                take(f"proj_heads.{i}.{p}", f"projections.{i}.conv.{p}")
    if config.seg_classes:
        last = f"seg_heads.{scales - 1}."
        for key in [key for key in state if key.startswith(last)]:
            take(key, "seg_head." + key[len(last):])
    unused = [k for k in state if k not in used and not k.startswith(_BACKBONE)]
    return ours, unused


def _load_encoder(net: FlowCLASNet, state: dict[str, Tensor], source: str) -> None:
    """Load the backbone (and Rein) tensors of the checkpoint into our DINOv2 encoder."""
    backbone = {k[len(_BACKBONE):]: v for k, v in state.items() if k.startswith(_BACKBONE)}
    encoder = net.encoder
    if not isinstance(encoder, DINOv2Encoder):
        raise CheckpointError(f"the checkpoint's backbone is a DINOv2 ViT, the config names {net.config.encoder.name}")
    try:
        load_backbone(encoder.vit, backbone, source, encoder.spec)
        reins = {k: v for k, v in backbone.items() if k.startswith("reins.")}
        if reins and encoder.reins is None:
            raise CheckpointError("the checkpoint has Rein adapters; the config's encoder has none (options.rein)")
        if encoder.reins is not None:
            if not reins:
                raise CheckpointError("the config's encoder has Rein adapters; the checkpoint has none")
            load_reins(encoder.reins, reins, source, encoder.spec.depth)
    except WeightsError as exc:
        raise CheckpointError(str(exc)) from None


def read_model_yaml(path: str | Path) -> ModelConfig:
    """A model config from a YAML file: a model mapping, or a whole recipe (its ``model:``)."""
    data = read_config_file(path, "config")
    if isinstance(data.get("model"), dict):
        data = data["model"]
    return ModelConfig.from_dict(with_head_defaults(data))


def import_checkpoint(checkpoint: str | Path, output: str | Path, config: ModelConfig | str | Path | None = None) -> Path:
    """Read the authors' checkpoint, map it onto our network and write the bundle ``output``.

    ``config``: a :class:`ModelConfig` or a model YAML path for what the tensors do not fix
    (encoder and its weights, input size, normalisation, score variant); None infers a DINOv2
    backbone from the checkpoint and assumes the Cityscapes settings.
    """
    path = Path(checkpoint)
    state, extra = _model_keys(read_checkpoint(path))
    if extra:
        log.info("ignoring %d entries outside the model: %s", len(extra), ", ".join(extra[:5]))
    base = read_model_yaml(config) if isinstance(config, (str, Path)) else config
    model_config = infer_config(state, base)
    heads, unused = map_head_keys(state, model_config)
    leftover = [k for k in unused if not re.match(r"^seg_heads\.\d+\.", k)]
    if leftover:
        raise CheckpointError(f"checkpoint tensors with no counterpart here: {', '.join(leftover[:5])}")
    if unused:
        log.info("dropping %d tensors of segmentation heads of other scales (untrained by the authors)", len(unused))
    has_backbone = any(k.startswith(_BACKBONE) for k in state)
    if not has_backbone and model_config.encoder.weights is None:
        raise CheckpointError("the checkpoint holds no backbone and the config gives no encoder.weights to load it from")
    model_config.training = {"imported_from": path.name, "checkpoint_sha256": sha256(path)}
    try:
        net = FlowCLASNet(model_config)
    except (WeightsError, ValueError) as exc:
        raise CheckpointError(f"cannot build the encoder: {exc}") from None
    if has_backbone:
        _load_encoder(net, state, str(path))
    own = net.head_state_dict()
    missing = [k for k in own if k not in heads and not k.endswith(".initialized")]
    wrong = [f"{k} {tuple(v.shape)} != {tuple(own[k].shape)}" for k, v in heads.items()
             if k in own and tuple(v.shape) != tuple(own[k].shape)]
    stray = [k for k in heads if k not in own]
    if missing or wrong or stray:
        problems = [f"{label}: {', '.join(items[:5])}" for label, items in
                    (("missing", missing), ("mismatched", wrong), ("unexpected", stray)) if items]
        raise CheckpointError(f"{path} does not fit the inferred network: " + "; ".join(problems))
    with torch.no_grad():
        for key, value in heads.items():
            own[key].copy_(value.to(own[key].dtype))
        for module in net.modules():  # a trained checkpoint: never re-initialise from data
            if hasattr(module, "initialized") and isinstance(module.initialized, Tensor):
                module.initialized.fill_(True)
    try:
        check_values(net, path)
    except BundleError as exc:
        raise CheckpointError(str(exc)) from None
    return save_bundle(net.eval(), output)
