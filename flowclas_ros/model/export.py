"""Compiled artefacts of the whole score-map module and their cache inside the bundle.

Formats (all take the complete ``FlowCLASNet.forward``: padding, encoder, LayerNorms,
flows, scoring, upsampling; only pre- and post-processing stay in Python):

* ``torch-export``: a ``torch.export.ExportedProgram`` saved with ``torch.export.save``.
* ``onnx``: the dynamo exporter (``torch.onnx.export(..., dynamo=True)``, opset 18),
  checked with ``onnx.checker``; run with ONNX Runtime.
* ``tensorrt``: torch-tensorrt's dynamo path on the ExportedProgram, saved with
  ``torch_tensorrt.save`` and reloaded with ``torch_tensorrt.load`` (no recompilation).
  Imported lazily; only APIs present in torch-tensorrt 2.8 are used.

Input shapes: static (one batch size and HxW), or ranges (min, opt, max) per dimension.
Dynamic height and width must be multiples of the encoder's ``pad_multiple`` (the padding
then vanishes from the graph); ViT encoders size their position embedding at build time,
so for them height and width are fixed to the bundle's ``input_size``.

Cache: ``BUNDLE/engines/<backend>-<precision>-<shape>-<hash>/`` holds the artefact and a
``manifest.json`` with its key (backend, precision, input shape, library versions, device,
the bundle's ``weights_sha256``) and the SHA-256 of every file. A key that does not match
the current one is stale: it is rebuilt when building is allowed, refused otherwise; a
file whose SHA-256 differs from the manifest is refused, never used.

Trust: ``torch.export.load`` (torch 2.13, "pt2 archive" zip) reads plain tensors as raw
bytes and the graph as JSON whose call targets resolve to registered torch operators, but
it also unpickles (``torch.load(weights_only=False)``, ``pickle.loads``) tensor
subclasses, custom/opaque objects, sample inputs whose weights-only load fails, and, as
a fallback, the older 2.7 zip layout. :func:`load_program` therefore audits the archive
first and refuses any of those; we save without sample inputs. A TensorRT engine is
native GPU code by nature: build it on the machine that runs it (``flowclas export``)
and load only engines you built - a bundle from a stranger should carry none.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import platform
import re
import shutil
import tempfile
import warnings
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from flowclas_ros.model.bundle import BundleError, _atomic_write, _sha256, load_bundle, read_bundle_config
from flowclas_ros.model.flow import ChannelLayerNorm, DiagonalGaussian
from flowclas_ros.model.network import FlowCLASNet

log = logging.getLogger(__name__)

FORMATS = ("torch-export", "onnx", "tensorrt")
FILES = {"torch-export": "model.pt2", "onnx": "model.onnx", "tensorrt": "model.ep"}
ENGINES_DIR = "engines"
MANIFEST = "manifest.json"
OPSET = 18
INPUT_NAME, OUTPUT_NAME = "image", "score"
Range = tuple[int, int, int]


class ArtefactError(BundleError):
    """A compiled artefact is missing, stale, corrupt, unsafe or cannot be built here."""


@dataclass(frozen=True)
class InputShape:
    """Batch, height and width as (min, opt, max); a dimension is static when min == max."""

    batch: Range
    height: Range
    width: Range

    @classmethod
    def static(cls, height: int, width: int, batch: int = 1) -> "InputShape":
        return cls((batch,) * 3, (height,) * 3, (width,) * 3)

    def __post_init__(self) -> None:
        for name, (lo, opt, hi) in (("batch", self.batch), ("height", self.height), ("width", self.width)):
            if not 1 <= lo <= opt <= hi:
                raise ArtefactError(f"{name} range must satisfy 1 <= min <= opt <= max, got {(lo, opt, hi)}")

    @property
    def is_static(self) -> bool:
        return all(r[0] == r[2] for r in (self.batch, self.height, self.width))

    @property
    def opt(self) -> tuple[int, int, int]:
        """The (batch, height, width) the engine is tuned for."""
        return self.batch[1], self.height[1], self.width[1]

    def accepts(self, batch: int, height: int, width: int) -> bool:
        """True when a ``batch x 3 x height x width`` input fits the ranges."""
        return all(r[0] <= v <= r[2] for r, v in ((self.batch, batch), (self.height, height), (self.width, width)))

    @property
    def label(self) -> str:
        """Short text for folder names and tables, e.g. ``b1-8x480x640``."""

        def part(r: Range) -> str:
            return str(r[0]) if r[0] == r[2] else f"{r[0]}-{r[2]}"

        return f"b{part(self.batch)}x{part(self.height)}x{part(self.width)}"

    def to_dict(self) -> dict[str, list[int]]:
        return {k: list(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "InputShape":
        try:
            return cls(*(tuple(int(v) for v in data[k]) for k in ("batch", "height", "width")))
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtefactError(f"invalid input shape {data!r}: {exc}") from None


def check_shape(net: FlowCLASNet, shape: InputShape) -> None:
    """Raise ArtefactError when the network cannot be exported for ``shape``."""
    fixed = getattr(net.encoder, "input_size", None)  # ViTs: position embedding built for one grid
    size = tuple(net.config.encoder.input_size)
    if fixed is not None and (shape.height[0] != shape.height[2] or shape.width[0] != shape.width[2]
                              or (shape.height[0], shape.width[0]) != size):
        raise ArtefactError(
            f"encoder {net.config.encoder.name} runs at a fixed input size {size[0]}x{size[1]}; "
            "export it with that static height and width (batch may vary)"
        )
    multiple = net.encoder.pad_multiple
    for name, r in (("height", shape.height), ("width", shape.width)):
        if r[0] != r[2] and any(v % multiple for v in r):
            raise ArtefactError(
                f"a dynamic {name} range {r} must use multiples of {multiple} (the encoder's padding unit)"
            )


def _dims(shape: InputShape, multiple: int) -> dict[int, Any]:
    dims: dict[int, Any] = {}
    if shape.batch[0] != shape.batch[2]:
        dims[0] = torch.export.Dim("batch", min=shape.batch[0], max=shape.batch[2])
    for axis, name, r in ((2, "height", shape.height), (3, "width", shape.width)):
        if r[0] != r[2]:
            dims[axis] = torch.export.Dim(name, min=r[0] // multiple, max=r[2] // multiple) * multiple
    return dims


def example_input(shape: InputShape, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> Tensor:
    """A tracing input at the opt shape; dynamic dimensions avoid the sizes 0/1 that export specialises."""
    b, h, w = shape.opt
    if shape.batch[0] != shape.batch[2]:
        b = min(max(b, 2), shape.batch[2])
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(0)).to(device, dtype)


def export_program(net: nn.Module, shape: InputShape, multiple: int, dtype: torch.dtype = torch.float32) -> torch.export.ExportedProgram:
    """``torch.export`` the score-map module for ``shape`` (dynamic dimensions via ``Dim``)."""
    device = next(net.parameters()).device
    x = example_input(shape, dtype, device)
    dims = _dims(shape, multiple)
    with torch.no_grad():
        return torch.export.export(net.eval(), (x,), dynamic_shapes=({**dims},) if dims else None)


def save_program(program: torch.export.ExportedProgram, path: Path) -> None:
    """``torch.export.save`` without the sample inputs (they would be pickled)."""
    program = copy.copy(program)
    program.example_inputs = None
    torch.export.save(program, str(path))


# Entries a safe pt2 archive may hold (under one top-level folder).
_SAFE_ENTRY = re.compile(
    r"[^/]+/(archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id|"
    r"models/[\w.-]+\.json|data/(weights|constants)/[\w.-]+|data/sample_inputs/[\w.-]+)"
)


def audit_program_archive(path: Path) -> None:
    """Refuse a pt2 archive that would make ``torch.export.load`` unpickle anything."""
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                name = info.filename
                if not _SAFE_ENTRY.fullmatch(name):
                    raise ArtefactError(f"{path}: unexpected entry {name!r}; refusing to load")
                if "/data/sample_inputs/" in name and info.file_size:
                    raise ArtefactError(f"{path}: holds pickled sample inputs; refusing to load")
                if name.endswith("_config.json"):
                    config = json.loads(archive.read(info)).get("config", {})
                    for fqn, meta in config.items():
                        if meta.get("use_pickle") or not str(meta.get("path_name", "")).startswith(("weight_", "tensor_")):
                            raise ArtefactError(f"{path}: {fqn} is a pickled object; refusing to load")
    except (zipfile.BadZipFile, json.JSONDecodeError, AttributeError) as exc:
        raise ArtefactError(f"{path} is not a valid torch.export archive: {exc}") from None


def load_program(path: Path) -> torch.export.ExportedProgram:
    """Audit, then ``torch.export.load`` an ExportedProgram."""
    audit_program_archive(path)
    return torch.export.load(str(path))


def export_onnx(program: torch.export.ExportedProgram, shape: InputShape, path: Path) -> None:
    """ONNX (dynamo exporter, opset 18, weights inline) of an ExportedProgram, checked."""
    import onnx

    # The exporter logs a warning for each torchvision operator it cannot register (we use
    # none) and raises a pytree deprecation of torch's own: neither concerns the user.
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
            torch.onnx.export(
                program, (example_input(shape),), str(path), dynamo=True, opset_version=OPSET,
                external_data=False, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], verbose=False,
            )
    finally:
        registration.setLevel(level)
    onnx.checker.check_model(str(path), full_check=True)


class Fp32Island(nn.Module):
    """Runs ``module`` in float32 and casts its output back to the input's dtype."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module.float()

    def forward(self, x: Tensor) -> Tensor:
        return self.module(x.float()).to(x.dtype)


_NORMS = (ChannelLayerNorm, nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d)


def mixed_precision(net: FlowCLASNet, dtype: torch.dtype) -> FlowCLASNet:
    """A copy in ``dtype`` with normalisation layers and the log-density in float32.

    ViT LayerNorms overflow in fp16; the base distribution keeps float32 parameters, so
    type promotion runs the log-density, the averaging over scales and the squashing in
    float32 and the score map comes out float32.
    """
    net = copy.deepcopy(net).to(dtype)
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, _NORMS):
                setattr(parent, name, Fp32Island(child))
            elif isinstance(child, DiagonalGaussian):
                child.float()
    return net.eval()


def compile_tensorrt(net: FlowCLASNet, shape: InputShape, precision: str, device: str, path: Path) -> None:
    """Compile with torch-tensorrt's dynamo path and save with ``torch_tensorrt.save``.

    fp16/bf16: the graph is made mixed precision in torch (:func:`mixed_precision`) and
    compiled with ``use_explicit_typing`` so TensorRT keeps those float32 islands.
    """
    import torch_tensorrt  # lazily: only on machines with TensorRT

    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    model = (net if dtype == torch.float32 else mixed_precision(net, dtype)).to(device)
    program = export_program(model, shape, net.encoder.pad_multiple, dtype)
    spec = torch_tensorrt.Input(
        min_shape=(shape.batch[0], 3, shape.height[0], shape.width[0]),
        opt_shape=(shape.batch[1], 3, shape.height[1], shape.width[1]),
        max_shape=(shape.batch[2], 3, shape.height[2], shape.width[2]),
        dtype=dtype,
    )
    compiled = torch_tensorrt.dynamo.compile(
        program,
        arg_inputs=[spec],
        device=device,
        enabled_precisions={torch.float32},
        use_explicit_typing=dtype != torch.float32,
        min_block_size=1,
    )
    torch_tensorrt.save(compiled, str(path), output_format="exported_program", arg_inputs=[example_input(shape, dtype, device)])


def load_tensorrt(path: Path, device: str) -> nn.Module:
    """Reload a saved TensorRT program (the serialised engines inside are not rebuilt)."""
    import torch_tensorrt

    return torch_tensorrt.load(str(path)).module().to(device)


# ---------------------------------------------------------------- artefact cache


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
    if not path.is_file() or expected is None or _sha256(path) != expected:
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


def build_artefact(net: FlowCLASNet, bundle: str | Path, key: dict[str, Any]) -> Path:
    """Build the artefact of ``key`` from ``net`` and store it with its manifest; returns the file."""
    bundle = Path(bundle)
    shape = InputShape.from_dict(key["shape"])
    check_shape(net, shape)
    backend, precision = key["backend"], key["precision"]
    if backend != "tensorrt" and precision != "fp32":
        raise ArtefactError(f"{backend} artefacts are float32 only here; use --precision fp32 (fp16/bf16: tensorrt)")
    target = artefact_dir(bundle, key)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(dir=target.parent, prefix=".build-"))
    except OSError as exc:
        raise ArtefactError(f"cannot write artefacts into {bundle}: {exc.strerror}; copy the bundle somewhere writable") from None
    try:
        path = work / FILES[backend]
        if backend == "tensorrt":
            device = "cuda" if key["device"].startswith("cuda") else key["device"]
            compile_tensorrt(net, shape, precision, device, path)
        else:
            program = export_program(net.to("cpu"), shape, net.encoder.pad_multiple)
            if backend == "torch-export":
                save_program(program, path)
            else:
                export_onnx(program, shape, path)
        manifest = {"key": key, "files": {path.name: _sha256(path)}, "pad_multiple": net.encoder.pad_multiple,
                    "machine": platform.node()}
        _atomic_write(work / MANIFEST, lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=2) + "\n"))
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
) -> Path:
    """The verified artefact file for this key: reuse, (re)build when allowed, or refuse.

    A corrupt artefact is refused even when building is allowed (it may have been tampered
    with); ``force`` rebuilds regardless (``flowclas export --force``).
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
    return build_artefact(net if net is not None else load_bundle(bundle), bundle, key)
