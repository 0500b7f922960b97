"""The ``flowclas_node`` console script: sets the OpenMP environment, then runs the node.

OpenMP reads its wait policy once, when torch loads, and ``flowclas_ros.ros.node`` imports
torch at module level; so the entry point is this module, which sets the environment
(:func:`flowclas_ros.runtime.threads.prepare_environment`) before importing the node.
"""

from __future__ import annotations

import signal
import sys


def _interrupted(signum, frame) -> None:
    raise KeyboardInterrupt


def main(args: list[str] | None = None) -> int:
    """Entry point ``flowclas_node``: see :func:`flowclas_ros.ros.node.main`.

    SIGINT or SIGTERM while torch and rclpy still load (a launch file tearing the node down
    during its first seconds) ends the process quietly with 0; once ``rclpy.init`` runs, its own
    handlers take over both signals."""
    signal.signal(signal.SIGTERM, _interrupted)
    try:
        from flowclas_ros.runtime.threads import prepare_environment

        prepare_environment()
        from flowclas_ros.ros.node import main as node_main

        return node_main(args)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
