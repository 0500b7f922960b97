"""The ROS-free detector: RGB uint8 frames in, score maps, masks and hazards out."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from flowclas_ros.errors import UserError
from flowclas_ros.model.bundle import read_bundle_config
from flowclas_ros.model.config import ModelConfig
from flowclas_ros.model.network import FlowCLASNet
from flowclas_ros.model.precision import PRECISIONS
from flowclas_ros.runtime.backends import Backend, TorchBackend, create_backend
from flowclas_ros.runtime.hazards import Hazard, find_hazards
from flowclas_ros.vocabulary import MAX_SIDE


@dataclass
class Detection:
    """Result for one frame: ``score`` float32 H x W in [0, 1], ``mask`` bool H x W."""

    score: np.ndarray
    mask: np.ndarray
    threshold: float
    hazards: list[Hazard] = field(default_factory=list)


FRAME_SHAPES = "H x W (grey), H x W x 1 (grey), H x W x 3 (RGB), H x W x 4 (RGBA, alpha dropped)"


def is_batch(frames: np.ndarray) -> bool:
    """Whether ``frames`` is a batch (``B x H x W x C``) rather than one frame (``as_rgb_batch``)."""
    return frames.ndim == 4


def as_rgb_batch(frames: np.ndarray) -> np.ndarray:
    """Validate frames and return a ``B x H x W x 3`` uint8 view or copy.

    One frame is ``H x W`` (grey), ``H x W x 1`` (grey), ``H x W x 3`` (RGB) or ``H x W x 4``
    (RGBA, alpha dropped); a batch is ``B x H x W x C`` with ``C`` one of 1, 3, 4. Anything
    else (``H x W x 2``, ``H x W x 5``, five axes, ...) and any dtype but uint8 (floats too:
    scale them to 0..255 first) is refused with a UserError naming it.
    """
    if not isinstance(frames, np.ndarray):
        raise UserError(f"frames must be a numpy array, got {type(frames).__name__}")
    if frames.dtype != np.uint8:
        hint = ": convert floats in [0, 1] with (x * 255).round().astype(np.uint8)" if frames.dtype.kind == "f" else ""
        raise UserError(f"frames must be uint8 RGB (0..255), got dtype {frames.dtype}{hint}")
    if frames.ndim == 2:
        frames = frames[..., None]
    if frames.ndim not in (3, 4) or frames.shape[-1] not in (1, 3, 4):
        raise UserError(f"frame shape {frames.shape} is none of {FRAME_SHAPES}, nor a batch B x H x W x C of those")
    if frames.ndim == 3:
        frames = frames[None]
    b, h, w = frames.shape[:3]
    if b < 1 or not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
        raise UserError(f"frame size {h}x{w} (batch {b}) is outside 1..{MAX_SIDE} pixels a side")
    if frames.shape[-1] == 1:
        return np.broadcast_to(frames, (b, h, w, 3))
    return frames[..., :3]


class Detector:
    """Runs a FlowCLAS network on frames of any size.

    Frames are resized to the model's input size (a static engine's size when the backend
    has one), normalised, scored, and the score map is resized back to each frame's
    resolution. Batches larger than the backend accepts run in chunks. ``threshold``
    defaults to the bundle's calibrated value; regions smaller than ``min_area`` pixels are
    not reported as hazards. Give ``model`` (eager torch), or ``backend`` with ``config``.
    """

    def __init__(
        self,
        model: FlowCLASNet | None = None,
        device: str = "cpu",
        precision: str = "fp32",
        threshold: float | None = None,
        min_area: int = 0,
        backend: Backend | None = None,
        config: ModelConfig | None = None,
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        if model is None and (backend is None or config is None):
            raise ValueError("Detector needs a model, or a backend and its config")
        self.device = torch.device(device)
        self.model = model
        if model is not None:
            config = model.config
            backend = backend if backend is not None else TorchBackend(model, device, precision)
        assert backend is not None and config is not None  # checked above
        self.backend = backend
        shape = self.backend.shape
        self.input_size = tuple(config.encoder.input_size)
        if shape is not None and not shape.accepts(1, *self.input_size):
            self.input_size = shape.opt[1:]
        self.max_batch = shape.batch[2] if shape is not None else None
        self.mean = torch.tensor(config.mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(config.std, device=self.device).view(1, 3, 1, 1)
        self.threshold = config.threshold if threshold is None else threshold
        if isinstance(min_area, bool) or not isinstance(min_area, (int, np.integer)) or min_area < 0:
            raise UserError(f"min_area must be a whole number of pixels >= 0, got {min_area!r}")
        self.min_area = int(min_area)

    @classmethod
    def from_bundle(
        cls,
        path: str | Path,
        device: str = "cpu",
        precision: str = "fp32",
        backend: str = "torch",
        build: bool = True,
        threads: int | None = None,
        **kwargs,
    ) -> "Detector":
        """Load a bundle with inference ``backend`` (see ``runtime.backends.BACKENDS``).

        Compiled backends use the bundle's cached artefact; ``build`` allows building a
        missing or stale one (else it is an error). ``threads``: ONNX Runtime intra-op threads.
        """
        config, _ = read_bundle_config(path)
        engine = create_backend(backend, path, device, precision, build=build, threads=threads)
        model = engine.net if isinstance(engine, TorchBackend) else None
        return cls(model, device=device, precision=precision, backend=engine, config=config, **kwargs)

    @property
    def threshold(self) -> float:
        """The mask threshold in use."""
        return self._threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        if not 0.0 <= float(value) <= 1.0:
            raise UserError(f"threshold must be in [0, 1], got {value}")
        self._threshold = float(value)

    def preprocess(self, frames: np.ndarray) -> torch.Tensor:
        """``B x H x W x 3`` uint8 -> normalised ``B x 3 x h x w`` float at the model input size."""
        if not (frames.flags.writeable and frames.flags.c_contiguous):
            frames = np.array(frames)  # torch needs a writable, contiguous buffer
        x = torch.from_numpy(frames).to(self.device)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        if tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False, antialias=True)
        return (x - self.mean) / self.std

    @torch.inference_mode()
    def score(self, frames: np.ndarray) -> np.ndarray:
        """Score maps (float32 in [0, 1]) at each frame's resolution; same batch layout as input."""
        batch = as_rgb_batch(frames)
        x = self.preprocess(batch)
        chunk = self.max_batch or len(x)
        s = torch.cat([self.backend(x[i : i + chunk]) for i in range(0, len(x), chunk)])[:, None]
        h, w = batch.shape[1:3]
        if tuple(s.shape[-2:]) != (h, w):
            s = F.interpolate(s, size=(h, w), mode="bilinear", align_corners=False)
        out = s[:, 0].clamp_(0.0, 1.0).cpu().numpy()
        return out if is_batch(frames) else out[0]

    def detect(self, frame: np.ndarray) -> Detection:
        """Score, mask at the threshold, and hazard regions for one frame (shapes: ``as_rgb_batch``)."""
        if isinstance(frame, np.ndarray) and is_batch(frame):
            raise UserError(f"detect takes one frame, got a batch of shape {frame.shape}: use detect_batch")
        return self._finish(self.score(frame))

    def detect_batch(self, frames: np.ndarray) -> list[Detection]:
        """``detect`` for a ``B x H x W x C`` batch (or one frame, as a batch of one)."""
        return [self._finish(s) for s in self.score(as_rgb_batch(frames))]

    def _finish(self, score: np.ndarray) -> Detection:
        mask = score >= self.threshold
        return Detection(score, mask, self.threshold, find_hazards(mask, score, self.min_area))
