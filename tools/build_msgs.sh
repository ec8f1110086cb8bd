#!/usr/bin/env bash
# Build the ROS 2 message package (msg/OpticalFlow.msg) into a Python venv that has the ROS 2
# PyPI wheels, with cmake and the system compiler. Afterwards, in that venv,
# `from mdflow_ros.msg import OpticalFlow` works (see mdflow_ros/msg/__init__.py).
#
# Usage: tools/build_msgs.sh [--force]      (PYTHON=/path/to/venv/bin/python to pick the venv;
#                                            default: .venv/bin/python of this repository)
# Idempotent: it returns at once while the message sources and the installed files are unchanged.
# Needs the venv's ROS build wheels (setup.py's "ros" extra) and cmake >= 3.20, a C/C++ compiler.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
FORCE=0
[[ "${1:-}" == "--force" ]] && FORCE=1

if [[ ! -x "$PYTHON" ]]; then
  echo "build_msgs: no Python at $PYTHON (set PYTHON=/path/to/venv/bin/python)" >&2
  exit 2
fi
PREFIX="$("$PYTHON" -c 'import sys; print(sys.prefix)')"
if ! "$PYTHON" -c 'import rosidl_generator_py, catkin_pkg, ament_package' 2>/dev/null \
   || [[ ! -d "$PREFIX/share/rosidl_default_generators" || ! -d "$PREFIX/share/ament_cmake_ros_core" ]]; then
  echo "build_msgs: the ROS 2 build wheels are missing in $PREFIX; install them with" >&2
  echo "  $PYTHON -m pip install -e '$ROOT[ros]'" >&2
  exit 2
fi

BUILD="$ROOT/build/mdflow_ros_msgs-$(basename "$PREFIX")-$(echo -n "$PREFIX" | cksum | cut -d' ' -f1)"
mkdir -p "$BUILD"
exec 9>"$BUILD/.lock"
flock 9   # one build at a time per venv

# Everything that decides what is installed, and a file that proves it was.
STAMP="$BUILD/.installed"
DIGEST="$(cat "$ROOT/CMakeLists.txt" "$ROOT/package.xml" "$ROOT"/msg/*.msg "$ROOT/cmake/ros_wheels_fix.cmake" \
  "$ROOT/launch/flow.launch.py" "$ROOT/config/flow.yaml" "$ROOT/config/fastdds_large_data.xml" \
  "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)"
MARKER="$PREFIX/lib/mdflow_ros_generated/mdflow_ros/msg/_optical_flow.py"
if [[ $FORCE == 0 && -f "$STAMP" && "$(cat "$STAMP")" == "$DIGEST" && -f "$MARKER" ]]; then
  echo "build_msgs: up to date ($PREFIX)"
  exit 0
fi

export CMAKE_PREFIX_PATH="$PREFIX" AMENT_PREFIX_PATH="$PREFIX" PATH="$PREFIX/bin:$PATH"
start=$(date +%s)
cmake -S "$ROOT" -B "$BUILD" -Wno-dev \
  -DCMAKE_INSTALL_PREFIX="$PREFIX" \
  -DPython3_EXECUTABLE="$PREFIX/bin/python" \
  -DCMAKE_PROJECT_INCLUDE="$ROOT/cmake/ros_wheels_fix.cmake" \
  -DMDFLOW_ROS_PIP_LAYOUT=ON \
  -DBUILD_TESTING=OFF > "$BUILD/configure.log" 2>&1 \
  || { cat "$BUILD/configure.log" >&2; echo "build_msgs: cmake configure failed (log above)" >&2; exit 1; }
cmake --build "$BUILD" -j"$(nproc)" > "$BUILD/build.log" 2>&1 \
  || { tail -n 60 "$BUILD/build.log" >&2; echo "build_msgs: build failed ($BUILD/build.log)" >&2; exit 1; }
cmake --install "$BUILD" > "$BUILD/install.log" 2>&1 \
  || { cat "$BUILD/install.log" >&2; echo "build_msgs: install failed" >&2; exit 1; }
echo "$DIGEST" > "$STAMP"
echo "build_msgs: built and installed mdflow_ros/msg/OpticalFlow into $PREFIX in $(( $(date +%s) - start )) s"
