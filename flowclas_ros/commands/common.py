"""Arguments and helpers shared by several commands."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, TypeVar

from flowclas_ros.limits import Range
from flowclas_ros.runtime.devices import device_problem
from flowclas_ros.runtime.threads import MAX_THREADS

T = TypeVar("T")


def number_type(kind: type[int] | type[float], bound: Range) -> Callable[[str], Any]:
    """An argparse ``type``: the flag's text as a ``kind`` number inside ``bound``, else a usage error."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not bound.contains(value):
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"must be {what} in {bound}, got {text!r}")
        return value

    return parse


threads_value = number_type(int, Range(0, MAX_THREADS))  # --threads: 0 means one per usable CPU


def device_value(text: str) -> str:
    """``--device`` values: ``cpu``, or ``cuda``/``cuda:N`` naming a GPU this machine has."""
    if (problem := device_problem(text)) is not None:
        raise argparse.ArgumentTypeError(problem)
    return text


def add_threads_argument(p: argparse.ArgumentParser) -> None:
    """``--threads``, for every command that runs torch or ONNX Runtime on the CPU."""
    p.add_argument("--threads", type=threads_value, default=0, metavar="N",
                   help="CPU threads for torch and ONNX Runtime (default 0: one per CPU this process may use, "
                        "or OMP_NUM_THREADS when set)")


def add_inference_arguments(p: argparse.ArgumentParser) -> None:
    """``--model``, ``--backend``, ``--device``, ``--precision`` and ``--threads``, shared by every command that runs a bundle."""
    from flowclas_ros.model.precision import PRECISIONS
    from flowclas_ros.runtime.backends import BACKENDS

    p.add_argument("--model", required=True, help="model bundle directory")
    p.add_argument("--backend", default="torch", choices=BACKENDS, help="inference backend")
    p.add_argument("--device", type=device_value, default="cpu", help="device, e.g. cpu or cuda:0")
    p.add_argument("--precision", default="fp32", choices=tuple(PRECISIONS))
    add_threads_argument(p)


def options(cls: type[T], args: argparse.Namespace, **extra: Any) -> T:
    """The dataclass ``cls`` filled from the parsed flags of the same names (plus ``extra``)."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values = {k: v for k, v in vars(args).items() if k in names}
    return cls(**{**values, **extra})


def output_folder(path: Path, flag: str = "--output", *, empty: bool = False, marker: str | None = None) -> Path:
    """``path`` created as a folder (with its parents) and checked writable; UserError naming
    ``flag`` when it is a file, lies under a file or cannot be created or written, or (``empty``:
    for a command that writes a whole bundle) already holds anything, which is never overwritten.
    With ``marker``, a folder of ours (:func:`flowclas_ros.files.claim_folder`): a non-empty folder
    without that marker is refused, since what we write there would replace the user's files."""
    from flowclas_ros.errors import UserError
    from flowclas_ros.files import claim_folder

    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file, not a folder: name a folder")
    if empty and path.is_dir() and any(path.iterdir()):
        raise UserError(f"{flag} {path} is not empty; name a new folder (nothing in it is overwritten)")
    try:
        if marker is not None:
            claim_folder(path, marker, flag)
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{flag} {path}: cannot create the folder ({exc.strerror or exc})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: folder is not writable")
    return path
