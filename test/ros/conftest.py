"""Fixtures for tests that run flowclas_node on a real ROS 2 graph.

ROS 2 comes from PyPI's Jazzy wheels plus a locally built vision_msgs (``make ros``). Where
rclpy or vision_msgs cannot be imported the tests here are skipped, except under
``CI=true``, where that is a failure: CI must run them.

- ``ros_env``: the environment for ROS subprocesses (flowclas_ros.ros.environment).
- ``driver``: an rclpy node in the test process, in its own context, spun by a background
  thread: publish images, collect messages, wait for N of them.
- ``node_process``: a factory starting ``flowclas_node --ros-args -p k:=v -r from:=to`` as
  a subprocess, waiting until it is up, and always stopping it (SIGINT, then SIGKILL).

Every process of a test session uses one ROS_DOMAIN_ID derived from the pid, Fast DDS's
loopback-only profile (config/fastdds_localhost.xml, 16 MB shared memory) and
ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, so parallel runs on the machine do not see each
other and no packet leaves the host.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flowclas_ros.ros.environment import ros_environment

REPO = Path(__file__).resolve().parents[2]
VENV = Path(sys.prefix)
DEMO_MODEL = REPO / "flowclas_ros" / "data" / "demo_model"
DOMAIN_ID = 10 + os.getpid() % 200  # 10..209; Fast DDS accepts up to 232
NODE_READY_LOG = r"\]: model .* on \w+/\w+"  # DetectorNode's last line of a successful start
STARTUP_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0


def _ros_missing() -> str | None:
    try:
        import rclpy  # noqa: F401
        import sensor_msgs.msg  # noqa: F401
        import vision_msgs.msg  # noqa: F401
    except ImportError as exc:
        return f"{exc} (run `make ros` to install ROS 2 Jazzy and vision_msgs into {VENV})"
    return None


ROS_MISSING = _ros_missing()

# The test process's own DDS participant reads these when it is created, which is after
# collection: set them now so that the driver and the nodes share domain and transports.
_SESSION_ENV = ros_environment(VENV, {}, domain_id=DOMAIN_ID, localhost_only=True)
for _name in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", "RMW_IMPLEMENTATION", "FASTRTPS_DEFAULT_PROFILES_FILE"):
    os.environ[_name] = _SESSION_ENV[_name]


@pytest.fixture(autouse=True)
def _require_ros() -> None:
    if ROS_MISSING is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but ROS 2 is not importable: {ROS_MISSING}", pytrace=False)
    pytest.skip(f"ROS 2 is not importable: {ROS_MISSING}")


@pytest.fixture(scope="session")
def ros_env() -> dict[str, str]:
    """Environment for ROS subprocesses: this venv's ROS, the session's domain, loopback only."""
    env = ros_environment(VENV, domain_id=DOMAIN_ID, localhost_only=True)
    env["RCUTILS_LOGGING_BUFFERED_STREAM"] = "0"  # log lines reach the log file at once
    env["PYTHONUNBUFFERED"] = "1"
    return env


# --- the driver: an rclpy node in the test process ---------------------------------------


def _topic_types() -> dict[str, tuple[type, bool]]:
    """Message type and whether the topic is latched (transient local), by last name part."""
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import CompressedImage, Image
    from vision_msgs.msg import Detection2DArray, LabelInfo

    return {
        "image": (Image, False),
        "compressed": (CompressedImage, False),
        "anomaly_score": (Image, False),
        "anomaly_mask": (Image, False),
        "anomaly_overlay": (Image, False),
        "hazards": (Detection2DArray, False),
        "label_info": (LabelInfo, True),
        "diagnostics": (DiagnosticArray, False),
    }


@dataclass
class _Inbox:
    messages: list = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)


class Driver:
    """An rclpy node with its own context, spun in a background thread."""

    def __init__(self, name: str = "flowclas_test_driver") -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.signals import SignalHandlerOptions

        self.context = rclpy.Context()
        # No signal handlers: Ctrl-C must reach pytest, not shut this context down.
        rclpy.init(context=self.context, domain_id=DOMAIN_ID, signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._inboxes: dict[str, _Inbox] = {}
        self._publishers: dict[tuple[str, type], Any] = {}
        self._rng = np.random.default_rng(0)
        self._thread = threading.Thread(target=self._spin, name="ros-test-driver", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        while self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except (ExternalShutdownException, KeyboardInterrupt):
                break
            except Exception:  # the context went away under a callback during close()
                if self.context.ok():
                    raise
                break

    def resolve(self, topic: str) -> str:
        return self.node.resolve_topic_name(topic)

    def subscribe(self, topic: str, msg_type: type | None = None, *, latched: bool | None = None) -> list:
        """Start collecting ``topic``; returns the (live) list of received messages.

        The type and durability are guessed from the topic's last name part (the node's
        outputs, ``image``, ``/diagnostics``) unless given. Subscribe before publishing
        the input: a volatile topic's earlier messages are not delivered.
        """
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

        name = self.resolve(topic)
        if name in self._inboxes:
            return self._inboxes[name].messages
        known = _topic_types().get(name.rsplit("/", 1)[-1])
        if msg_type is None:
            if known is None:
                raise ValueError(f"no known message type for {name}: pass msg_type")
            msg_type = known[0]
        if latched is None:
            latched = bool(known and known[1])
        qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=1 if latched else 100,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE,
        )
        inbox = _Inbox()

        def receive(msg, inbox=inbox) -> None:
            with inbox.changed:
                inbox.messages.append(msg)
                inbox.changed.notify_all()

        self._inboxes[name] = inbox
        self.node.create_subscription(msg_type, name, receive, qos)
        return inbox.messages

    def wait_for(self, topic: str, count: int = 1, timeout: float = 30.0) -> list:
        """Wait until ``count`` messages arrived on ``topic`` (subscribed before); return them."""
        name = self.resolve(topic)
        if name not in self._inboxes:
            raise RuntimeError(f"wait_for({name!r}): call driver.subscribe({topic!r}) first")
        inbox = self._inboxes[name]
        with inbox.changed:
            if not inbox.changed.wait_for(lambda: len(inbox.messages) >= count, timeout=timeout):
                raise AssertionError(f"{len(inbox.messages)} of {count} messages on {name} within {timeout:.0f} s")
            return list(inbox.messages)

    def wait_for_subscribers(self, topic: str, msg_type: type | None = None, timeout: float = 20.0) -> None:
        """Wait until some subscription on ``topic`` is matched with our publisher."""
        pub = self._publisher(topic, msg_type)
        deadline = time.monotonic() + timeout
        while pub.get_subscription_count() == 0:
            if time.monotonic() > deadline:
                raise AssertionError(f"no subscriber on {self.resolve(topic)} within {timeout:.0f} s")
            time.sleep(0.02)

    def _publisher(self, topic: str, msg_type: type | None = None):
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        key = (self.resolve(topic), msg_type or Image)
        if key not in self._publishers:
            qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE)
            self._publishers[key] = self.node.create_publisher(key[1], key[0], qos)
        return self._publishers[key]

    def image(
        self,
        pixels: np.ndarray | None = None,
        *,
        encoding: str = "bgr8",
        frame_id: str = "camera",
        height: int = 480,
        width: int = 640,
    ):
        """A sensor_msgs/Image stamped now; random bgr8 pixels of height x width by default."""
        from sensor_msgs.msg import Image

        if pixels is None:
            pixels = self._rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        pixels = np.ascontiguousarray(pixels)
        msg = Image(height=pixels.shape[0], width=pixels.shape[1], encoding=encoding)
        msg.header.frame_id = frame_id
        msg.header.stamp = self.node.get_clock().now().to_msg()
        msg.step = pixels.strides[0]
        msg.data = pixels.tobytes()
        return msg

    def publish(self, topic: str, msg, *, wait_for_subscriber: bool = True) -> None:
        if wait_for_subscriber:
            self.wait_for_subscribers(topic, type(msg))
        self._publisher(topic, type(msg)).publish(msg)

    def exchange(self, topic: str, msg, replies: str | Sequence[str], *, every: float = 2.0, timeout: float = 30.0) -> list:
        """Publish ``msg`` on ``topic`` until every topic in ``replies`` (subscribed before) carried an
        output with ``msg``'s header; return those outputs in the order of ``replies``.

        The node's image subscription is best effort, and a subscriber matched on our side may
        not yet have matched us on its side: a single frame sent then is lost. Sending the same
        frame again until its outputs arrive makes the exchange independent of discovery timing
        (the node keeps only the latest waiting frame, so repeats cost at most a frame each).
        """
        names = [self.resolve(t) for t in ([replies] if isinstance(replies, str) else replies)]
        missing = [n for n in names if n not in self._inboxes]
        if missing:
            raise RuntimeError(f"exchange: call driver.subscribe() first for {missing}")
        key = (msg.header.frame_id, msg.header.stamp.sec, msg.header.stamp.nanosec)

        def answered() -> list:
            found = []
            for n in names:
                with self._inboxes[n].changed:
                    hit = [m for m in self._inboxes[n].messages if (m.header.frame_id, m.header.stamp.sec, m.header.stamp.nanosec) == key]
                found.append(hit[0] if hit else None)
            return found

        deadline = time.monotonic() + timeout
        self.wait_for_subscribers(topic, type(msg), timeout=timeout)
        while True:
            self._publisher(topic, type(msg)).publish(msg)
            resend = min(time.monotonic() + every, deadline)
            while time.monotonic() < resend:
                found = answered()
                if all(f is not None for f in found):
                    return found
                time.sleep(0.02)
            if time.monotonic() >= deadline:
                got = [n for n, f in zip(names, answered()) if f is not None]
                raise AssertionError(f"frame {key} on {self.resolve(topic)}: outputs on {got} of {names} within {timeout:.0f} s")

    def close(self) -> None:
        self.context.try_shutdown()
        self._thread.join(timeout=5.0)
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()


@pytest.fixture
def driver() -> Iterator[Driver]:
    d = Driver()
    try:
        yield d
    finally:
        d.close()


# --- the node under test as a subprocess -------------------------------------------------


class NodeProcess:
    """A running ``flowclas_node``; ``stop()`` ends it and returns its exit code."""

    def __init__(self, command: list[str], env: Mapping[str, str], log: Path) -> None:
        self.command = command
        self.log = log
        self._log_file = open(log, "wb")
        self.process = subprocess.Popen(command, env=dict(env), stdout=self._log_file, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, pattern: str = NODE_READY_LOG, timeout: float = STARTUP_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while not regex.search(self.output()):
            if self.process.poll() is not None:
                raise AssertionError(f"flowclas_node exited with {self.process.returncode} while starting:\n{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"flowclas_node not up within {timeout:.0f} s:\n{self.output()}")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGINT, timeout: float = STOP_TIMEOUT) -> int:
        """Send ``sig``; SIGKILL after ``timeout`` s. Returns the exit code (negative: killed)."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log_file.close()
        return self.process.returncode


def _param_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_param_value(v) for v in value) + "]"
    return str(value)


@pytest.fixture
def node_process(ros_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    """Factory: ``node_process(params=None, remaps=None, args=None, *, ready=NODE_READY_LOG, params_file=None)``.

    ``params`` default to the demo bundle on the torch backend; ``args`` go before
    ``--ros-args`` (e.g. ``["--cameras", "front"]``). Returns once the node logged its start
    (``ready=None``: at once). Every node started is stopped at teardown, killed if needed,
    and its log printed (pytest shows it when the test failed).
    """
    started: list[NodeProcess] = []

    def start(
        params: Mapping[str, Any] | None = None,
        remaps: Mapping[str, str] | None = None,
        args: Sequence[str] | None = None,
        *,
        ready: str | None = NODE_READY_LOG,
        timeout: float = STARTUP_TIMEOUT,
        params_file: Path | None = None,
    ) -> NodeProcess:
        values = {"model": str(DEMO_MODEL), "backend": "torch", **(params or {})}
        command = [str(VENV / "bin" / "flowclas_node"), *(args or []), "--ros-args"]
        if params_file is not None:  # as a launch file's `parameters=[file, {...}]`: -p overrides it
            command += ["--params-file", str(params_file)]
        for name, value in values.items():
            command += ["-p", f"{name}:={_param_value(value)}"]
        for source, target in (remaps or {}).items():
            command += ["-r", f"{source}:={target}"]
        node = NodeProcess(command, ros_env, tmp_path / f"flowclas_node_{len(started)}.log")
        started.append(node)
        if ready is not None:
            node.wait_ready(ready, timeout)
        return node

    try:
        yield start
    finally:
        for node in started:
            code = node.stop()
            print(f"--- {' '.join(node.command)} (exit {code})\n{node.output()}")
