"""Inference precisions by name: the one registry every layer takes its choices from.

``PRECISIONS`` maps each name to the dtype the network computes in (``int8``: quantised
weights and activations; inputs and outputs stay float32). Not every backend runs every
precision: :data:`RUNS_ON` says which do, and :func:`precision_refusal` gives the one-line
reason a backend refuses one, naming those that accept it.
"""

import torch

PRECISIONS: dict[str, torch.dtype] = {
    "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "int8": torch.int8,
}

# precision -> the backends that run it (names as in runtime.backends.BACKENDS)
RUNS_ON: dict[str, tuple[str, ...]] = {
    "fp32": ("torch", "torch-export", "onnxruntime", "tensorrt"),
    "fp16": ("torch", "tensorrt"),
    "bf16": ("torch", "tensorrt"),
    "int8": ("onnxruntime",),
}

# How each non-fp32 precision is obtained, for error messages.
HOW = {
    "fp16": "autocast in eager torch, or a TensorRT engine (flowclas export --format tensorrt --precision fp16)",
    "bf16": "autocast in eager torch, or a TensorRT engine (flowclas export --format tensorrt --precision bf16)",
    "int8": "static post-training quantisation of the ONNX graph, calibrated on inlier frames "
            "(flowclas export --format onnx --precision int8 --calibration DIR)",
}

# export formats (deploy.compile.FORMATS) -> the backend that runs them
FORMAT_BACKENDS = {"onnx": "onnxruntime", "torch-export": "torch-export", "tensorrt": "tensorrt"}


def precision_refusal(backend: str, precision: str) -> str | None:
    """Why ``backend`` (or export format) cannot run ``precision``, or None when it can."""
    if precision not in PRECISIONS:
        return f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}"
    name = FORMAT_BACKENDS.get(backend, backend)
    if name in RUNS_ON[precision]:
        return None
    return (f"the {name} backend does not run {precision}; {precision} runs on {', '.join(RUNS_ON[precision])} only"
            + (f" ({HOW[precision]})" if precision in HOW else ""))


def backends_for(precision: str) -> tuple[str, ...]:
    """The backends that run ``precision`` (empty for an unknown name)."""
    return RUNS_ON.get(precision, ())
