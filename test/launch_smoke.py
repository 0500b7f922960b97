"""launch_testing smoke test of the node (started by test_node.py where ROS 2 is installed).

Starts flowclas_node on the bundle given as launch argument ``model``, publishes small
frames and expects every output topic, each carrying the input header.
"""

import time
import unittest

import launch_testing.actions
import numpy as np
import pytest
import rclpy
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from vision_msgs.msg import Detection2DArray, LabelInfo

import launch


@pytest.mark.launch_test
def generate_test_description():
    node = Node(
        package="flowclas_ros",
        executable="flowclas_node",
        name="flowclas_detector",
        parameters=[{"model": LaunchConfiguration("model"), "overlay": True}],
        remappings=[("image", "/smoke/image")],
    )
    return launch.LaunchDescription([DeclareLaunchArgument("model"), node, launch_testing.actions.ReadyToTest()])


class TestOutputs(unittest.TestCase):
    def test_every_output_with_input_header(self):
        rclpy.init()
        node = rclpy.create_node("flowclas_smoke")
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        received = {}
        for topic, kind, qos in [
            ("/anomaly_score", Image, 10),
            ("/anomaly_mask", Image, 10),
            ("/anomaly_overlay", Image, 10),
            ("/hazards", Detection2DArray, 10),
            ("/label_info", LabelInfo, latched),
        ]:
            node.create_subscription(kind, topic, lambda m, t=topic: received.setdefault(t, m), qos)
        pub = node.create_publisher(Image, "/smoke/image", 10)
        frame = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
        deadline = time.monotonic() + 60
        try:
            while time.monotonic() < deadline and len(received) < 5:
                msg = Image(height=48, width=64, encoding="rgb8", step=64 * 3, data=frame.tobytes())
                msg.header.stamp = node.get_clock().now().to_msg()
                msg.header.frame_id = "smoke_camera"
                pub.publish(msg)
                rclpy.spin_once(node, timeout_sec=0.2)
        finally:
            node.destroy_node()
            rclpy.shutdown()
        self.assertEqual(len(received), 5, f"got only {sorted(received)}")
        self.assertEqual(received["/anomaly_score"].encoding, "32FC1")
        self.assertEqual(received["/anomaly_mask"].encoding, "mono8")
        self.assertEqual(received["/anomaly_overlay"].encoding, "bgr8")
        self.assertEqual(received["/anomaly_score"].header.frame_id, "smoke_camera")
        self.assertEqual((received["/anomaly_score"].height, received["/anomaly_score"].width), (48, 64))
