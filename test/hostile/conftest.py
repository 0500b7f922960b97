"""The hostile-input harness: run one ``flowclas`` command in-process on inputs the test wrote,
and check what a user would: no traceback, the exit code, one clear line, and that nothing
outside the command's own output folder changed.

Every case is generated here by the test (small files, no downloads). A case fails when the
command raises (any exception that reaches us would be a traceback for the user), when its
error is not exactly one ``flowclas <command>: error: ...`` line, or when a file it was not
told to write appeared, changed or vanished.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Iterable
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class Outcome:
    """What one hostile command did."""

    code: int
    stderr: str
    stdout: str

    @property
    def errors(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if ": error:" in line]


def snapshot(root: Path, skip: Iterable[Path] = ()) -> dict[str, str]:
    """Relative path -> content hash (or ``dir``/``link:target``) of everything under ``root``."""
    skipped = [p.resolve() for p in skip]
    seen: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        if any(here.resolve() == s or s in here.resolve().parents for s in skipped):
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            path = here / name
            if path.resolve() in skipped:  # an output itself may appear or change
                continue
            rel = str(path.relative_to(root))
            if path.is_symlink():
                seen[rel] = "link:" + os.readlink(path)
            elif path.is_dir():
                seen[rel] = "dir"
            elif path.is_file():
                seen[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return seen


def run_flowclas(argv: list[str], cwd: Path, outputs: Iterable[Path] = ()) -> Outcome:
    """Run ``flowclas argv`` in-process with ``cwd`` as working directory; fail the test if it
    raised, or if anything under ``cwd`` outside ``outputs`` changed."""
    from flowclas_ros.commands.main import main

    outputs = list(outputs)
    before = snapshot(cwd, outputs)
    err, out = io.StringIO(), io.StringIO()
    old = Path.cwd()
    os.chdir(cwd)
    try:
        with redirect_stderr(err), redirect_stdout(out):
            try:
                code = main(argv)
            except SystemExit as exc:  # argparse usage errors
                code = exc.code if isinstance(exc.code, int) else 2
    finally:
        os.chdir(old)
    after = snapshot(cwd, outputs)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"flowclas {' '.join(argv)} changed files outside its outputs: {changed}"
    return Outcome(code, err.getvalue(), out.getvalue())


def expect_refused(outcome: Outcome, *needles: str, code: int = 1) -> None:
    """One ``error:`` line naming every needle (case-insensitive), no traceback, exit ``code``."""
    assert "Traceback" not in outcome.stderr, outcome.stderr
    assert outcome.code == code, (outcome.code, outcome.stderr)
    if code == 2:  # argparse's own usage error
        assert "error:" in outcome.stderr, outcome.stderr
        return
    assert len(outcome.errors) == 1, outcome.stderr
    line = outcome.errors[0].lower()
    for needle in needles:
        assert needle.lower() in line, (needle, outcome.stderr)


@pytest.fixture
def flowclas(tmp_path: Path) -> Callable[..., Outcome]:
    """``flowclas(*argv, outputs=[...])`` runs the command in ``tmp_path`` (see run_flowclas)."""

    def run(*argv: str, outputs: Iterable[Path] = ()) -> Outcome:
        return run_flowclas([str(a) for a in argv], tmp_path, [Path(tmp_path, o) for o in outputs])

    return run
