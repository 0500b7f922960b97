"""The package's logger and the one handler the commands install.

Library modules log through ``logging.getLogger(__name__)`` (children of ``flowclas_ros``);
they never print. The commands call :func:`configure` once; the ROS node forwards the same
logger to its ROS logger instead (``flowclas_ros.ros.logging_bridge``).
"""

from __future__ import annotations

import logging
import re
import sys

LOGGER = "flowclas_ros"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # newlines, escape sequences: from file names, never ours


def configure(command: str, verbose: bool = False) -> None:
    """Send the package's log records to stderr as ``flowclas COMMAND: level: message``, one
    line each (control characters escaped), above any progress bar."""
    handler = _BarSafeHandler(sys.stderr)
    handler.setFormatter(_CommandFormatter(command))
    logger = logging.getLogger(LOGGER)
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False


class _CommandFormatter(logging.Formatter):
    def __init__(self, command: str) -> None:
        super().__init__()
        self.command = command

    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        message = _CONTROL.sub(lambda m: repr(m.group())[1:-1], record.getMessage())
        return f"flowclas {self.command}: {level}{message}"


class _BarSafeHandler(logging.StreamHandler):
    """Writes through ``tqdm.write``: a line logged while a progress bar runs lands above the
    bar instead of being glued to its end."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # as logging.StreamHandler: a failing handler must not end the run
            self.handleError(record)
