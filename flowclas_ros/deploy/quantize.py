"""int8 on the CPU: post-training static quantisation of the exported ONNX graph (ONNX Runtime).

``flowclas export --format onnx --precision int8 [--calibration DIR]`` exports the float32
graph, runs ONNX Runtime's pre-processing (shape inference, graph optimisation) and
``quantize_static`` with a :class:`FrameReader` over inlier frames:

* QDQ format (QuantizeLinear/DequantizeLinear pairs that ONNX Runtime fuses into integer
  kernels), uint8 activations and int8 weights, MinMax calibration;
* per-channel weight scales: with one scale per tensor the depthwise convolutions of
  EfficientNet lose the anomaly signal (held-out AP 61.3 -> 50.3 on the demo model);
* quantised op types Conv, MatMul and Clip, and of those only the nodes of the head (the
  flow), found by the exporter's module scopes. Quantising the encoder too is faster
  (1.49x over fp32 against 1.12x, interleaved, demo bundle at 240x320) but lost 0.7 AP on
  the orbital test set, where the head alone lost none (80.9 -> 80.9; terrain 87.1 ->
  87.2): the encoder's activations carry the fine differences the flow scores. The flow's
  normalisations, exponentials, tanh clamps and the log-density stay float32.

Calibration frames go through exactly the detector's pre-processing (resize with
antialiasing to the artefact's input size, normalisation): :func:`calibration_inputs`.
Default source: the bundle's recorded training data (``training.root``, folder layout
``ROOT/train/images``) when it is present. Numbers: benchmarks/README.md.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from flowclas_ros.deploy.errors import ArtefactError
from flowclas_ros.errors import UserError
from flowclas_ros.images import IMAGE_SUFFIXES, read_rgb
from flowclas_ros.model.config import ModelConfig

log = logging.getLogger(__name__)

DEFAULT_FRAMES = 32
OP_TYPES = ("Conv", "MatMul", "Clip")
SCOPE_KEY = "pkg.torch.onnx.name_scopes"  # module path the dynamo exporter records on every node
SETTINGS = {"format": "QDQ", "activations": "uint8", "weights": "int8", "per_channel": True,
            "calibration_method": "MinMax", "op_types": list(OP_TYPES), "scope": "head"}


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def calibration_images(source: str | Path, frames: int = DEFAULT_FRAMES) -> list[Path]:
    """Up to ``frames`` image files from ``source``, evenly spread over its sorted images.

    ``source``: a folder of images, or a dataset root in the folder layout (``ROOT/train/images``).
    """
    folder = Path(source)
    if (folder / "train" / "images").is_dir():
        folder = folder / "train" / "images"
    if not folder.exists():
        raise ArtefactError(f"calibration folder {source} does not exist")
    if not folder.is_dir():
        raise ArtefactError(f"calibration folder {source} is not a folder")
    images = _images_in(folder)
    if not images:
        raise ArtefactError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in calibration folder {folder}")
    if frames < 1:
        raise ArtefactError(f"calibration needs at least one frame, got {frames}")
    if len(images) > frames:
        step = len(images) / frames
        images = [images[int(i * step)] for i in range(frames)]
    return images


def default_calibration(config: ModelConfig) -> Path | None:
    """The bundle's training images when the bundle records where they were and they are there."""
    root = (config.training or {}).get("root")
    if not isinstance(root, str) or not root:
        return None
    for folder in (Path(root) / "train" / "images", Path(root)):
        if folder.is_dir() and _images_in(folder):
            return folder
    return None


def resolve_calibration(config: ModelConfig, source: str | Path | None) -> Path:
    """The calibration folder: ``source``, else the bundle's training images; ArtefactError when neither."""
    if source is not None:
        return Path(source)
    found = default_calibration(config)
    if found is None:
        recorded = (config.training or {}).get("root")
        where = f"; the bundle's training data ({recorded}) is not there" if recorded else ""
        raise ArtefactError(
            "int8 calibration needs inlier frames: give a folder of images (or a dataset root with train/images) "
            f"with flowclas export --format onnx --precision int8 --calibration DIR{where}"
        )
    return found


def calibration_inputs(paths: Sequence[Path], config: ModelConfig, size: tuple[int, int]) -> list[np.ndarray]:
    """Each image as the detector feeds it to the model: ``1 x 3 x H x W`` float32, normalised.

    Unreadable images are skipped with a warning; ArtefactError when none is left."""
    import torch
    import torch.nn.functional as F

    mean = torch.tensor(config.mean).view(1, 3, 1, 1)
    std = torch.tensor(config.std).view(1, 3, 1, 1)
    out = []
    for path in paths:
        try:
            frame = np.array(read_rgb(path))  # writable and contiguous, for torch
        except UserError as exc:
            log.warning("calibration: skipped %s", exc)
            continue
        x = torch.from_numpy(frame[None]).permute(0, 3, 1, 2).float().div_(255.0)
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
        out.append(((x - mean) / std).numpy())
    if not out:
        raise ArtefactError(f"none of the {len(paths)} calibration images could be read")
    return out


def _fingerprint(paths: Iterable[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _reader(inputs: list[np.ndarray], input_name: str):
    from onnxruntime.quantization import CalibrationDataReader

    class FrameReader(CalibrationDataReader):
        """Feeds the calibration frames one by one (rewindable)."""

        def __init__(self) -> None:
            self.rewind()

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.items, None)
            return None if x is None else {input_name: x}

        def rewind(self) -> None:
            self.items = iter(inputs)

    return FrameReader()


def head_nodes(model) -> list[str]:
    """Names of the quantisable nodes (:data:`OP_TYPES`) outside the encoder of an exported ``onnx.ModelProto``."""
    names, unscoped = [], 0
    for node in model.graph.node:
        if node.op_type not in OP_TYPES:
            continue
        scope = next((p.value for p in node.metadata_props if p.key == SCOPE_KEY), None)
        if scope is None:
            unscoped += 1
        elif "'encoder'" not in scope:
            names.append(node.name)
    if unscoped or not names:
        raise ArtefactError(f"int8: the exported graph does not say which nodes belong to the head "
                            f"({unscoped} quantisable nodes without {SCOPE_KEY}, {len(names)} in the head)")
    return names


def quantize_onnx(fp32_model: Path, output: Path, inputs: list[np.ndarray], input_name: str = "image") -> None:
    """Write the int8 (QDQ) version of ``fp32_model``'s head to ``output``, calibrated on ``inputs``."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    nodes = head_nodes(onnx.load(str(fp32_model)))
    # onnxruntime.quantization reports progress and advice through the root logger and warnings
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with tempfile.TemporaryDirectory(dir=output.parent, prefix=".quantize-") as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prepared = Path(tmp) / "prepared.onnx"
            quant_pre_process(str(fp32_model), str(prepared))
            present = {n.name for n in onnx.load(str(prepared)).graph.node}
            if missing := [n for n in nodes if n not in present]:  # pre-processing keeps node names; check it did
                raise ArtefactError(f"int8: {len(missing)} head nodes vanished in pre-processing (e.g. {missing[0]})")
            quantize_static(
                str(prepared), str(output), _reader(inputs, input_name),
                quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                per_channel=True, op_types_to_quantize=list(OP_TYPES), nodes_to_quantize=nodes,
                calibrate_method=CalibrationMethod.MinMax,
            )
    finally:
        root.setLevel(level)


def build_int8(export_fp32, config: ModelConfig, size: tuple[int, int], path: Path,
               calibration: str | Path | None = None, frames: int = DEFAULT_FRAMES, input_name: str = "image") -> dict:
    """Export (``export_fp32(path)`` writes the float32 graph), calibrate and quantise into ``path``.

    Returns the calibration record for the artefact's manifest.
    """
    source = resolve_calibration(config, calibration)
    images = calibration_images(source, frames)
    log.info("int8: calibrating on %d frames from %s", len(images), source)
    inputs = calibration_inputs(images, config, size)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".fp32-") as tmp:
        fp32 = Path(tmp) / "model.onnx"
        export_fp32(fp32)
        quantize_onnx(fp32, path, inputs, input_name)
    return {"source": str(images[0].parent.resolve()), "frames": len(images), "sha256": _fingerprint(images), **SETTINGS}
