"""The artefact cache inside a bundle: keys, manifests, verification, (re)building.

``BUNDLE/engines/<backend>-<precision>-<shape>-<hash>/`` holds the artefact and a
``manifest.json`` with its key (backend, precision, input shape, library versions, device,
the bundle's ``weights_sha256``) and the SHA-256 of every file. A key that does not match
the current one is stale: it is rebuilt when building is allowed, refused otherwise; a
file whose SHA-256 differs from the manifest is refused, never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from flowclas_ros.deploy.compile import FILES, FORMATS, compile_artefact
from flowclas_ros.deploy.errors import ArtefactError
from flowclas_ros.deploy.quantize import DEFAULT_FRAMES
from flowclas_ros.deploy.shapes import InputShape
from flowclas_ros.files import atomic_write, sha256
from flowclas_ros.model.bundle import load_bundle, read_bundle_config
from flowclas_ros.model.network import FlowCLASNet

log = logging.getLogger(__name__)

ENGINES_DIR = "engines"
MANIFEST = "manifest.json"


def library_versions(backend: str) -> dict[str, str]:
    """Versions that make an artefact of ``backend`` valid."""
    from importlib.metadata import PackageNotFoundError, version

    names = {"torch-export": ["torch"], "onnx": ["torch", "onnxruntime"],
             "tensorrt": ["torch", "torch_tensorrt", "tensorrt"]}[backend]
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "missing"
    return found


def device_name(device: str | torch.device) -> str:
    """``cpu`` or the GPU's name (a TensorRT engine only runs on the GPU it was built for)."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return device.type


def artefact_key(bundle: str | Path, backend: str, precision: str, shape: InputShape, device: str) -> dict[str, Any]:
    """Everything that makes an artefact valid for this bundle on this machine."""
    if backend not in FORMATS:
        raise ArtefactError(f"unknown export format {backend!r}; use one of {', '.join(FORMATS)}")
    _, meta = read_bundle_config(bundle)
    return {
        "backend": backend,
        "precision": precision,
        "shape": shape.to_dict(),
        "versions": library_versions(backend),
        "device": device_name(device),
        "weights_sha256": meta.get("weights_sha256"),
    }


def _key_hash(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def _prefix(key: dict[str, Any]) -> str:
    return f"{key['backend']}-{key['precision']}-{InputShape.from_dict(key['shape']).label}-"


def artefact_dir(bundle: str | Path, key: dict[str, Any]) -> Path:
    """Where the artefact of ``key`` lives inside the bundle."""
    return Path(bundle) / ENGINES_DIR / (_prefix(key) + _key_hash(key))


def read_manifest(artefact: Path) -> dict[str, Any]:
    """The manifest next to a verified artefact file."""
    return json.loads((artefact.parent / MANIFEST).read_text())


def verify_artefact(directory: Path, key: dict[str, Any]) -> Path:
    """Return the artefact file of ``directory`` after checking its manifest and SHA-256."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtefactError(f"artefact manifest {directory / MANIFEST} is unreadable: {exc}") from None
    if manifest.get("key") != key:
        raise ArtefactError(f"artefact {directory} was built for another key; rebuild it with flowclas export")
    name = FILES[key["backend"]]
    path = directory / name
    expected = manifest.get("files", {}).get(name)
    if not path.is_file() or expected is None or sha256(path) != expected:
        raise ArtefactError(
            f"artefact {path} is corrupt or was altered (SHA-256 differs from {MANIFEST}); refusing to use it - "
            f"delete {directory} or rebuild with flowclas export --force"
        )
    return path


def _stale_note(bundle: Path, key: dict[str, Any]) -> str:
    """Why existing artefacts of the same backend/precision/shape do not fit ``key``."""
    notes = []
    for manifest in sorted((bundle / ENGINES_DIR).glob(_prefix(key) + "*/" + MANIFEST)):
        try:
            old = json.loads(manifest.read_text()).get("key", {})
        except (OSError, json.JSONDecodeError):
            continue
        diff = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in key.items() if old.get(k) != v]
        notes.append(f"{manifest.parent.name} is stale ({'; '.join(diff)})")
    return "; ".join(notes)


def build_artefact(net: FlowCLASNet, bundle: str | Path, key: dict[str, Any], calibration: str | Path | None = None,
                   calibration_frames: int = DEFAULT_FRAMES) -> Path:
    """Build the artefact of ``key`` from (a copy of) ``net`` and store it with its manifest; returns the file.

    ``calibration`` / ``calibration_frames``: int8 only (see :func:`compile_artefact`).
    """
    bundle = Path(bundle)
    shape = InputShape.from_dict(key["shape"])
    backend, precision = key["backend"], key["precision"]
    target = artefact_dir(bundle, key)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(dir=target.parent, prefix=".build-"))
    except OSError as exc:
        raise ArtefactError(f"cannot write artefacts into {bundle}: {exc.strerror}; copy the bundle somewhere writable") from None
    try:
        path = work / FILES[backend]
        device = "cuda" if key["device"].startswith("cuda") else key["device"]
        extra = compile_artefact(net, backend, precision, shape, device, path, calibration, calibration_frames)
        manifest = {"key": key, "files": {path.name: sha256(path)}, "pad_multiple": net.encoder.pad_multiple,
                    "machine": platform.node(), **extra}
        atomic_write(work / MANIFEST, lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=2) + "\n"))
        for stale in (bundle / ENGINES_DIR).glob(_prefix(key) + "*"):
            shutil.rmtree(stale)
        work.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("built %s artefact %s", backend, target)
    return target / FILES[backend]


def ensure_artefact(
    bundle: str | Path,
    backend: str,
    precision: str,
    shape: InputShape,
    device: str = "cpu",
    build: bool = True,
    force: bool = False,
    net: FlowCLASNet | None = None,
    calibration: str | Path | None = None,
    calibration_frames: int = DEFAULT_FRAMES,
) -> Path:
    """The verified artefact file for this key: reuse, (re)build when allowed, or refuse.

    A corrupt artefact is refused even when building is allowed (it may have been tampered
    with); ``force`` rebuilds regardless (``flowclas export --force``). The calibration
    frames of an int8 artefact are not part of its key (any calibration gives a valid
    artefact); its manifest records them, and ``force`` rebuilds with others.
    """
    bundle = Path(bundle)
    key = artefact_key(bundle, backend, precision, shape, device)
    directory = artefact_dir(bundle, key)
    if directory.is_dir() and not force:
        return verify_artefact(directory, key)
    if not build and not force:
        stale = _stale_note(bundle, key)
        raise ArtefactError(
            f"no {backend} {precision} artefact for input {shape.label} in {bundle}"
            + (f": {stale}" if stale else "")
            + f"; build it with: flowclas export --model {bundle} --format {backend}"
        )
    return build_artefact(net if net is not None else load_bundle(bundle), bundle, key, calibration, calibration_frames)
