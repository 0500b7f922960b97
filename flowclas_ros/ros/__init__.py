"""Everything that imports rclpy: the node, its lifecycle variant, message classes, log bridge.

Modules here stay thin: the frame path is the ROS-free ``flowclas_ros.runtime`` pipeline.
``parameters`` (the node's parameter table) is the one module that does not import rclpy,
so its checks run in every test.
"""
