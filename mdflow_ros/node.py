"""``python -m mdflow_ros.node`` (and ``flow_node``): the flow node of mdflow_ros/ros/node.py.

The stop-signal handling (mdflow_ros/ros/stop.py) is installed before anything heavy is
imported, so SIGINT or SIGTERM while rclpy, numpy or a backend loads ends the process cleanly.
"""
import sys

from mdflow_ros.ros.stop import StopSignals


def main() -> int:
    """Install the signal handling, then import and run the node."""
    stop = StopSignals.install()
    from mdflow_ros.ros.node import main as run_node

    return run_node(stop=stop)


if __name__ == "__main__":
    sys.exit(main())
