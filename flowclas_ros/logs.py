"""The package's logger and the one handler the commands install.

Library modules log through ``logging.getLogger(__name__)`` (children of ``flowclas_ros``);
they never print. The commands call :func:`configure` once; the ROS node forwards the same
logger to its ROS logger instead (``flowclas_ros.ros.logging_bridge``).
"""

from __future__ import annotations

import logging
import sys

LOGGER = "flowclas_ros"


def configure(command: str, verbose: bool = False) -> None:
    """Send the package's log records to stderr as ``flowclas COMMAND: level: message``."""
    handler = logging.StreamHandler(sys.stderr)
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
        return f"flowclas {self.command}: {level}{record.getMessage()}"
