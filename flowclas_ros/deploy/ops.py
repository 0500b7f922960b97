"""Operator allow-lists: the operators our exporter emits, and nothing that touches files,
processes or a graph's inputs.

:data:`TORCH_OPS` and :data:`ONNX_OPS` were collected by exporting our networks
(EfficientNet-Lite0 and DINOv2 ViT-S/14, with registers and with Rein adapters; the
flowclas, fastflow, cflow and uflow heads; every score and squash variant, whitening, the
segmentation head; static, dynamic-batch and dynamic-size shapes; ONNX int8) and listing
their graphs' call targets. A graph calling anything else is refused; so is, whatever the
lists say, an operator named for file or process I/O, one that writes in place or into an
``out=`` argument, and (torch) a program whose signature mutates an input or buffer.
After changing the network, regenerate them from :func:`program_ops` of the new graphs
(``test/test_export.py`` checks that our exports stay inside the lists).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.export.graph_signature import InputKind, OutputKind

from flowclas_ros.deploy.errors import UnsafeArtefactError

# Serialized call targets (torch's own naming: "torch.ops.<namespace>.<op>.<overload>",
# "_operator.<fn>", "torch.<fn>" for symbolic-shape helpers).
TORCH_OPS = frozenset({
    "_operator.getitem",  # not serialized (the producer's outputs), present once loaded
    "_operator.add", "_operator.floordiv", "_operator.mod", "_operator.mul", "_operator.neg", "_operator.sub",
    "torch.ops.aten.__or__.Tensor", "torch.ops.aten._assert_tensor_metadata.default", "torch.ops.aten.abs.default",
    "torch.ops.aten.add.Tensor", "torch.ops.aten.alias.default", "torch.ops.aten.any.default",
    "torch.ops.aten.arange.default", "torch.ops.aten.arange.start_step", "torch.ops.aten.batch_norm.default",
    "torch.ops.aten.cat.default", "torch.ops.aten.chunk.default", "torch.ops.aten.clamp.default",
    "torch.ops.aten.conv2d.default", "torch.ops.aten.cos.default", "torch.ops.aten.div.Tensor",
    "torch.ops.aten.exp.default", "torch.ops.aten.expand.default", "torch.ops.aten.flatten.using_ints",
    "torch.ops.aten.gelu.default", "torch.ops.aten.gt.Scalar", "torch.ops.aten.index_select.default",
    "torch.ops.aten.layer_norm.default", "torch.ops.aten.linear.default", "torch.ops.aten.log.default",
    "torch.ops.aten.log1p.default", "torch.ops.aten.lt.Scalar", "torch.ops.aten.matmul.default",
    "torch.ops.aten.mean.dim", "torch.ops.aten.mul.Tensor", "torch.ops.aten.neg.default",
    "torch.ops.aten.new_zeros.default", "torch.ops.aten.pad.default", "torch.ops.aten.permute.default",
    "torch.ops.aten.pixel_shuffle.default", "torch.ops.aten.pow.Tensor_Scalar", "torch.ops.aten.relu.default",
    "torch.ops.aten.relu6.default", "torch.ops.aten.reshape.default", "torch.ops.aten.rsqrt.default",
    "torch.ops.aten.rsub.Scalar", "torch.ops.aten.scaled_dot_product_attention.default", "torch.ops.aten.select.int",
    "torch.ops.aten.sigmoid.default", "torch.ops.aten.sin.default", "torch.ops.aten.slice.Tensor",
    "torch.ops.aten.softmax.int", "torch.ops.aten.stack.default", "torch.ops.aten.sub.Tensor",
    "torch.ops.aten.sum.default", "torch.ops.aten.sum.dim_IntList", "torch.ops.aten.sym_size.int",
    "torch.ops.aten.t.default", "torch.ops.aten.tanh.default", "torch.ops.aten.to.dtype",
    "torch.ops.aten.transpose.int", "torch.ops.aten.unbind.int", "torch.ops.aten.unsqueeze.default",
    "torch.ops.aten.upsample_bilinear2d.vec", "torch.ops.aten.view.default", "torch.ops.aten.where.self",
    "torch.sym_max", "torch.sym_min",
})

# (domain, op_type) of ONNX nodes; "" is the default ai.onnx domain.
ONNX_OPS = frozenset({
    ("", "Add"), ("", "Cast"), ("", "Clip"), ("", "Concat"), ("", "ConstantOfShape"), ("", "Conv"), ("", "Cos"),
    ("", "DepthToSpace"), ("", "DequantizeLinear"), ("", "Div"), ("", "Erf"), ("", "Exp"), ("", "Expand"),
    ("", "Gather"), ("", "Gemm"), ("", "Greater"), ("", "LayerNormalization"), ("", "Less"), ("", "MatMul"),
    ("", "Mul"), ("", "Neg"), ("", "Or"), ("", "Pad"), ("", "Pow"), ("", "QuantizeLinear"), ("", "Range"),
    ("", "Reciprocal"), ("", "ReduceMax"), ("", "ReduceMean"), ("", "ReduceSum"), ("", "Relu"), ("", "Reshape"),
    ("", "Resize"), ("", "Shape"), ("", "Sigmoid"), ("", "Sin"), ("", "Slice"), ("", "Softmax"), ("", "Split"),
    ("", "Sqrt"), ("", "Squeeze"), ("", "Sub"), ("", "Tanh"), ("", "Transpose"), ("", "Unsqueeze"), ("", "Where"),
})
ONNX_DOMAINS = frozenset({"", "ai.onnx"})

# Never allowed, whatever the lists say: file, process and serialisation operators.
_FORBIDDEN = re.compile(r"file|save|load|open|read|write|pickle|serial|exec|system|spawn|socket|print", re.IGNORECASE)
_INPUTS = {InputKind.USER_INPUT, InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR}


def op_refusal(name: str) -> str | None:
    """Why the serialized call target ``name`` may not run, or None when it may."""
    if _FORBIDDEN.search(name):
        return f"calls {name}, an operator touching files or processes"
    parts = name.split(".")
    if name.startswith("torch.ops.") and len(parts) >= 5 and (
            (parts[-2].endswith("_") and not parts[-2].startswith("__")) or parts[-1].startswith("out")):
        return f"calls {name}, an operator writing in place"
    if name not in TORCH_OPS:
        return f"calls {name}, an operator our exporter never emits"
    return None


def target_name(target: object) -> str:
    """The serialized name of a graph node's call target (as ``torch.export.save`` writes it)."""
    module = getattr(target, "__module__", None) or ""
    return f"{module.replace('torch._ops', 'torch.ops')}.{getattr(target, '__name__', repr(target))}"


def _nodes(program: torch.export.ExportedProgram) -> Iterator[torch.fx.Node]:
    """Every node of ``program``'s graph and of the graphs nested in it."""
    for module in program.graph_module.modules():
        if isinstance(module, torch.fx.GraphModule):
            yield from module.graph.nodes


def program_ops(program: torch.export.ExportedProgram) -> set[str]:
    """The serialized names of every call target in ``program`` (to regenerate :data:`TORCH_OPS`)."""
    return {target_name(node.target) for node in _nodes(program) if node.op == "call_function"}


def check_program(program: torch.export.ExportedProgram, path: Path) -> None:
    """Refuse a loaded program that calls a disallowed operator, writes to an argument or
    mutates its inputs or buffers (UnsafeArtefactError)."""
    for node in _nodes(program):
        if node.op in ("call_module", "call_method"):
            raise UnsafeArtefactError(f"{path}: has a {node.op} node ({node.target}); refusing to load")
        if node.op != "call_function":
            continue
        name = target_name(node.target)
        schema = getattr(node.target, "_schema", None)
        if schema is not None and schema.is_mutable:
            raise UnsafeArtefactError(f"{path}: calls {name}, an operator writing to its arguments; refusing to load")
        if (reason := op_refusal(name)) is not None:
            raise UnsafeArtefactError(f"{path}: {reason}; refusing to load")
    signature = program.graph_signature
    if any(s.kind not in _INPUTS for s in signature.input_specs) or any(s.kind != OutputKind.USER_OUTPUT
                                                                         for s in signature.output_specs):
        raise UnsafeArtefactError(f"{path}: the program mutates its inputs or buffers; refusing to load")


def onnx_op_refusal(domain: str, op_type: str) -> str | None:
    """Why an ONNX node may not run, or None when it may."""
    if domain not in ONNX_DOMAINS or _FORBIDDEN.search(op_type) or (domain, op_type) not in ONNX_OPS:
        return f"uses operator {domain or 'ai.onnx'}.{op_type}, which our exporter never emits"
    return None
