"""The model bundle: a directory with ``config.json`` and ``weights.safetensors``.

No pickle anywhere: the config is JSON, tensors are safetensors, and the weights' SHA-256 is
recorded in the config so a truncated or altered file is refused before it is parsed.
Encoder weights are stored only when the encoder has no external weights reference
(random initialisation); otherwise the bundle names where they come from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import Tensor

from flowclas_ros import __version__
from flowclas_ros.errors import UserError
from flowclas_ros.files import atomic_write, sha256
from flowclas_ros.model.config import ConfigError, ModelConfig
from flowclas_ros.model.encoders import WeightsError
from flowclas_ros.model.flow import Permutation
from flowclas_ros.model.network import FlowCLASNet
from flowclas_ros.structured import read_json

FORMAT = "flowclas-bundle"
# 2: the authors' network (issue 10): ActNorm ``loc``/``log_scale``, the residual subnet
# without a norm before its output conv and with a normalised skip, LayerNorm eps 1e-5,
# centred black padding, the optional segmentation head, ``batch_sigmoid`` squashing.
# Version 1 bundles are refused, not converted: their residual subnets compute a different
# function (an extra GroupNorm + ReLU before the output conv) that no version 2 weights
# reproduce, so the only faithful upgrade is retraining.
FORMAT_VERSION = 2
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"


class BundleError(UserError):
    """A bundle is missing, corrupt, of another format version, or inconsistent."""


def _rebase_weight_paths(model: Any, base: Path) -> None:
    """Make the relative weight file paths in a model config dict (``encoder.weights``,
    ``encoder.options.rein.weights``) absolute against ``base``; names such as ``package``,
    URLs and anything not a string are left alone."""
    encoder = model.get("encoder") if isinstance(model, dict) else None
    if not isinstance(encoder, dict):
        return
    options = encoder.get("options")
    rein = options.get("rein") if isinstance(options, dict) else None
    for holder in (encoder, rein):
        if not isinstance(holder, dict):
            continue
        ref = holder.get("weights")
        if isinstance(ref, str) and ref and ref != "package" and "://" not in ref and not Path(ref).is_absolute():
            holder["weights"] = str(base / ref)


def save_bundle(model: FlowCLASNet, directory: str | Path) -> Path:
    """Write ``model`` as a bundle directory (created if needed); returns its path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = model.state_dict() if model.config.encoder.weights is None else model.head_state_dict()
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    weights = directory / WEIGHTS_FILE
    # serialised here and written by Python: a full disk is an OSError, not a SafetensorError
    atomic_write(weights, lambda tmp: Path(tmp).write_bytes(save(tensors)))
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "flowclas_version": __version__,
        "weights_sha256": sha256(weights),
        "model": model.config.to_dict(),
    }
    _rebase_weight_paths(meta["model"], Path.cwd())  # what a relative path meant when the bundle was made
    text = json.dumps(meta, indent=2) + "\n"
    atomic_write(directory / CONFIG_FILE, lambda tmp: Path(tmp).write_text(text))
    return directory


def read_bundle_config(directory: str | Path) -> tuple[ModelConfig, dict]:
    """Read and validate a bundle's config; returns (model config, whole metadata)."""
    directory = Path(directory)
    path = directory / CONFIG_FILE
    if not directory.is_dir():
        raise BundleError(f"model bundle not found: {directory} is not a directory")
    if not path.is_file():
        raise BundleError(f"not a model bundle: {path} is missing")
    try:
        meta = read_json(path)
    except UserError as exc:
        raise BundleError(f"corrupt bundle config: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise BundleError(f"{path} is not a flowclas bundle config (format tag missing)")
    found = meta.get("format_version")
    if found != FORMAT_VERSION:
        hint = (
            "; version 1 bundles predate the authors' network (different flow subnet and "
            "ActNorm) and cannot be converted: retrain with `flowclas train` or re-import with "
            "`flowclas import-checkpoint`"
            if found == 1 else ""
        )
        raise BundleError(
            f"{path} has bundle format version {repr(found)[:40]}; this flowclas reads version "
            f"{FORMAT_VERSION}{hint}"
        )
    # a relative weights path in a bundle means beside the bundle, never the working directory
    _rebase_weight_paths(meta.get("model"), directory.resolve())
    try:
        config = ModelConfig.from_dict(meta.get("model"))
    except ConfigError as exc:
        raise BundleError(f"invalid model config in {path}: {exc}") from None
    return config, meta


def load_bundle(directory: str | Path, device: str | torch.device = "cpu") -> FlowCLASNet:
    """Load a bundle into an eval-mode network on ``device``; refuse anything inconsistent."""
    directory = Path(directory)
    config, meta = read_bundle_config(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise BundleError(f"bundle {directory} has no {WEIGHTS_FILE}")
    if sha256(weights) != meta.get("weights_sha256"):
        raise BundleError(f"{weights} is corrupt or truncated (SHA-256 differs from config.json)")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise BundleError(f"cannot read {weights}: {exc}") from None
    try:
        model = FlowCLASNet(config)
    except WeightsError as exc:
        raise BundleError(f"bundle {directory}: encoder weights: {exc}") from None
    expected = model.state_dict() if config.encoder.weights is None else model.head_state_dict()
    _check_tensors(expected, tensors, weights)
    model.load_state_dict(tensors, strict=False)
    check_values(model, directory)
    return model.to(device).eval()


def check_values(model: FlowCLASNet, directory: str | Path) -> None:
    """Raise BundleError on non-finite numbers in any tensor (bundle or encoder weights) and permutations
    that are not: caught at load, not as NaN scores ("all clear") or an index error at inference."""
    bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise BundleError(f"{directory}: non-finite values (NaN or infinity) in {', '.join(bad[:5])}")
    for name, module in model.named_modules():
        if isinstance(module, Permutation):
            try:
                module.check()
            except ValueError as exc:
                raise BundleError(f"{directory}: {name}: {exc}") from None


def _check_tensors(expected: dict[str, Tensor], found: dict[str, Tensor], source: Path) -> None:
    missing = [k for k in expected if k not in found]
    extra = [k for k in found if k not in expected]
    wrong = [
        f"{k} {tuple(found[k].shape)}/{found[k].dtype} != {tuple(v.shape)}/{v.dtype}"
        for k, v in expected.items()
        if k in found and (found[k].shape != v.shape or found[k].dtype != v.dtype)
    ]
    problems = [
        f"{label}: {', '.join(items[:5])}"
        for label, items in (("missing", missing), ("unexpected", extra), ("mismatched", wrong))
        if items
    ]
    if problems:
        raise BundleError(f"tensors in {source} do not match the config: " + "; ".join(problems))
