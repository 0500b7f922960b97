"""Arguments and helpers shared by several commands."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def add_inference_arguments(p: argparse.ArgumentParser) -> None:
    """``--model``, ``--backend``, ``--device`` and ``--precision``, shared by every command that runs a bundle."""
    from flowclas_ros.model.precision import PRECISIONS
    from flowclas_ros.runtime.backends import BACKENDS

    p.add_argument("--model", required=True, help="model bundle directory")
    p.add_argument("--backend", default="torch", choices=BACKENDS, help="inference backend")
    p.add_argument("--device", default="cpu", help="device, e.g. cpu or cuda:0")
    p.add_argument("--precision", default="fp32", choices=tuple(PRECISIONS))


def options(cls: type[T], args: argparse.Namespace, **extra: Any) -> T:
    """The dataclass ``cls`` filled from the parsed flags of the same names (plus ``extra``)."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values = {k: v for k, v in vars(args).items() if k in names}
    return cls(**{**values, **extra})
