"""Compiling the whole score-map module (``FlowCLASNet.forward``: padding, encoder, LayerNorms,
flows, scoring, upsampling; only pre- and post-processing stay in Python) into one format:

* ``torch-export``: a ``torch.export.ExportedProgram`` saved with ``torch.export.save``.
* ``onnx``: the dynamo exporter (``torch.onnx.export(..., dynamo=True)``, opset 18),
  checked with ``onnx.checker``; run with ONNX Runtime. ``int8``: that graph statically
  quantised (``flowclas_ros.deploy.quantize``).
* ``tensorrt``: torch-tensorrt's dynamo path on the ExportedProgram, saved with
  ``torch_tensorrt.save`` and reloaded with ``torch_tensorrt.load`` (no recompilation).
  Imported lazily; only APIs present in torch-tensorrt 2.8 are used. A TensorRT engine is
  native GPU code by nature: build it on the machine that runs it (``flowclas export``).

Compiling never changes the caller's network: it works on a copy.
"""

from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from flowclas_ros.deploy.archive import save_program
from flowclas_ros.deploy.errors import ArtefactError
from flowclas_ros.deploy.quantize import DEFAULT_FRAMES, build_int8
from flowclas_ros.deploy.shapes import InputShape, check_shape, dynamic_dims, example_input
from flowclas_ros.model.flow import ChannelLayerNorm, DiagonalGaussian
from flowclas_ros.model.network import FlowCLASNet
from flowclas_ros.model.precision import PRECISIONS, precision_refusal

FORMATS = ("torch-export", "onnx", "tensorrt")
FILES = {"torch-export": "model.pt2", "onnx": "model.onnx", "tensorrt": "model.ep"}
OPSET = 18
INPUT_NAME, OUTPUT_NAME = "image", "score"


def export_program(
    net: nn.Module, shape: InputShape, multiple: int, dtype: torch.dtype = torch.float32
) -> torch.export.ExportedProgram:
    """``torch.export`` the score-map module for ``shape`` (dynamic dimensions via ``Dim``)."""
    device = next(net.parameters()).device
    x = example_input(shape, dtype, device)
    dims = dynamic_dims(shape, multiple)
    with torch.no_grad():
        return torch.export.export(net.eval(), (x,), dynamic_shapes=({**dims},) if dims else None)


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``module(x)`` computed in float32, returned in ``x``'s dtype."""
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

    dtype = PRECISIONS[precision]
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


def compile_artefact(net: FlowCLASNet, backend: str, precision: str, shape: InputShape, device: str, path: Path,
                     calibration: str | Path | None = None, calibration_frames: int = DEFAULT_FRAMES) -> dict:
    """Write the ``backend`` artefact of a copy of ``net`` to ``path``; returns extra manifest entries.

    onnx int8: the float32 graph statically quantised (:mod:`flowclas_ros.deploy.quantize`),
    calibrated on up to ``calibration_frames`` images of ``calibration`` (default: the
    bundle's training images); the manifest records them under ``calibration``.
    """
    check_shape(net, shape)
    if (reason := precision_refusal(backend, precision)) is not None:
        raise ArtefactError(f"no {backend} {precision} artefact: {reason}")
    if backend == "tensorrt":
        compile_tensorrt(copy.deepcopy(net), shape, precision, device, path)
        return {}
    program = export_program(copy.deepcopy(net).to("cpu"), shape, net.encoder.pad_multiple)
    if backend == "torch-export":
        save_program(program, path)
    elif precision == "int8":
        record = build_int8(lambda fp32: export_onnx(program, shape, fp32), net.config, shape.opt[1:], path,
                            calibration, calibration_frames, INPUT_NAME)
        return {"calibration": record}
    else:
        export_onnx(program, shape, path)
    return {}
