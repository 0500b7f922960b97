"""ONNX artefacts audited before ONNX Runtime opens them.

Our exporter writes one self-contained file (weights inline, opset 18, the operators of
:data:`flowclas_ros.deploy.ops.ONNX_OPS`). A tensor stored as external data names a path
that ONNX Runtime would read (any file the user can read, into the model), and a custom
domain or local function is code we never wrote: both are refused, in the main graph, in
every subgraph and in every function.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from flowclas_ros.deploy.errors import UnsafeArtefactError
from flowclas_ros.deploy.ops import onnx_op_refusal


def _graphs(graph) -> Iterator:
    """``graph`` and every subgraph in its nodes' attributes."""
    stack = [graph]
    while stack:
        g = stack.pop()
        yield g
        for node in g.node:
            for attribute in node.attribute:
                if attribute.HasField("g"):
                    stack.append(attribute.g)
                stack.extend(attribute.graphs)


def _tensors(graph) -> Iterator:
    """Every tensor stored in ``graph`` itself: initializers and tensor-valued attributes."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("sparse_tensor"):
                yield from (attribute.sparse_tensor.values, attribute.sparse_tensor.indices)
            for sparse in attribute.sparse_tensors:
                yield from (sparse.values, sparse.indices)


def audit_onnx(path: Path) -> None:
    """Refuse an ONNX file with external data, local functions or operators our exporter never emits."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise UnsafeArtefactError(f"{path} is not a valid ONNX file: {' '.join(str(exc).split())[:200]}") from None
    if len(model.functions):
        raise UnsafeArtefactError(f"{path}: defines local functions, which our exporter never writes; refusing to load")
    for graph in _graphs(model.graph):
        for tensor in _tensors(graph):
            if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data):
                where = next((e.value for e in tensor.external_data if e.key == "location"), "?")
                raise UnsafeArtefactError(f"{path}: tensor {tensor.name!r} is external data ({where!r}); refusing to load")
        for node in graph.node:
            if (reason := onnx_op_refusal("" if node.domain == "ai.onnx" else node.domain, node.op_type)) is not None:
                raise UnsafeArtefactError(f"{path}: {reason}; refusing to load")
