"""torch.export archives (``.pt2``): saving without pickles, and auditing before loading.

Trust: ``torch.export.load`` (torch 2.13, "pt2 archive" zip) reads plain tensors as raw
bytes and the graph as JSON whose call targets resolve to registered torch operators, but
it also unpickles (``torch.load(weights_only=False)``, ``pickle.loads``) tensor
subclasses, custom/opaque objects, sample inputs whose weights-only load fails, and, as
a fallback, the older 2.7 zip layout. :func:`load_program` therefore audits the archive
first and refuses any of those; we save without sample inputs.
"""

from __future__ import annotations

import copy
import json
import re
import zipfile
from pathlib import Path

import torch

from flowclas_ros.deploy.errors import ArtefactError


def save_program(program: torch.export.ExportedProgram, path: Path) -> None:
    """``torch.export.save`` without the sample inputs (they would be pickled)."""
    program = copy.copy(program)
    program.example_inputs = None
    torch.export.save(program, str(path))


# Entries a safe pt2 archive may hold (under one top-level folder).
_SAFE_ENTRY = re.compile(
    r"[^/]+/(archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id|"
    r"models/[\w.-]+\.json|data/(weights|constants)/[\w.-]+|data/sample_inputs/[\w.-]+)"
)


def audit_program_archive(path: Path) -> None:
    """Refuse a pt2 archive that would make ``torch.export.load`` unpickle anything."""
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                name = info.filename
                if not _SAFE_ENTRY.fullmatch(name):
                    raise ArtefactError(f"{path}: unexpected entry {name!r}; refusing to load")
                if "/data/sample_inputs/" in name and info.file_size:
                    raise ArtefactError(f"{path}: holds pickled sample inputs; refusing to load")
                if name.endswith("_config.json"):
                    config = json.loads(archive.read(info)).get("config", {})
                    for fqn, meta in config.items():
                        if meta.get("use_pickle") or not str(meta.get("path_name", "")).startswith(("weight_", "tensor_")):
                            raise ArtefactError(f"{path}: {fqn} is a pickled object; refusing to load")
    except (zipfile.BadZipFile, json.JSONDecodeError, AttributeError) as exc:
        raise ArtefactError(f"{path} is not a valid torch.export archive: {exc}") from None


def load_program(path: Path) -> torch.export.ExportedProgram:
    """Audit, then ``torch.export.load`` an ExportedProgram."""
    audit_program_archive(path)
    return torch.export.load(str(path))


