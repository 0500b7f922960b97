"""Reading ``torch.save`` files we did not write: tensors only, and no inflation beyond the file.

``torch.load(weights_only=True)`` refuses pickled code, but a zip entry compressed with deflate
could still inflate a 1 MB file into gigabytes before anything is refused. ``torch.save`` stores
its entries uncompressed, so a file whose entries inflate to more than its own size was not made
by it: such a file is refused from the zip directory, before anything is read.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from flowclas_ros.errors import UserError

SLACK = 1 << 20  # zip headers and padding


def load_tensors(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, after the zip inflation check.

    UserError when the zip directory promises more bytes than the file holds; the exceptions
    of ``torch.load`` otherwise (callers turn them into their own one-line errors)."""
    import torch

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            inflated = sum(info.file_size for info in archive.infolist())
        size = path.stat().st_size
        if inflated > size + SLACK:
            raise UserError(f"{path}: its zip entries inflate to {inflated} bytes from a {size}-byte file; "
                            "torch.save never compresses, so this is not a torch weights file (a zip bomb?)")
    return torch.load(path, map_location="cpu", weights_only=True)
