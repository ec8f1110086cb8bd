"""The ROS 2 side of mdflow_ros: the flow node and the tools that start, feed and measure it.

node (FlowNode, main), params (its parameter table), pairing (which frames form a pair),
mailbox (the one-slot hand-off to the worker), stats (/diagnostics figures), message
(OpticalFlow assembly), stop (SIGINT / SIGTERM at any moment), dds_env (Fast DDS settings for
large images), launch_args (what launch/flow.launch.py starts), frame_player (frames to a
topic), harness (the node in its own process, driven from this one) and demo. Only this
subpackage imports rclpy.
"""
