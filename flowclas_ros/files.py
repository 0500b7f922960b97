"""Durable file writes, content hashes, and the marked output folders commands write into."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from flowclas_ros.errors import UserError


@contextmanager
def naming(path: str | Path) -> Iterator[None]:
    """Inside, an OSError that names no file (a library's writer meeting a full disk) names ``path``."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None and exc.errno:
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Write ``path`` through ``write(tmp_path)``: a temporary file in the same folder, flushed
    to disk, then renamed over ``path``, so readers and crashes see the old or the new file,
    never half of one. The file gets the usual permissions (0o666 less the umask), not
    ``mkstemp``'s private ones. The temporary file is removed when ``write`` fails."""
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with naming(path):
            write(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def write_text(path: Path, text: str) -> None:
    """``text`` into ``path`` through :func:`atomic_write` (a symlink there is replaced, never followed)."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def claim_folder(path: Path, marker: str, flag: str = "--output") -> bool:
    """Make ``path`` an output folder of ours, marked by the file ``marker`` inside it.

    A missing folder is created and an empty one adopted (both get the marker); a folder
    carrying the marker is reused. A file, or a non-empty folder without the marker, is
    refused with a UserError: it holds things we did not write. Returns True when the
    folder already carried the marker (what we wrote there before may be replaced)."""
    path = Path(path)
    for folder in (path, *path.parents):
        if folder.exists():
            if not folder.is_dir():
                where = "" if folder == path else f": {folder}"
                raise UserError(f"{flag} {path}{where} is a file, not a folder")
            break
    if (path / marker).is_file():
        return True
    if path.is_dir() and any(path.iterdir()):
        raise UserError(f"{flag} {path} is a non-empty folder that flowclas did not create (it has no {marker}); "
                        "pass a new or empty folder")
    path.mkdir(parents=True, exist_ok=True)
    atomic_write(path / marker, lambda tmp: Path(tmp).write_text("written by flowclas: this folder's contents are "
                                                                 "replaced when the command runs again\n"))
    return False


def remove_entries(folder: Path, names: Iterable[str]) -> None:
    """Remove the named entries of ``folder`` (files, symlinks or whole folders), where present.

    Only for names a command wrote into a folder marked by :func:`claim_folder`."""
    for name in names:
        entry = Path(folder, name)
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink(missing_ok=True)
