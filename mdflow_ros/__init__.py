"""mdflow_ros: real-time, self-supervised dense optical flow (MDFlow) for ROS 2 robots."""

__version__ = "0.1.0"
