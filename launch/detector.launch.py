"""One FlowCLAS detector on one camera.

ros2 launch flowclas_ros detector.launch.py model:=/path/to/bundle image_topic:=/camera/image_raw
    [namespace:=front] [config_file:=my.yaml] [use_compressed:=true]

With use_compressed the node subscribes to ``<image_topic>/compressed`` (image_transport's
name). Outputs are published under the node: ``[namespace/]anomaly_score`` etc.
"""

from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription


def generate_launch_description() -> LaunchDescription:
    image_topic = LaunchConfiguration("image_topic")
    return LaunchDescription(
        [
            DeclareLaunchArgument("model", description="model bundle directory"),
            DeclareLaunchArgument("image_topic", default_value="/camera/image_raw", description="camera image topic"),
            DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its outputs"),
            DeclareLaunchArgument(
                "config_file",
                default_value=PathJoinSubstitution([FindPackageShare("flowclas_ros"), "config", "detector.yaml"]),
                description="parameter file",
            ),
            DeclareLaunchArgument(
                "use_compressed", default_value="false", description="subscribe to <image_topic>/compressed"
            ),
            Node(
                package="flowclas_ros",
                executable="flowclas_node",
                name="flowclas_detector",
                namespace=LaunchConfiguration("namespace"),
                parameters=[
                    LaunchConfiguration("config_file"),
                    {
                        "model": ParameterValue(LaunchConfiguration("model"), value_type=str),
                        "use_compressed": ParameterValue(LaunchConfiguration("use_compressed"), value_type=bool),
                    },
                ],
                remappings=[("image", image_topic), ("image/compressed", [image_topic, "/compressed"])],
                output="screen",
                emulate_tty=True,
            ),
        ]
    )
