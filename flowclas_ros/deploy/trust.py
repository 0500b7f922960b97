"""The machine-local record of the compiled artefacts this machine built.

A compiled artefact is native code or a graph that runs with the user's rights, so one is
used only when this machine built it: :func:`record_built` notes the SHA-256 and cache key
of every artefact ``flowclas export`` (or any build) writes, in a record outside the bundle,
and :func:`built_here` asks it. An artefact that arrived inside a bundle is not in the
record and is refused until rebuilt. The record lives in ``$FLOWCLAS_STATE_DIR``, else
``$XDG_STATE_HOME/flowclas_ros``, else ``~/.local/state/flowclas_ros``; it is replaced
atomically, and an unreadable or malformed one counts as empty (with a warning).
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from flowclas_ros.deploy.errors import ArtefactError
from flowclas_ros.errors import UserError
from flowclas_ros.files import atomic_write
from flowclas_ros.structured import expect_mapping, read_json

log = logging.getLogger(__name__)

STATE_ENV = "FLOWCLAS_STATE_DIR"
RECORD = "artefacts.json"
MAX_ENTRIES = 4096  # oldest entries are dropped beyond this
_SHA256 = re.compile(r"[0-9a-f]{64}")


def record_path() -> Path:
    """Where the record is: ``$FLOWCLAS_STATE_DIR``, ``$XDG_STATE_HOME/flowclas_ros`` or ``~/.local/state/flowclas_ros``."""
    if state := os.environ.get(STATE_ENV):
        return Path(state) / RECORD
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "flowclas_ros" / RECORD


def _entries(path: Path) -> list[dict[str, Any]]:
    """The record's well-formed entries; an absent record is empty, a bad one empty with a warning."""
    try:
        if not path.exists():
            return []
        if not path.is_file():
            raise UserError(f"{path} is not a regular file")
        entries = expect_mapping(read_json(path), str(path)).get("artefacts")
        if not isinstance(entries, list):
            raise UserError(f"{path}: 'artefacts' is not a list")
    except (UserError, OSError) as exc:
        log.warning("ignoring the artefact record: %s", exc)
        return []
    good = [e for e in entries if isinstance(e, dict) and isinstance(e.get("sha256"), str)
            and _SHA256.fullmatch(e["sha256"]) and isinstance(e.get("key"), dict)]
    if len(good) < len(entries):
        log.warning("ignoring %d malformed entries of the artefact record %s", len(entries) - len(good), path)
    return good


def built_here(sha256: str, key: dict[str, Any]) -> bool:
    """True when this machine's record holds an artefact with this SHA-256 built for ``key``."""
    return any(e["sha256"] == sha256 and e["key"] == key for e in _entries(record_path()))


def record_built(artefact: Path, sha256: str, key: dict[str, Any]) -> None:
    """Add a just-built artefact to the record (ArtefactError when the record cannot be written)."""
    path = record_path()
    entries = [e for e in _entries(path) if e["sha256"] != sha256]
    entries.append({"sha256": sha256, "key": key, "path": str(Path(artefact).resolve())})
    text = json.dumps({"artefacts": entries[-MAX_ENTRIES:]}, indent=1) + "\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    except OSError as exc:
        raise ArtefactError(
            f"built {artefact} but cannot record it in {path} ({exc.strerror or exc}); "
            f"set {STATE_ENV} to a writable folder and rebuild with --force"
        ) from None
