"""Inference backends behind one interface: normalised ``B x 3 x H x W`` in, ``B x H x W`` scores out.

* ``torch``: the eager network (autocast for fp16/bf16).
* ``torch-export``: the ExportedProgram saved in the bundle (``flowclas export``).
* ``onnxruntime``: the ONNX graph in an ONNX Runtime session (CPU here; the TensorRT and
  CUDA execution providers are used first when installed and the device is a GPU); fp32,
  or int8 (the graph statically quantised, :mod:`flowclas_ros.deploy.quantize`).
* ``tensorrt``: a torch-tensorrt program (GPU only; imported lazily).
* ``auto``: the best one that works here, with a logged fallback.

Compiled backends come from the bundle's artefact cache (:mod:`flowclas_ros.deploy.cache`):
built on first use when ``build`` is true, otherwise a missing or stale artefact is an error;
one not built on this machine is refused until rebuilt (``auto`` then logs why and moves
on), and one altered or unsafe is an error under every backend, ``auto`` included.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from pathlib import Path

import torch
from torch import Tensor

from flowclas_ros.deploy.archive import load_program
from flowclas_ros.deploy.cache import ensure_artefact, read_manifest
from flowclas_ros.deploy.compile import load_tensorrt
from flowclas_ros.deploy.errors import ArtefactError, UnsafeArtefactError
from flowclas_ros.deploy.shapes import InputShape
from flowclas_ros.errors import FlowclasError
from flowclas_ros.model.bundle import load_bundle, read_bundle_config
from flowclas_ros.model.network import FlowCLASNet
from flowclas_ros.model.precision import PRECISIONS, backends_for, precision_refusal
from flowclas_ros.runtime.threads import configured_threads

log = logging.getLogger(__name__)

BACKENDS = ("torch", "torch-export", "onnxruntime", "tensorrt", "auto")
_FORMAT = {"torch-export": "torch-export", "onnxruntime": "onnx", "tensorrt": "tensorrt"}


class BackendError(FlowclasError):
    """A backend cannot run here (library, device or precision missing) or was misused."""


class Backend(ABC):
    """Maps a normalised float32 ``B x 3 x H x W`` batch to ``B x H x W`` float32 scores.

    ``shape`` is the input range the backend accepts (``None``: any size); a dynamic height
    or width must also be a multiple of ``multiple`` (the padding was traced away).
    """

    name: str
    device: torch.device
    shape: InputShape | None = None
    multiple: int = 1

    @abstractmethod
    def __call__(self, x: Tensor) -> Tensor:
        """Score maps ``B x H x W`` for a normalised ``B x 3 x H x W`` batch."""

    def check_input(self, x: Tensor) -> None:
        """Raise BackendError when ``x`` does not fit ``shape``."""
        b, c, h, w = x.shape
        s = self.shape
        if c != 3 or (s is not None and not s.accepts(b, h, w)):
            raise BackendError(f"{self.name} backend takes {s.label if s else 'Bx3xHxW'} inputs, got {tuple(x.shape)}")
        if s is not None and any(r[0] != r[2] and v % self.multiple for r, v in ((s.height, h), (s.width, w))):
            raise BackendError(f"{self.name} backend takes heights and widths in multiples of {self.multiple}, got {h}x{w}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(device={self.device}, shape={self.shape.label if self.shape else 'any'})"


class TorchBackend(Backend):
    """The eager network; fp16/bf16 through autocast."""

    name = "torch"

    def __init__(self, net: FlowCLASNet, device: str = "cpu", precision: str = "fp32") -> None:
        self.device = torch.device(device)
        self.dtype = _dtype(precision, "torch")
        self.net = net.to(self.device).eval()

    @torch.inference_mode()
    def __call__(self, x: Tensor) -> Tensor:
        """Score maps ``B x H x W`` for a normalised ``B x 3 x H x W`` batch."""
        self.check_input(x)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            return self.net(x).float()


class ExportBackend(Backend):
    """A saved ExportedProgram run as a graph module."""

    name = "torch-export"

    def __init__(self, path: Path, shape: InputShape, device: str = "cpu") -> None:
        self.device = torch.device(device)
        self.shape = shape
        # check_guards=False: the guards are Python source from the archive, exec'd by module()
        # (when sample inputs exist, which the audit refuses anyway); check_input bounds shapes.
        self.module = load_program(path).module(check_guards=False).to(self.device)

    @torch.inference_mode()
    def __call__(self, x: Tensor) -> Tensor:
        """Score maps ``B x H x W`` for a normalised ``B x 3 x H x W`` batch."""
        self.check_input(x)
        return self.module(x)


class OnnxRuntimeBackend(Backend):
    """An ONNX Runtime session with all graph optimisations on.

    ``threads``: intra-op threads (default: the process's count,
    :func:`flowclas_ros.runtime.threads.configured_threads`); inter-op parallelism is off
    (one chain of ops) and idle threads sleep instead of spinning.
    """

    name = "onnxruntime"

    def __init__(self, path: Path, shape: InputShape, device: str = "cpu", threads: int | None = None) -> None:
        import onnxruntime as ort

        self.device = torch.device(device)
        self.shape = shape
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = threads or configured_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # No busy-waiting between runs: a robot's cores are shared with other nodes (and, in
        # flowclas bench, with the other backends), which spinning pool threads would starve.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        wanted = ["CPUExecutionProvider"]
        if self.device.type == "cuda":
            wanted = ["TensorrtExecutionProvider", "CUDAExecutionProvider", *wanted]
        providers = [p for p in wanted if p in ort.get_available_providers()]
        if self.device.type == "cuda" and providers == ["CPUExecutionProvider"]:
            raise BackendError("onnxruntime here has no CUDA or TensorRT execution provider; use --device cpu")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except _ort_errors(ort) as exc:
            first = " ".join(str(exc).split())[:200]
            raise ArtefactError(f"ONNX Runtime cannot load {path} ({type(exc).__name__}: {first}); "
                                "rebuild it with flowclas export --force") from None
        self.providers = self.session.get_providers()
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: Tensor) -> Tensor:
        """Score maps ``B x H x W`` for a normalised ``B x 3 x H x W`` batch."""
        self.check_input(x)
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        (out,) = self.session.run(None, {self.input_name: array})
        return torch.from_numpy(out).to(self.device)


class TensorRTBackend(Backend):
    """A torch-tensorrt program reloaded from the bundle (GPU only); fed in its compiled dtype."""

    name = "tensorrt"

    def __init__(self, path: Path, shape: InputShape, device: str = "cuda", dtype: torch.dtype = torch.float32) -> None:
        self.device = torch.device(device)
        self.shape = shape
        self.dtype = dtype
        self.module = load_tensorrt(path, str(self.device))

    @torch.inference_mode()
    def __call__(self, x: Tensor) -> Tensor:
        """Score maps ``B x H x W`` for a normalised ``B x 3 x H x W`` batch."""
        self.check_input(x)
        return self.module(x.to(self.device, self.dtype)).float()


def _ort_errors(ort) -> tuple[type[BaseException], ...]:
    """The exceptions ONNX Runtime raises for a model it rejects (not RuntimeError subclasses)."""
    state = ort.capi.onnxruntime_pybind11_state
    names = ("Fail", "InvalidArgument", "NoSuchFile", "NoModel", "EngineError", "RuntimeException",
             "InvalidProtobuf", "ModelLoaded", "NotImplemented", "InvalidGraph", "EPFail")
    return (RuntimeError, *(getattr(state, n) for n in names if hasattr(state, n)))


def _dtype(precision: str, backend: str = "torch") -> torch.dtype:
    if (reason := precision_refusal(backend, precision)) is not None:
        raise BackendError(reason)
    return PRECISIONS[precision]


def tensorrt_unavailable(device: str) -> str | None:
    """Why TensorRT cannot run here, or None when it can."""
    if torch.device(device).type != "cuda" or not torch.cuda.is_available():
        return "TensorRT needs a CUDA device (--device cuda) and this machine has none"
    try:
        import torch_tensorrt  # noqa: F401
    except ImportError:
        return "torch-tensorrt is not installed"
    return None


def default_shape(bundle: str | Path) -> InputShape:
    """Static batch 1 at the bundle's input size (the detector resizes every frame to it)."""
    config, _ = read_bundle_config(bundle)
    return InputShape.static(*config.encoder.input_size)


def create_backend(
    name: str,
    bundle: str | Path,
    device: str = "cpu",
    precision: str = "fp32",
    shape: InputShape | None = None,
    build: bool = True,
    net: FlowCLASNet | None = None,
    threads: int | None = None,
    calibration: str | Path | None = None,
) -> Backend:
    """Open backend ``name`` for a bundle; ``auto`` tries tensorrt, onnxruntime, torch-export, torch
    (those of them that run ``precision``).

    ``net`` (the loaded bundle) saves a reload for ``torch`` and for building artefacts;
    ``calibration``: inlier frames for building an int8 artefact (default: the bundle's
    training images, when recorded and present).
    """
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; use one of {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise BackendError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if name == "auto":
        return _auto(bundle, device, precision, shape, build, net, threads, calibration)
    _dtype(precision, name)  # BackendError naming the backends that run it
    if name == "torch":
        return TorchBackend(net if net is not None else load_bundle(bundle, device), device, precision)
    if name == "tensorrt":
        reason = tensorrt_unavailable(device)
        if reason:
            raise BackendError(f"tensorrt backend unavailable: {reason}")
    shape = shape or default_shape(bundle)
    path = ensure_artefact(bundle, _FORMAT[name], precision, shape, device, build=build, net=net, calibration=calibration)
    if name == "torch-export":
        backend: Backend = ExportBackend(path, shape, device)
    elif name == "onnxruntime":
        backend = OnnxRuntimeBackend(path, shape, device, threads)
    else:
        backend = TensorRTBackend(path, shape, device, PRECISIONS[precision])
    backend.multiple = int(read_manifest(path).get("pad_multiple", 1))
    return backend


def _auto(bundle, device, precision, shape, build, net, threads, calibration) -> Backend:
    order = [b for b in ("tensorrt", "onnxruntime", "torch-export") if b in backends_for(precision)]
    reasons = []
    for name in order:
        try:
            backend = create_backend(name, bundle, device, precision, shape, build, net, threads, calibration)
        except UnsafeArtefactError:
            raise  # altered or unsafe: never skipped for another backend
        except (BackendError, ArtefactError, ImportError, OSError, RuntimeError) as exc:
            log.warning("backend auto: %s unavailable (%s); trying the next", name, exc)
            reasons.append(f"{name}: {exc}")
            continue
        log.info("backend auto: using %s", name)
        return backend
    if "torch" not in backends_for(precision):
        raise BackendError(f"backend auto: no backend runs {precision} here ({'; '.join(reasons)})")
    log.warning("backend auto: falling back to eager torch")
    return create_backend("torch", bundle, device, precision, net=net)
