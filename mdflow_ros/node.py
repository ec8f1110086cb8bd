"""``python -m mdflow_ros.node``: the flow node (mdflow_ros/ros/node.py), by the name the README documents."""
import sys

from mdflow_ros.ros.node import main

if __name__ == "__main__":
    sys.exit(main())
