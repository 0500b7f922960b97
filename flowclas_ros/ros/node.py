"""The ROS 2 node: a thin rclpy adapter around the ROS-free frame pipeline.

Subscribes to ``image`` (sensor_msgs/Image) or ``image/compressed`` (CompressedImage) and
publishes, with the input header, ``anomaly_score`` (32FC1), ``anomaly_mask`` (mono8),
``anomaly_overlay`` (bgr8, only while subscribed and enabled), ``hazards``
(vision_msgs/Detection2DArray), ``label_info`` (vision_msgs/LabelInfo, transient local)
and ``/diagnostics``. Inference runs in a worker thread fed by a keep-latest slot
(flowclas_ros.runtime.scheduling), so the executor never blocks and frames never queue.

Several cameras in one process (``flowclas_node --cameras front rear``): one node per
camera namespace, all spun by one executor and sharing one loaded model (rclpy has no
component container, so the process builds the nodes itself). Each node keeps its own
slot, worker, threshold and statistics; a lock lets one frame at a time use the model.
"""

from __future__ import annotations

import argparse
import copy
import logging
import re
import sys
import threading
import time

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.exceptions import NameValidationException, ParameterException
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.lifecycle.node import LifecycleNodeMixin
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.utilities import remove_ros_args
from rclpy.validate_namespace import validate_namespace
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header
from vision_msgs.msg import Detection2DArray, LabelInfo

from flowclas_ros.errors import FlowclasError
from flowclas_ros.ros.logging_bridge import forward_to
from flowclas_ros.ros.messages import rclpy_factory
from flowclas_ros.ros.parameters import PARAMETERS, check_parameters
from flowclas_ros.runtime.devices import device_problem
from flowclas_ros.runtime.scheduling import LatestSlot
from flowclas_ros.runtime.stats import FrameStats
from flowclas_ros.runtime.threads import configure_threads

NODE_NAME = "flowclas_detector"


def _descriptor(name: str) -> ParameterDescriptor:
    spec = PARAMETERS[name]
    descriptor = ParameterDescriptor(name=name, description=spec.description, read_only=not spec.dynamic)
    if spec.choices:
        descriptor.additional_constraints = "one of: " + ", ".join(spec.choices)
    if spec.range and isinstance(spec.default, int) and not isinstance(spec.default, bool):
        descriptor.integer_range = [IntegerRange(from_value=int(spec.range[0]), to_value=int(spec.range[1]), step=1)]
    elif spec.range:
        descriptor.floating_point_range = [FloatingPointRange(from_value=spec.range[0], to_value=spec.range[1], step=0.0)]
    return descriptor


class _DetectorCore:
    """What the plain and the managed (lifecycle) node share: ``_configure`` loads the model and
    creates the outputs, ``_activate`` subscribes and starts the worker, ``_deactivate`` stops
    both (the model stays loaded)."""

    def _declare(self) -> dict:
        values = {
            name: self.declare_parameter(name, spec.default, _descriptor(name)).value for name, spec in PARAMETERS.items()
        }
        if (reason := check_parameters(values, running=False)) is not None:
            raise ValueError(reason)
        if not values["model"]:
            raise ValueError("parameter 'model' (a bundle directory) is required")
        if (problem := device_problem(values["device"])) is not None:
            raise ValueError(problem)
        return values

    def _configure(self, values: dict, shared: dict | None) -> None:
        self.values = values
        self._stopping = True  # until activated
        shared = {} if shared is None else shared
        self.detector, self.model_lock = self._load(values, shared)
        self.threads = shared["threads"]
        self.bundle_threshold = self.detector.threshold
        self._set_threshold(values["threshold"])
        self.overlay = values["overlay"]
        self.min_interval = 1.0 / values["max_rate"] if values["max_rate"] > 0 else 0.0
        self.stats = FrameStats(backend=self._backend_name(values["backend"]), device=values["device"])
        self.factory = rclpy_factory()
        self.pipeline = self._pipeline(values)
        out_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=1,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL,
        )
        self.outputs = {
            "anomaly_score": self.create_publisher(Image, "anomaly_score", out_qos),
            "anomaly_mask": self.create_publisher(Image, "anomaly_mask", out_qos),
            "anomaly_overlay": self.create_publisher(Image, "anomaly_overlay", out_qos),
            "hazards": self.create_publisher(Detection2DArray, "hazards", out_qos),
        }
        self.label_pub = self.create_publisher(LabelInfo, "label_info", latched)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.frame_id = values["frame_id"] or self.get_namespace().strip("/")
        self._publish_label_info(force=True)

    def _unconfigure(self) -> None:
        for pub in (*self.outputs.values(), self.label_pub, self.diag_pub):
            self.destroy_publisher(pub)
        self.outputs = {}
        self.detector = self.pipeline = None  # the model is released with them

    def _activate(self) -> None:
        values = self.values
        qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=values["qos_depth"],
            reliability=ReliabilityPolicy.BEST_EFFORT
            if values["qos_reliability"] == "best_effort"
            else ReliabilityPolicy.RELIABLE,
        )
        self.slot: LatestSlot = LatestSlot()
        if values["use_compressed"]:
            self.subscription = self.create_subscription(CompressedImage, "image/compressed", self._on_image, qos)
        else:
            self.subscription = self.create_subscription(Image, "image", self._on_image, qos)
        # a steady clock: with use_sim_time and no /clock yet, a ROS-time timer would never fire
        # and the node would look dead on /diagnostics
        self.diag_timer = self.create_timer(1.0, self._publish_diagnostics, clock=Clock(clock_type=ClockType.STEADY_TIME))
        self._stopping = False
        self.worker = threading.Thread(target=self._work, name=f"flowclas-{self.get_fully_qualified_name()}", daemon=True)
        self.worker.start()
        self.get_logger().info(
            f"model {values['model']} on {self.stats.backend}/{values['device']} ({self.threads} CPU threads), "
            f"threshold {self.detector.threshold:.3f}, "
            f"input {self.resolve_topic_name('image/compressed' if values['use_compressed'] else 'image')}"
        )

    def _deactivate(self) -> None:
        """Stop the worker thread and the input (the model stays loaded)."""
        self._stopping = True
        if getattr(self, "worker", None) is None:
            return
        self.slot.close()
        self.worker.join(timeout=5.0)
        self.worker = None
        self.destroy_subscription(self.subscription)
        self.destroy_timer(self.diag_timer)


    def _backend_name(self, requested: str) -> str:
        """The backend in use (``auto`` resolved), from the detector's backend object."""
        return getattr(self.detector.backend, "name", None) or requested

    @staticmethod
    def _load(values: dict, shared: dict):
        from flowclas_ros.runtime.detector import Detector

        if "threads" not in shared:  # process-wide: the first camera's value holds for all
            shared["threads"] = configure_threads(values["threads"])
        threads = shared["threads"]
        if values["threads"] and values["threads"] != threads:
            logging.getLogger(__name__).warning("threads %d ignored: this process already runs %d (set by the first camera)",
                                                values["threads"], threads)
        key = (values["model"], values["backend"], values["device"], values["precision"])
        if key not in shared:
            detector = Detector.from_bundle(
                values["model"], device=values["device"], precision=values["precision"], backend=values["backend"]
            )
            shared[key] = (detector, threading.Lock())
        detector, lock = shared[key]
        return copy.copy(detector), lock  # own threshold, same loaded model

    def _pipeline(self, values: dict):
        from flowclas_ros.runtime.pipeline import FramePipeline
        from flowclas_ros.runtime.smoothing import build_smoother

        smoother = build_smoother(values["smoothing"])
        return FramePipeline(self.detector, self.factory, smoother=smoother, min_area=values["min_hazard_area"],
                             stats=self.stats, max_input_pixels=values["max_input_pixels"])

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _set_threshold(self, value: float) -> None:
        self.detector.threshold = self.bundle_threshold if value < 0 else value

    def _on_image(self, msg) -> None:
        self.stats.receive(self._now())
        if self.slot.put((msg, time.monotonic())):
            self.stats.drop()

    def _work(self) -> None:
        last_start = -float("inf")
        while (item := self.slot.take()) is not None:
            msg, received = item
            if self.min_interval:
                time.sleep(max(0.0, last_start + self.min_interval - time.monotonic()))
            last_start = time.monotonic()
            overlay = self.overlay and self.outputs["anomaly_overlay"].get_subscription_count() > 0
            try:
                with self.model_lock:
                    output = self.pipeline.process(msg, overlay=overlay)
            except Exception as exc:  # keep the node alive; the pipeline rejects bad frames itself
                self.get_logger().error(f"frame failed: {exc}", throttle_duration_sec=5.0)
                self.stats.reject("error")
                continue
            if output is None:
                continue
            if self._stopping or not self.context.ok():
                break
            try:
                for suffix, out_msg in output.messages.items():
                    self.outputs[suffix].publish(out_msg)
                latency = time.monotonic() - received  # receipt to publish, on this node's monotonic clock
                now = self._now()
                stamp = msg.header.stamp
                self.stats.publish(now, latency, stamp_age=now - (stamp.sec + stamp.nanosec * 1e-9))
                if msg.header.frame_id and msg.header.frame_id != self.frame_id:
                    self.frame_id = msg.header.frame_id
                    self._publish_label_info()  # label_info with the camera's frame_id, once known
            except Exception:  # RCLError / InvalidHandle: the context went down under us (SIGINT, SIGTERM)
                if self._stopping_or_down():
                    break
                raise

    def _publish_label_info(self, force: bool = False) -> None:
        if not self.context.ok() or (self._stopping and not force) or not self.outputs:
            return
        header = Header(stamp=self.get_clock().now().to_msg(), frame_id=self.frame_id)
        self.label_pub.publish(self.factory.label_info(header, self.detector.threshold))

    def _stopping_or_down(self) -> bool:
        return getattr(self, "_stopping", False) or not self.context.ok()

    def _publish_diagnostics(self) -> None:
        if self._stopping_or_down():
            return
        if self.get_clock().now().nanoseconds == 0 and not getattr(self, "_warned_no_clock", False):
            self._warned_no_clock = True  # once: sim time stays 0 until the first /clock message
            self.get_logger().warning("use_sim_time is true but no /clock message has arrived: label_info and "
                                      "/diagnostics are stamped 0 (outputs keep their input's stamp)")
        level, message = self.stats.level()
        status = DiagnosticStatus(
            level=bytes([level]),
            name=f"{self.get_fully_qualified_name()}: anomaly detector",
            message=message,
            hardware_id=self.stats.device,
            values=[KeyValue(key=k, value=v) for k, v in self.stats.values(self._now()).items()],
        )
        self.diag_pub.publish(DiagnosticArray(header=Header(stamp=self.get_clock().now().to_msg()), status=[status]))

    def _on_parameters(self, params) -> SetParametersResult:
        changes = {p.name: p.value for p in params}
        if (reason := check_parameters(changes)) is not None:
            return SetParametersResult(successful=False, reason=reason)
        if "overlay" in changes:
            self.overlay = changes["overlay"]
        if "threshold" in changes and getattr(self, "detector", None) is not None:
            self._set_threshold(changes["threshold"])
            self._publish_label_info(force=True)
            self.get_logger().info(f"threshold now {self.detector.threshold:.3f}")
        return SetParametersResult(successful=True)


class DetectorNode(_DetectorCore, Node):
    """FlowCLAS on one camera. ``shared`` (multi-camera) maps model settings to a loaded
    (detector, lock) pair so cameras with the same settings load the model once."""

    def __init__(self, namespace: str = "", shared: dict | None = None, **kwargs) -> None:
        super().__init__(NODE_NAME, namespace=namespace, **kwargs)
        self._configure(self._declare(), shared)
        self.add_on_set_parameters_callback(self._on_parameters)
        self._activate()

    def destroy_node(self) -> None:
        """Stop the worker thread, then destroy the node."""
        self._deactivate()
        super().destroy_node()


class ManagedDetectorNode(_DetectorCore, LifecycleNode):
    """The detector as a managed (lifecycle) node (``flowclas_node --managed``): configure loads
    the model and creates the outputs, activate subscribes and starts the worker, deactivate
    stops them without unloading, cleanup unloads; shutdown from any state stops everything."""

    def __init__(self, namespace: str = "", shared: dict | None = None, **kwargs) -> None:
        super().__init__(NODE_NAME, namespace=namespace, **kwargs)
        self.values = self._declare()
        self.shared = shared
        self.outputs: dict = {}
        self.worker = None
        self._stopping = True
        self.add_on_set_parameters_callback(self._on_parameters)
        self.get_logger().info("unconfigured: waiting for the configure transition")

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Load the model, create the outputs."""
        try:
            self._configure(self.values, self.shared)
        except Exception as exc:  # rclpy would swallow it unlogged: say why, stay unconfigured
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        self.get_logger().info("configured: model loaded")
        return TransitionCallbackReturn.SUCCESS

    def _LifecycleNodeMixin__on_change_state(self, request, response):
        """The ChangeState service, refusing a transition the current state does not have.

        rclpy (Jazzy) raises RCLError out of the service callback for such a request, which
        ends the executor and the process (ros2/rclpy#1209, fixed upstream after the Jazzy
        wheels). rclpy binds the service to this name-mangled attribute, so overriding it
        puts the check in front.
        """
        wanted = request.transition
        available = self._state_machine.available_transitions  # (id, label, start id, start label, ...)
        if not any((wanted.label and wanted.label == t[1]) or (not wanted.label and wanted.id == t[0])
                   for t in available):
            state = self._state_machine.current_state[1]
            name = wanted.label or next((t[1] for t in self._state_machine.transition_graph if t[0] == wanted.id),
                                        f"id {wanted.id}")
            self.get_logger().warning(
                f"transition {name} refused: not available in state {state} "
                f"(available: {', '.join(t[1] for t in available) or 'none'})")
            response.success = False
            return response
        return LifecycleNodeMixin._LifecycleNodeMixin__on_change_state(self, request, response)  # type: ignore[attr-defined]

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Subscribe and start the worker."""
        self._activate()
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop the worker and the input; keep the model."""
        self._deactivate()
        self.get_logger().info("deactivated: input stopped, model kept")
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Destroy the outputs, unload the model."""
        self._unconfigure()
        self.get_logger().info("cleaned up: model unloaded")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop the worker and the input."""
        self._deactivate()
        return TransitionCallbackReturn.SUCCESS

    def destroy_node(self) -> None:
        """Stop the worker, then destroy the node."""
        self._deactivate()
        super().destroy_node()


# What a bad parameter, parameter file, namespace or device looks like from rclpy and torch:
# reported as one line, not a traceback.
_STARTUP_ERRORS = (FlowclasError, OSError, ValueError, ParameterException, NameValidationException, _rclpy.RCLError)


def _parse(args: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="flowclas_node", description="FlowCLAS anomaly detector node")
    parser.add_argument("--cameras", nargs="+", default=[""], metavar="NS", help="camera namespaces served by this process")
    parser.add_argument("--managed", action="store_true", help="lifecycle nodes: start unconfigured, driven by "
                        "lifecycle_msgs/ChangeState (configure, activate, deactivate, cleanup, shutdown)")
    options = parser.parse_args(remove_ros_args(args if args is not None else sys.argv)[1:])
    seen: set[str] = set()
    for ns in options.cameras:
        if (key := ns.strip("/")) in seen:
            parser.error(f"--cameras: namespace {ns!r} given twice (two nodes would share one name)")
        seen.add(key)
        try:
            if key:
                validate_namespace("/" + key)
        except NameValidationException as exc:
            parser.error(f"--cameras: {_one_line(exc)}")
    return options


def _one_line(exc: Exception) -> str:
    """rcl's message on one line: its C source locations and caret diagrams dropped."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip().strip("^")]
    return re.sub(r", at /\S+:\d+", "", " ".join(lines))


def main(args: list[str] | None = None) -> int:
    """Entry point ``flowclas_node [--cameras NS [NS ...]] [--managed] [--ros-args ...]``."""
    nodes, shared, started = [], {}, False
    try:
        try:
            options = _parse(args)
            rclpy.init(args=args)
            started = True
            forward_to(rclpy.logging.get_logger(NODE_NAME))
            cls = ManagedDetectorNode if options.managed else DetectorNode
            nodes = [cls(namespace=ns, shared=shared) for ns in options.cameras]
            forward_to(nodes[0].get_logger())  # a node's logger: its lines reach /rosout
        except _STARTUP_ERRORS as exc:
            if started and not rclpy.ok():  # a signal during startup shut the context down under us
                return 0
            print(f"flowclas_node: error: {_one_line(exc)}", file=sys.stderr)
            return 1
        executor = MultiThreadedExecutor()
        for node in nodes:
            executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        for node in nodes:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
