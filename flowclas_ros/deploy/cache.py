"""The artefact cache inside a bundle: keys, manifests, verification, (re)building.

``BUNDLE/engines/<backend>-<precision>-<shape>-<hash>/`` holds the artefact and a
``manifest.json`` with its key (backend, precision, input shape, library versions, device,
the bundle's ``weights_sha256``) and the SHA-256 of every file. A key that does not match
the current one is stale: it is rebuilt when building is allowed, refused otherwise. A
file whose SHA-256 differs from the manifest, or that fails its format's audit, is refused
as unsafe, never used; one this machine did not build (:mod:`flowclas_ros.deploy.trust`) is
refused until rebuilt. Symlinks are never followed out of ``engines/``, and rebuilding
deletes only cache entries flowclas wrote (a folder holding our manifest and its files).
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

from flowclas_ros.deploy.archive import audit_program_archive
from flowclas_ros.deploy.compile import FILES, FORMATS, compile_artefact
from flowclas_ros.deploy.errors import ArtefactError, UnsafeArtefactError
from flowclas_ros.deploy.onnx_audit import audit_onnx
from flowclas_ros.deploy.quantize import DEFAULT_FRAMES
from flowclas_ros.deploy.quantize import SETTINGS as QUANTIZATION
from flowclas_ros.deploy.shapes import InputShape
from flowclas_ros.deploy.trust import built_here, record_built
from flowclas_ros.errors import UserError
from flowclas_ros.files import atomic_write, sha256
from flowclas_ros.model.bundle import load_bundle, read_bundle_config
from flowclas_ros.model.network import FlowCLASNet
from flowclas_ros.structured import expect_mapping, read_json

log = logging.getLogger(__name__)

ENGINES_DIR = "engines"
MANIFEST = "manifest.json"
MAX_PAD_MULTIPLE = 1024


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
    key = {
        "backend": backend,
        "precision": precision,
        "shape": shape.to_dict(),
        "versions": library_versions(backend),
        "device": device_name(device),
        "weights_sha256": meta.get("weights_sha256"),
    }
    if precision == "int8":  # an artefact quantised with other settings is stale
        key["quantization"] = dict(QUANTIZATION)
    return key


def _key_hash(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def _prefix(key: dict[str, Any]) -> str:
    return f"{key['backend']}-{key['precision']}-{InputShape.from_dict(key['shape']).label}-"


def artefact_dir(bundle: str | Path, key: dict[str, Any]) -> Path:
    """Where the artefact of ``key`` lives inside the bundle."""
    return Path(bundle) / ENGINES_DIR / (_prefix(key) + _key_hash(key))


def export_command(bundle: str | Path, key: dict[str, Any]) -> str:
    """The ``flowclas export`` command line that builds the artefact of ``key``."""
    shape = InputShape.from_dict(key["shape"])
    (h0, h1, h2), (w0, w1, w2) = shape.height, shape.width
    flags = [f"--height {h0} --width {w0}" if (h0, w0) == (h2, w2) else f"--min {h0}x{w0} --opt {h1}x{w1} --max {h2}x{w2}"]
    if shape.batch[2] > 1:
        flags.append(f"--max-batch {shape.batch[2]}")
    if key["precision"] != "fp32":
        flags.append(f"--precision {key['precision']}")
    if key["device"] != "cpu":
        flags.append("--device cuda")
    return f"flowclas export --model {bundle} --format {key['backend']} {' '.join(flags)}"


def _real_folder(path: Path) -> bool:
    """True when ``path`` exists; UnsafeArtefactError when it is a symlink or not a folder."""
    if not (path.exists() or path.is_symlink()):
        return False
    if path.is_symlink() or not path.is_dir():
        kind = "a symlink" if path.is_symlink() else "a file"
        raise UnsafeArtefactError(f"{path} is {kind}, not an artefact folder flowclas wrote; move it away and rerun")
    return True


def _manifest(directory: Path) -> dict[str, Any]:
    """The checked manifest of a cache entry (UnsafeArtefactError when missing or malformed)."""
    path = directory / MANIFEST
    advice = f"remove {directory} and rebuild with flowclas export"
    if path.is_symlink() or not path.is_file():
        raise UnsafeArtefactError(f"artefact manifest {path} is missing or not a regular file; {advice}")
    try:
        manifest = expect_mapping(read_json(path), str(path), empty_ok=False)
    except UserError as exc:
        raise UnsafeArtefactError(f"artefact manifest {exc}; {advice}") from None
    files, pad = manifest.get("files"), manifest.get("pad_multiple", 1)
    problem = None
    if not isinstance(manifest.get("key"), dict) or not isinstance(files, dict) or not files:
        problem = "has no key or files"
    elif not all(name in FILES.values() and isinstance(digest, str) for name, digest in files.items()):
        problem = "lists files flowclas never writes"
    elif not isinstance(pad, int) or isinstance(pad, bool) or not 1 <= pad <= MAX_PAD_MULTIPLE:
        problem = f"has a pad_multiple outside 1..{MAX_PAD_MULTIPLE}"
    if problem:
        raise UnsafeArtefactError(f"artefact manifest {path} {problem}; {advice}")
    return manifest


def read_manifest(artefact: Path) -> dict[str, Any]:
    """The checked manifest next to an artefact file."""
    return _manifest(artefact.parent)


def _audit(path: Path, backend: str) -> None:
    """The format's own audit (nothing is loaded); TensorRT engines are native code: trust only."""
    if backend == "torch-export":
        audit_program_archive(path)
    elif backend == "onnx":
        audit_onnx(path)


def verify_artefact(directory: Path, key: dict[str, Any]) -> Path:
    """Return the artefact file of ``directory`` once its manifest, SHA-256, audit and origin check out.

    Altered or unsafe (UnsafeArtefactError): a malformed manifest, a file that is not the
    regular file the manifest hashes, or one failing its format's audit. Not built on this
    machine (ArtefactError): a valid artefact missing from the local record
    (:mod:`flowclas_ros.deploy.trust`), e.g. one that came inside a bundle.
    """
    manifest = _manifest(directory)
    if manifest["key"] != key:
        raise ArtefactError(f"artefact {directory} was built for another key; rebuild it with flowclas export")
    name = FILES[key["backend"]]
    path = directory / name
    expected = manifest["files"].get(name)
    digest = sha256(path) if path.is_file() and not path.is_symlink() else None
    if expected is None or digest != expected:
        raise UnsafeArtefactError(
            f"artefact {path} is corrupt or was altered (SHA-256 differs from {MANIFEST}); refusing to use it - "
            f"delete {directory} or rebuild with flowclas export --force"
        )
    _audit(path, key["backend"])
    if not built_here(digest, key):
        command = export_command(directory.parent.parent, key)
        raise ArtefactError(f"{path} was not built on this machine; rebuild it with `{command} --force`")
    return path


def _stale_note(bundle: Path, key: dict[str, Any]) -> str:
    """Why existing artefacts of the same backend/precision/shape do not fit ``key``."""
    notes = []
    for entry in sorted((bundle / ENGINES_DIR).glob(_prefix(key) + "*")):
        try:
            old = _manifest(entry)["key"]
        except (ArtefactError, OSError):
            continue
        diff = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in key.items() if old.get(k) != v]
        notes.append(f"{entry.name} is stale ({'; '.join(diff)})")
    return "; ".join(notes)


def _removable(entry: Path) -> list[Path]:
    """The files of a cache entry flowclas wrote (to delete it); ArtefactError for anything else."""
    _real_folder(entry)
    try:
        listed = {*_manifest(entry)["files"], MANIFEST}
    except UnsafeArtefactError:
        raise UnsafeArtefactError(f"not removing {entry}: it has no valid {MANIFEST}, so flowclas did not write it; "
                                  "move it away and rerun") from None
    others = sorted(p.name for p in entry.iterdir() if p.name not in listed)
    if others:
        raise UnsafeArtefactError(f"not removing {entry}: it holds {others[0]!r}, which flowclas did not write; "
                                  "move it away and rerun")
    return [entry / name for name in listed]


def build_artefact(net: FlowCLASNet, bundle: str | Path, key: dict[str, Any], calibration: str | Path | None = None,
                   calibration_frames: int = DEFAULT_FRAMES) -> Path:
    """Build the artefact of ``key`` from (a copy of) ``net``, store it with its manifest, replace
    the stale entries of its backend/precision/shape (only folders flowclas wrote) and record it
    as built here; returns the file.

    ``calibration`` / ``calibration_frames``: int8 only (see :func:`compile_artefact`).
    """
    bundle = Path(bundle)
    shape = InputShape.from_dict(key["shape"])
    backend, precision = key["backend"], key["precision"]
    target = artefact_dir(bundle, key)
    engines = target.parent
    stale = {entry: _removable(entry) for entry in sorted(engines.glob(_prefix(key) + "*"))} if _real_folder(engines) else {}
    try:
        engines.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(dir=engines, prefix=".build-"))
    except OSError as exc:
        raise ArtefactError(f"cannot write artefacts into {bundle}: {exc.strerror}; copy the bundle somewhere writable") from None
    try:
        path = work / FILES[backend]
        device = "cuda" if key["device"].startswith("cuda") else key["device"]
        extra = compile_artefact(net, backend, precision, shape, device, path, calibration, calibration_frames)
        digest = sha256(path)
        manifest = {"key": key, "files": {path.name: digest}, "pad_multiple": net.encoder.pad_multiple,
                    "machine": platform.node(), **extra}
        atomic_write(work / MANIFEST, lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=2) + "\n"))
        for entry, files in stale.items():
            for file in files:
                file.unlink(missing_ok=True)
            entry.rmdir()
        work.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    record_built(target / FILES[backend], digest, key)
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

    A corrupt, unsafe or foreign artefact (not built on this machine) is refused even when
    building is allowed (it may have been tampered with); ``force`` rebuilds regardless
    (``flowclas export --force``), replacing only cache entries flowclas wrote. The calibration
    frames of an int8 artefact are not part of its key (any calibration gives a valid
    artefact); its manifest records them, and ``force`` rebuilds with others.
    """
    bundle = Path(bundle)
    key = artefact_key(bundle, backend, precision, shape, device)
    directory = artefact_dir(bundle, key)
    if _real_folder(directory.parent) and _real_folder(directory) and not force:
        return verify_artefact(directory, key)
    if not build and not force:
        stale = _stale_note(bundle, key)
        raise ArtefactError(
            f"no {backend} {precision} artefact for input {shape.label} in {bundle}"
            + (f": {stale}" if stale else "")
            + f"; build it with: {export_command(bundle, key)}"
        )
    return build_artefact(net if net is not None else load_bundle(bundle), bundle, key, calibration, calibration_frames)
