"""Forward the package's Python log records to a node's ROS logger (and so to /rosout)."""

from __future__ import annotations

import logging
from typing import Any

from flowclas_ros.logs import LOGGER


class RosLogHandler(logging.Handler):
    """A logging handler writing each record to an rclpy logger at the matching severity."""

    def __init__(self, ros_logger: Any) -> None:
        super().__init__()
        self.ros_logger = ros_logger

    def emit(self, record: logging.LogRecord) -> None:
        """Write one record."""
        try:
            message = self.format(record)
            if record.levelno >= logging.ERROR:
                self.ros_logger.error(message)
            elif record.levelno >= logging.WARNING:
                self.ros_logger.warning(message)
            elif record.levelno >= logging.INFO:
                self.ros_logger.info(message)
            else:
                self.ros_logger.debug(message)
        except Exception:  # a log line must never take the node down
            self.handleError(record)


def forward_to(ros_logger: Any) -> RosLogHandler:
    """Route ``flowclas_ros`` log records (INFO and up) to ``ros_logger`` (replacing an earlier
    destination); returns the handler. Give a node's ``get_logger()`` so that the lines reach
    /rosout under the node's name."""
    handler = RosLogHandler(ros_logger)
    logger = logging.getLogger(LOGGER)
    for old in [h for h in logger.handlers if isinstance(h, RosLogHandler)]:
        logger.removeHandler(old)  # one ROS destination at a time (e.g. the node's, once it exists)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return handler
