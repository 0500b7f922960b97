"""ROS-free frame pipeline: detector, hazards, pictures."""

from flowclas_ros.runtime.detector import Detection, Detector, as_rgb_batch
from flowclas_ros.runtime.hazards import Hazard, find_hazards

__all__ = ["Detection", "Detector", "Hazard", "as_rgb_batch", "find_hazards"]
