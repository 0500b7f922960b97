"""A training run's folder: claimed with a marker, its recipe recorded and compared on resume,
its artefacts (checkpoints, logs) written atomically and cleared when the run starts over.

Only what this module names is ever removed, and only inside a folder carrying the marker
(:func:`flowclas_ros.files.claim_folder`): a run never deletes or overwrites a user's file.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import torch
import yaml

from flowclas_ros.errors import UserError
from flowclas_ros.files import atomic_write, claim_folder, naming, remove_entries
from flowclas_ros.model.torch_files import load_tensors
from flowclas_ros.structured import expect_mapping, read_yaml
from flowclas_ros.training.config import TrainConfig

MARKER = ".flowclas-run"
RECIPE = "config.yaml"
CHECKPOINT_VERSION = 1
# what a run writes and a fresh start clears (the bundle in model/ is replaced when the run ends)
FOLDERS = ("checkpoints", "logs", "model")
ARTEFACTS = ("checkpoints/last.pt", "checkpoints/best.pt", "logs/train.csv", "logs/val.csv")
# recipe keys that may change when a run resumes without changing what it computes
RESUMABLE = {"run.devices", "data.workers"}
MISSING = object()
START_OVER = "pass --restart to start over or use a new --output folder"


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> leaf value (an empty mapping is a leaf)."""
    if not isinstance(tree, dict) or not tree:
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def recipe_changes(old: dict, new: dict) -> list[str]:
    """``key: old -> new`` for every recipe key that differs (keys in :data:`RESUMABLE` ignored)."""
    a, b = _flat(old), _flat(new)
    return [f"{k}: {a.get(k, '<none>')!r} -> {b.get(k, '<none>')!r}" for k in sorted(a.keys() | b.keys())
            if k not in RESUMABLE and a.get(k, MISSING) != b.get(k, MISSING)]


def open_run(config: TrainConfig, run_dir: str | Path, restart: bool = False) -> bool:
    """Claim ``run_dir`` for ``config``; returns True when the run resumes from its checkpoint.

    A new or empty folder becomes a run folder; a non-empty folder that is not one is refused.
    Without a checkpoint to resume (or with ``restart``) the artefacts of an earlier attempt
    are removed, so no stale ``best.pt`` or log rows leak into the new run. Resuming with a
    recipe other than the recorded one is refused. The resolved recipe is written to
    ``RUN/config.yaml``."""
    run_dir = Path(run_dir)
    claim_folder(run_dir, MARKER)
    for folder in FOLDERS:
        if (run_dir / folder).exists() and not (run_dir / folder).is_dir():
            raise UserError(f"{run_dir / folder} is a file, not a folder; move it away or use a new --output folder")
    for folder in FOLDERS:  # temporaries of writes a kill interrupted
        remove_entries(run_dir / folder, [p.name for p in (run_dir / folder).glob(".*.tmp")])
    recipe = yaml.safe_load(yaml.safe_dump(config.to_dict(), sort_keys=False))
    resume = not restart and (run_dir / ARTEFACTS[0]).exists()
    if resume:
        if not (run_dir / RECIPE).is_file():
            raise UserError(f"{run_dir} holds a checkpoint but not its recipe {RECIPE}; {START_OVER}")
        stored = expect_mapping(read_yaml(run_dir / RECIPE), str(run_dir / RECIPE))
        changes = recipe_changes(stored, recipe)
        if changes:
            more = f" (and {len(changes) - 3} more)" if len(changes) > 3 else ""
            raise UserError(f"{run_dir} holds a run trained with another recipe ({'; '.join(changes[:3])}{more}); {START_OVER}")
    else:
        remove_entries(run_dir, ARTEFACTS)
        remove_entries(run_dir / "logs", [p.name for p in (run_dir / "logs").glob("events.out.tfevents.*")])
    for folder in ("checkpoints", "logs"):
        (run_dir / folder).mkdir(exist_ok=True)
    text = yaml.safe_dump(recipe, sort_keys=False)
    atomic_write(run_dir / RECIPE, lambda tmp: Path(tmp).write_text(text))
    return resume


class _Recording(io.RawIOBase):
    """A binary file that remembers its first write error: torch.save reports one as a bare
    RuntimeError, which would hide a full disk behind a traceback."""

    def __init__(self, file: io.BufferedWriter) -> None:
        super().__init__()
        self.file, self.error = file, None

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        try:
            return self.file.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise


def save_checkpoint(state: dict, path: Path) -> None:
    """``torch.save`` through :func:`flowclas_ros.files.atomic_write`: a kill leaves the old
    file, a failed write (disk full) raises OSError and leaves no temporary file."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            sink = _Recording(f)
            try:
                torch.save(state, sink)
            except RuntimeError:
                if sink.error is None:
                    raise
                raise sink.error from None

    atomic_write(path, write)


def load_checkpoint(path: Path) -> dict:
    """A checkpoint written by this trainer (tensors and plain values only: no unpickling of code)."""
    try:
        state = load_tensors(path)
    except Exception as exc:  # noqa: BLE001 - any failure means the file is unusable
        raise UserError(f"cannot read checkpoint {path} ({_gist(exc)}); {START_OVER}") from None
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION or not isinstance(state.get("model"), dict):
        found = state.get("version") if isinstance(state, dict) else type(state).__name__
        raise UserError(f"{path} is not a flowclas training checkpoint (version {CHECKPOINT_VERSION}, got "
                        f"{found!r}); {START_OVER}")
    return state


def restore(module: Any, state: Any, path: Path, what: str) -> None:
    """``module.load_state_dict(state)``, refused with one line when ``state`` belongs to another
    model (or optimiser) than the recipe builds."""
    try:
        module.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise UserError(f"{path} holds the {what} of another model than the recipe's ({_gist(exc)}); "
                        f"{START_OVER}") from None


def _gist(exc: BaseException, limit: int = 160) -> str:
    """The informative start of a library's (often many-line) message."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip() and not line.rstrip().endswith(":")]
    text = (lines[0] if lines else type(exc).__name__).split(". ")[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


class CsvLog:
    """Appends rows to a CSV file, writing the header once (resumed runs keep appending)."""

    def __init__(self, path: Path, fields: list[str]) -> None:
        self.path, self.fields = path, fields
        if not path.exists():
            with open(path, "w", newline="") as f:
                csv.writer(f).writerow(fields)

    def write(self, row: dict) -> None:
        """Append one row and flush it to disk."""
        with naming(self.path), open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([_fmt(row.get(k, "")) for k in self.fields])

    def keep_until(self, step: int) -> None:
        """Drop the rows logged after ``step`` (a resumed run logs those steps again)."""
        with open(self.path, newline="") as f:
            rows = list(csv.DictReader(f))
        kept = [r for r in rows if str(r.get("step", "")).isdigit() and int(r["step"]) <= step]
        if len(kept) == len(rows):
            return

        def write(tmp: Path) -> None:
            with open(tmp, "w", newline="") as f:
                out = csv.writer(f)
                out.writerow(self.fields)
                out.writerows([[r.get(k, "") for k in self.fields] for r in kept])

        atomic_write(self.path, write)


def _fmt(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)
