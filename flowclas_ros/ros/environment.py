"""Process environments that put the ROS 2 Jazzy of a venv on the path (no rclpy import).

``scripts/install_ros.sh VENV`` installs ROS 2 from PyPI's wheels into a venv;
``ros_environment`` gives the environment a subprocess (``flowclas_node``, a test driver)
needs to use it. The shell equivalent is ``scripts/ros_env.sh``, which documents each
variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

_CONFIG = Path(__file__).resolve().parents[2] / "config"
PROFILE = _CONFIG / "fastdds.xml"
"""The Fast DDS participant profile (16 MB shared memory + UDPv4) shipped in the repository."""
LOCALHOST_PROFILE = _CONFIG / "fastdds_localhost.xml"
"""The same with UDPv4 restricted to the loopback interface (tests, single-host runs)."""


def _prepend(value: str, existing: str | None) -> str:
    return f"{value}{os.pathsep}{existing}" if existing else value


def ros_environment(
    venv: Path,
    base: Mapping[str, str] | None = None,
    *,
    domain_id: int | None = None,
    localhost_only: bool = False,
    profile: Path | None = None,
    fastdds_defaults: bool = False,
) -> dict[str, str]:
    """Return ``base`` (default: ``os.environ``) with the ROS variables of ``venv`` set.

    Sets ``LD_LIBRARY_PATH`` (the wheels' libraries; required whenever the wheels'
    bootstrapper does not re-execute the interpreter, e.g. when its guard variable was
    inherited) together with that guard ``_ROS_WHEELS_BOOTSTRAP_COMPLETE=1``,
    ``AMENT_PREFIX_PATH`` (the ament index), ``RMW_IMPLEMENTATION=rmw_fastrtps_cpp``,
    ``FASTRTPS_DEFAULT_PROFILES_FILE`` (``profile``, default ``PROFILE``, or
    ``LOCALHOST_PROFILE`` when ``localhost_only``; ``fastdds_defaults`` removes it so Fast DDS
    runs with its built-in 512 kB shared memory) and puts ``venv/bin`` first on ``PATH``.
    ``domain_id`` sets ``ROS_DOMAIN_ID``; ``localhost_only`` also sets
    ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``: with both, no packet leaves the host.
    """
    venv = Path(venv).resolve()
    env = dict(os.environ if base is None else base)
    libs = [venv / "lib", *sorted(venv.glob("lib/python3*/site-packages/ros_*.libs"))]
    env["LD_LIBRARY_PATH"] = _prepend(os.pathsep.join(str(p) for p in libs), env.get("LD_LIBRARY_PATH"))
    env["_ROS_WHEELS_BOOTSTRAP_COMPLETE"] = "1"
    env["AMENT_PREFIX_PATH"] = _prepend(str(venv), env.get("AMENT_PREFIX_PATH"))
    env["RMW_IMPLEMENTATION"] = "rmw_fastrtps_cpp"
    env["PATH"] = _prepend(str(venv / "bin"), env.get("PATH"))
    if fastdds_defaults:
        env.pop("FASTRTPS_DEFAULT_PROFILES_FILE", None)
    else:
        chosen = profile if profile is not None else LOCALHOST_PROFILE if localhost_only else PROFILE
        env["FASTRTPS_DEFAULT_PROFILES_FILE"] = str(chosen)
    if localhost_only:
        env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    if domain_id is not None:
        env["ROS_DOMAIN_ID"] = str(domain_id)
    return env
