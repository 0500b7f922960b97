"""flowclas_ros: FlowCLAS anomaly segmentation for robots (ROS 2 node, runtime, training)."""

__version__ = "0.1.0"
