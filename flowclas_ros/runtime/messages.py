"""Output messages of the detector, built by a factory so rclpy and rosbags messages share one pipeline.

The pipeline calls a :class:`MessageFactory`; :class:`RosbagsFactory` builds rosbags message
classes (replay, tests), the node provides an rclpy one. What the messages carry:

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

from typing import Any, Protocol, Sequence

import numpy as np

from flowclas_ros.runtime.codecs import encode_image
from flowclas_ros.runtime.hazards import Hazard

ANOMALY_CLASS = "anomaly"
MASK_CLASSES = ((0, "inlier"), (255, ANOMALY_CLASS))


class MessageFactory(Protocol):
    """Builds the detector's output messages; every message copies ``header``."""

    def image(self, header: Any, array: np.ndarray, encoding: str) -> Any:
        """sensor_msgs/Image holding ``array`` (already in ``encoding``'s layout)."""

    def hazards(self, header: Any, hazards: Sequence[Hazard], threshold: float) -> Any:
        """vision_msgs/Detection2DArray with one detection per hazard."""

    def label_info(self, header: Any, threshold: float) -> Any:
        """vision_msgs/LabelInfo naming the mask values and carrying the threshold."""


# Written from the vision_msgs 4.x interface documentation (ROS 2 Humble and Jazzy).
VISION_MSGS = {
    "vision_msgs/msg/Point2D": "float64 x\nfloat64 y\n",
    "vision_msgs/msg/Pose2D": "vision_msgs/Point2D position\nfloat64 theta\n",
    "vision_msgs/msg/BoundingBox2D": "vision_msgs/Pose2D center\nfloat64 size_x\nfloat64 size_y\n",
    "vision_msgs/msg/ObjectHypothesis": "string class_id\nfloat64 score\n",
    "vision_msgs/msg/ObjectHypothesisWithPose": "vision_msgs/ObjectHypothesis hypothesis\ngeometry_msgs/PoseWithCovariance pose\n",
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


class RosbagsFactory:
    """:class:`MessageFactory` building rosbags message classes of ``typestore``.

    Registers vision_msgs with the typestore if needed. Headers are rebuilt field by field, so
    the input message may come from any source with ``stamp.sec``, ``stamp.nanosec``, ``frame_id``.
    """

    def __init__(self, typestore: Any) -> None:
        register_vision_msgs(typestore)
        self.typestore = typestore
        t = typestore.types
        self._Time = t["builtin_interfaces/msg/Time"]
        self._Header = t["std_msgs/msg/Header"]
        self._Image = t["sensor_msgs/msg/Image"]
        self._Point = t["geometry_msgs/msg/Point"]
        self._Quaternion = t["geometry_msgs/msg/Quaternion"]
        self._Pose = t["geometry_msgs/msg/Pose"]
        self._PoseWithCovariance = t["geometry_msgs/msg/PoseWithCovariance"]
        self._vision = {name.rsplit("/", 1)[1]: t[name] for name in VISION_MSGS}

    def header(self, header: Any) -> Any:
        """A copy of ``header`` as this typestore's std_msgs/Header."""
        stamp = self._Time(sec=int(header.stamp.sec), nanosec=int(header.stamp.nanosec))
        return self._Header(stamp=stamp, frame_id=str(header.frame_id))

    def image(self, header: Any, array: np.ndarray, encoding: str) -> Any:
        e = encode_image(array, encoding)
        return self._Image(
            header=self.header(header), height=e.height, width=e.width, encoding=e.encoding,
            is_bigendian=int(e.is_bigendian), step=e.step, data=e.data,
        )

    def hazards(self, header: Any, hazards: Sequence[Hazard], threshold: float) -> Any:
        v = self._vision
        identity_pose = self._PoseWithCovariance(
            pose=self._Pose(position=self._Point(x=0.0, y=0.0, z=0.0), orientation=self._Quaternion(x=0.0, y=0.0, z=0.0, w=1.0)),
            covariance=np.zeros(36, dtype=np.float64),
        )
        out_header = self.header(header)
        detections = []
        for h in hazards:
            cx, cy = h.center
            hypothesis = v["ObjectHypothesis"](class_id=ANOMALY_CLASS, score=float(h.peak_score))
            detections.append(
                v["Detection2D"](
                    header=out_header,
                    results=[v["ObjectHypothesisWithPose"](hypothesis=hypothesis, pose=identity_pose)],
                    bbox=v["BoundingBox2D"](
                        center=v["Pose2D"](position=v["Point2D"](x=float(cx), y=float(cy)), theta=0.0),
                        size_x=float(h.width), size_y=float(h.height),
                    ),
                    id=f"area={h.area}",
                )
            )
        return v["Detection2DArray"](header=out_header, detections=detections)

    def label_info(self, header: Any, threshold: float) -> Any:
        v = self._vision
        class_map = [v["VisionClass"](class_id=value, class_name=name) for value, name in MASK_CLASSES]
        return v["LabelInfo"](header=self.header(header), class_map=class_map, threshold=float(threshold))
