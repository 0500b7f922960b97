"""Several cameras served by one process that loads the model once.

ros2 launch flowclas_ros multi_camera.launch.py model:=/path/to/bundle cameras:=front,rear
    [image_topic:=camera/image_raw] [config_file:=my.yaml] [use_compressed:=true]

rclpy has no component container, so ``flowclas_node --cameras front rear`` builds one
detector node per camera namespace itself (``/front/flowclas_detector``, ...) and spins them
on one executor, sharing the loaded model. Camera ``NS`` is read from ``/NS/<image_topic>``
(``/compressed`` appended with use_compressed) and its outputs go to ``/NS/anomaly_score``
etc. The parameter file applies to every camera.
"""

from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription


def _detector_process(context):
    cameras = [c.strip("/ ") for c in LaunchConfiguration("cameras").perform(context).split(",") if c.strip("/ ")]
    if not cameras:
        raise RuntimeError("cameras must name at least one camera namespace, e.g. cameras:=front,rear")
    image_topic = LaunchConfiguration("image_topic").perform(context).strip("/")
    remappings = []
    for camera in cameras:
        remappings.append((f"/{camera}/image", f"/{camera}/{image_topic}"))
        remappings.append((f"/{camera}/image/compressed", f"/{camera}/{image_topic}/compressed"))
    return [
        Node(
            package="flowclas_ros",
            executable="flowclas_node",
            arguments=["--cameras", *cameras],
            parameters=[
                LaunchConfiguration("config_file"),
                {
                    "model": ParameterValue(LaunchConfiguration("model"), value_type=str),
                    "use_compressed": ParameterValue(LaunchConfiguration("use_compressed"), value_type=bool),
                },
            ],
            remappings=remappings,
            output="screen",
            emulate_tty=True,
        )
    ]


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription(
        [
            DeclareLaunchArgument("model", description="model bundle directory"),
            DeclareLaunchArgument("cameras", default_value="front,rear", description="comma-separated camera namespaces"),
            DeclareLaunchArgument(
                "image_topic", default_value="camera/image_raw", description="image topic relative to each camera namespace"
            ),
            DeclareLaunchArgument(
                "config_file",
                default_value=PathJoinSubstitution([FindPackageShare("flowclas_ros"), "config", "detector.yaml"]),
                description="parameter file (applies to every camera)",
            ),
            DeclareLaunchArgument(
                "use_compressed", default_value="false", description="subscribe to <image_topic>/compressed"
            ),
            OpaqueFunction(function=_detector_process),
        ]
    )
