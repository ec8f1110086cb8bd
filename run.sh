#!/usr/bin/env bash
# mdflow_ros set-up and entry point, for a fresh Debian/Ubuntu machine with Python 3.11+.
#   bash run.sh demo [ARGS]   the main job: the shipped model through the real node, on real frames
#   bash run.sh test [ARGS]   the test suite (what CI runs)
# Both create or reuse the virtual environment .venv/ (PyTorch CPU, ONNX Runtime, OpenVINO, OpenCV,
# the ROS 2 Kilted wheels from PyPI) and build the OpticalFlow message into it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

PY="${PYTHON:-python3}"
VENV=.venv
STAMP="$VENV/.mdflow-setup"

missing_system_packages() {
  local missing=()
  "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { echo "python3>=3.11"; return; }
  "$PY" -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
  [[ -f "$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h" ]] || missing+=(python3-dev)
  command -v g++ >/dev/null && command -v gcc >/dev/null || missing+=(g++)
  command -v git >/dev/null || missing+=(git)
  echo "${missing[@]}"
}

ensure_system() {
  local missing
  missing="$(missing_system_packages)"
  [[ -z "$missing" ]] && return
  if [[ "$missing" == "python3>=3.11" ]]; then
    echo "run.sh: mdflow_ros needs Python 3.11 or newer as '$PY' (set PYTHON=/path/to/python3.11)." >&2
    exit 1
  fi
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
    echo "run.sh: installing system packages: $missing"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing
  else
    echo "run.sh: missing system packages; install them with: sudo apt-get install $missing" >&2
    exit 1
  fi
}

ensure_venv() {
  local want
  want="$(cat setup.py msg/*.msg CMakeLists.txt package.xml tools/build_msgs.sh | sha256sum | cut -c1-16)"
  [[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
  if [[ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]]; then
    echo "run.sh: installing mdflow_ros and its dependencies into $VENV (first run: a few minutes)"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q "torch==2.13.0"
    # opencv-contrib-python-headless replaced opencv-python-headless; both own cv2/, so drop the old one first
    "$VENV/bin/python" -m pip uninstall -y -q opencv-python-headless 2>/dev/null || true
    "$VENV/bin/python" -m pip install -q -e ".[cpu,ros,train,openvino,dev]"
    PYTHON="$VENV/bin/python" bash tools/build_msgs.sh
    echo "$want" > "$STAMP"
  else
    PYTHON="$VENV/bin/python" bash tools/build_msgs.sh
  fi
}

cmd="${1:-}"
shift || true
case "$cmd" in
  demo) ensure_system; ensure_venv; exec "$VENV/bin/python" -m mdflow_ros.ros.demo "$@" ;;
  test) ensure_system; ensure_venv; exec "$VENV/bin/python" -m pytest "$@" ;;
  *) echo "usage: bash run.sh demo|test [ARGS]" >&2; exit 2 ;;
esac
