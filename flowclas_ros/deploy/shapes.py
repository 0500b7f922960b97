"""Input shapes of compiled artefacts: static sizes or (min, opt, max) ranges per dimension.

Dynamic height and width must be multiples of the encoder's ``pad_multiple`` (the padding
then vanishes from the graph); ViT encoders size their position embedding at build time,
so for them height and width are fixed to the bundle's ``input_size``.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from flowclas_ros.deploy.errors import ArtefactError
from flowclas_ros.errors import UserError
from flowclas_ros.model.network import FlowCLASNet

Range = tuple[int, int, int]


def parse_size(text: str) -> tuple[int, int]:
    """``HxW`` (e.g. ``480x640``) -> (height, width)."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text or "")
    if not match:
        raise UserError(f"size {text!r} is not of the form HEIGHTxWIDTH, e.g. 480x640")
    h, w = int(match[1]), int(match[2])
    if not (16 <= h <= 8192 and 16 <= w <= 8192):
        raise UserError(f"size {text!r} is outside 16..8192 pixels a side")
    return h, w


@dataclass(frozen=True)
class InputShape:
    """Batch, height and width as (min, opt, max); a dimension is static when min == max."""

    batch: Range
    height: Range
    width: Range

    @classmethod
    def static(cls, height: int, width: int, batch: int = 1) -> "InputShape":
        """One fixed batch size and height x width."""
        return cls((batch,) * 3, (height,) * 3, (width,) * 3)

    def __post_init__(self) -> None:
        for name, (lo, opt, hi) in (("batch", self.batch), ("height", self.height), ("width", self.width)):
            if not 1 <= lo <= opt <= hi:
                raise ArtefactError(f"{name} range must satisfy 1 <= min <= opt <= max, got {(lo, opt, hi)}")

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
        """JSON form (for manifests)."""
        return {k: list(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "InputShape":
        """Inverse of :meth:`to_dict`; ArtefactError when malformed."""
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


def dynamic_dims(shape: InputShape, multiple: int) -> dict[int, Any]:
    """``torch.export`` dims for the dynamic axes of ``shape`` (H and W in steps of ``multiple``)."""
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


