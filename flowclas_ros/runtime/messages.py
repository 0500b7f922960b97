"""Output messages of the detector, built by a factory so rclpy and rosbags messages share one pipeline.

The pipeline calls one :class:`MessageFactory` over a mapping of message classes: rosbags'
(:func:`rosbags_factory`: replay, bench, tests) or rclpy's (the node). What the messages carry:

- ``image``: a sensor_msgs/Image from an array already in the encoding's layout (see
  :func:`flowclas_ros.runtime.codecs.encode_image`).
- ``hazards``: vision_msgs/Detection2DArray, one Detection2D per connected anomalous region:
  ``bbox.center.position`` and ``bbox.size_x/size_y`` in pixels (box centre, width and height),
  one result whose hypothesis is ``class_id="anomaly"`` with ``score`` = the region's peak score,
  and the region's area in pixels in the detection's ``id`` as ``"area=<pixels>"`` (``id`` is the
  only free field of Detection2D; the results stay pure class hypotheses).
- ``label_info``: vision_msgs/LabelInfo whose ``class_map`` names the values of the mask image
  (0 ``inlier``, 255 ``anomaly``) and whose ``threshold`` is the current score threshold.

vision_msgs follows the ROS 2 4.x definitions, shared by Humble and Jazzy (BoundingBox2D's
centre is a vision_msgs/Pose2D holding a Point2D ``position`` and ``theta``); the ROS 2 Foxy /
Galactic 3.x releases used geometry_msgs/Pose2D there and are not supported.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from flowclas_ros.runtime.codecs import encode_image
from flowclas_ros.runtime.hazards import Hazard
from flowclas_ros.vocabulary import MASK_ON, Label

ANOMALY_CLASS = "anomaly"
MASK_CLASSES = ((int(Label.INLIER), "inlier"), (MASK_ON, ANOMALY_CLASS))


# Written from the vision_msgs 4.x interface documentation (ROS 2 Humble and Jazzy).
VISION_MSGS = {
    "vision_msgs/msg/Point2D": "float64 x\nfloat64 y\n",
    "vision_msgs/msg/Pose2D": "vision_msgs/Point2D position\nfloat64 theta\n",
    "vision_msgs/msg/BoundingBox2D": "vision_msgs/Pose2D center\nfloat64 size_x\nfloat64 size_y\n",
    "vision_msgs/msg/ObjectHypothesis": "string class_id\nfloat64 score\n",
    "vision_msgs/msg/ObjectHypothesisWithPose": (
        "vision_msgs/ObjectHypothesis hypothesis\ngeometry_msgs/PoseWithCovariance pose\n"
    ),
    "vision_msgs/msg/Detection2D": (
        "std_msgs/Header header\nvision_msgs/ObjectHypothesisWithPose[] results\nvision_msgs/BoundingBox2D bbox\nstring id\n"
    ),
    "vision_msgs/msg/Detection2DArray": "std_msgs/Header header\nvision_msgs/Detection2D[] detections\n",
    "vision_msgs/msg/VisionClass": "uint16 class_id\nstring class_name\n",
    "vision_msgs/msg/LabelInfo": "std_msgs/Header header\nvision_msgs/VisionClass[] class_map\nfloat32 threshold\n",
}


def register_vision_msgs(typestore: Any) -> None:
    """Register the vision_msgs types the detector publishes with a rosbags typestore (idempotent)."""
    from rosbags.typesys import get_types_from_msg

    types: dict = {}
    for name, text in VISION_MSGS.items():
        types.update(get_types_from_msg(text, name))
    typestore.register(types)


# Every message class the factory builds, by its ROS 2 type name.
MESSAGE_TYPES = (
    "builtin_interfaces/msg/Time",
    "std_msgs/msg/Header",
    "sensor_msgs/msg/Image",
    "geometry_msgs/msg/Point",
    "geometry_msgs/msg/Quaternion",
    "geometry_msgs/msg/Pose",
    "geometry_msgs/msg/PoseWithCovariance",
    *VISION_MSGS,
)


def _identity(data: np.ndarray) -> Any:
    return data


class MessageFactory:
    """Builds the detector's output messages from a mapping of message classes.

    ``classes`` maps every name in :data:`MESSAGE_TYPES` to a message class that takes all its
    fields as keyword arguments: rosbags' dataclasses (replay, tests) or rclpy's generated
    classes (the node, see ``flowclas_ros.ros.messages``). ``pack`` turns an image's uint8
    bytes into what the class's ``data`` field takes fastest. Headers are rebuilt field by
    field, so the input message may come from any source with ``stamp.sec``,
    ``stamp.nanosec`` and ``frame_id``.
    """

    def __init__(self, classes: Mapping[str, Any], pack: Callable[[np.ndarray], Any] = _identity) -> None:
        missing = [name for name in MESSAGE_TYPES if name not in classes]
        if missing:
            raise KeyError(f"message classes missing: {', '.join(missing)}")
        self._c = {name.rsplit("/", 1)[1]: classes[name] for name in MESSAGE_TYPES}
        self._pack = pack

    def header(self, header: Any) -> Any:
        """A copy of ``header`` as std_msgs/Header."""
        stamp = self._c["Time"](sec=int(header.stamp.sec), nanosec=int(header.stamp.nanosec))
        return self._c["Header"](stamp=stamp, frame_id=str(header.frame_id))

    def image(self, header: Any, array: np.ndarray, encoding: str) -> Any:
        """sensor_msgs/Image holding ``array`` (already in ``encoding``'s layout)."""
        e = encode_image(array, encoding)
        return self._c["Image"](
            header=self.header(header), height=e.height, width=e.width, encoding=e.encoding,
            is_bigendian=int(e.is_bigendian), step=e.step, data=self._pack(e.data),
        )

    def hazards(self, header: Any, hazards: Sequence[Hazard]) -> Any:
        """vision_msgs/Detection2DArray with one detection per hazard."""
        c = self._c
        out_header = self.header(header)
        detections = []
        for h in hazards:
            pose = c["PoseWithCovariance"](
                pose=c["Pose"](position=c["Point"](x=0.0, y=0.0, z=0.0),
                               orientation=c["Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0)),
                covariance=np.zeros(36, dtype=np.float64),
            )
            hypothesis = c["ObjectHypothesis"](class_id=ANOMALY_CLASS, score=float(h.peak_score))
            cx, cy = h.center
            detections.append(
                c["Detection2D"](
                    header=out_header,
                    results=[c["ObjectHypothesisWithPose"](hypothesis=hypothesis, pose=pose)],
                    bbox=c["BoundingBox2D"](
                        center=c["Pose2D"](position=c["Point2D"](x=float(cx), y=float(cy)), theta=0.0),
                        size_x=float(h.width), size_y=float(h.height),
                    ),
                    id=f"area={h.area}",
                )
            )
        return c["Detection2DArray"](header=out_header, detections=detections)

    def label_info(self, header: Any, threshold: float) -> Any:
        """vision_msgs/LabelInfo naming the mask values and carrying the threshold."""
        class_map = [self._c["VisionClass"](class_id=value, class_name=name) for value, name in MASK_CLASSES]
        return self._c["LabelInfo"](header=self.header(header), class_map=class_map, threshold=float(threshold))


def rosbags_factory(typestore: Any) -> MessageFactory:
    """A :class:`MessageFactory` of rosbags message classes (vision_msgs registered if needed)."""
    register_vision_msgs(typestore)
    return MessageFactory({name: typestore.types[name] for name in MESSAGE_TYPES})
