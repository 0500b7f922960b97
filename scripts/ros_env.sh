# Source me: put the ROS 2 Jazzy of a venv (scripts/install_ros.sh) on this shell's path.
#
#   . scripts/ros_env.sh [VENV_DIR]        (default: the repository's .venv)
#
# What each variable is for (Python code gets the same from
# flowclas_ros.ros.environment.ros_environment):
#   LD_LIBRARY_PATH     the wheels' shared libraries (<venv>/lib and the ros_*.libs dirs).
#                       The venv's python finds them by itself only through the
#                       ros_wheels_bootstrapper .pth, which re-executes the interpreter with
#                       this variable set; a process that inherits the bootstrapper's guard
#                       variable without it (or runs python -S) fails to import rclpy.
#   _ROS_WHEELS_BOOTSTRAP_COMPLETE=1   that guard: skip the re-exec, the path is set.
#   AMENT_PREFIX_PATH   the ament index (get_package_share_directory, launch files,
#                       ros2 tooling); rclpy publishing and subscribing work without it.
#   RMW_IMPLEMENTATION  rmw_fastrtps_cpp, the only middleware the wheels ship (explicit,
#                       so that a system ROS in the environment cannot swap it).
#   FASTRTPS_DEFAULT_PROFILES_FILE     config/fastdds.xml: 16 MB shared-memory segment, so
#                       raw camera images between processes are not lost.
#   PATH                the venv's bin (flowclas_node, flowclas).
# ROS_DOMAIN_ID is left alone; set it yourself to keep runs apart.

_flowclas_repo=$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)
_flowclas_venv=$(cd "${1:-$_flowclas_repo/.venv}" 2>/dev/null && pwd) || {
  echo "ros_env.sh: no virtual environment at ${1:-$_flowclas_repo/.venv}" >&2
  unset _flowclas_repo _flowclas_venv
  return 1 2>/dev/null || exit 1
}
_flowclas_libs="$_flowclas_venv/lib"
for _flowclas_dir in "$_flowclas_venv"/lib/python3*/site-packages/ros_*.libs; do
  [ -d "$_flowclas_dir" ] && _flowclas_libs="$_flowclas_libs:$_flowclas_dir"
done
export LD_LIBRARY_PATH="$_flowclas_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export _ROS_WHEELS_BOOTSTRAP_COMPLETE=1
export AMENT_PREFIX_PATH="$_flowclas_venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export RMW_IMPLEMENTATION=rmw_fastrtps_cpp
export FASTRTPS_DEFAULT_PROFILES_FILE="$_flowclas_repo/config/fastdds.xml"
export PATH="$_flowclas_venv/bin:$PATH"
unset _flowclas_repo _flowclas_venv _flowclas_libs _flowclas_dir
