"""Which torch device names can run here: one check for the command line and the node."""

from __future__ import annotations


def device_problem(text: str) -> str | None:
    """Why ``text`` is not a usable device here (``cpu``, ``cuda`` or ``cuda:N`` naming a GPU this
    machine has), or None when it is."""
    if text == "cpu":
        return None
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        return f"device must be cpu, cuda or cuda:N, got {str(text)[:40]!r}"
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            return f"device {text!r}: no CUDA device is available here; use cpu"
        if device.index is not None and device.index >= count:
            return f"device {text!r}: this machine has CUDA devices 0..{count - 1}"
    return None
