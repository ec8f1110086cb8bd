"""Flow files (Middlebury .flo, KITTI .png, .npy) and colour-wheel visualisation.

Imported by module, so that their libraries load only when used: ros_image (sensor_msgs Image <->
numpy); the recording readers frames, bags (rosbags), file_sources (videos, image folders) and
recordings (any of them as one stream of frames); the writers flow_mcap (MCAP, with the mcap
library) and flow_video (flow videos and folders of flow files).
"""
from mdflow_ros.io.colorwheel import flow_to_color, make_colorwheel
from mdflow_ros.io.flow_files import (
    read_flo,
    read_flow,
    read_kitti_flow,
    write_flo,
    write_flow,
    write_kitti_flow,
)

__all__ = [
    "flow_to_color",
    "make_colorwheel",
    "read_flo",
    "read_flow",
    "read_kitti_flow",
    "write_flo",
    "write_flow",
    "write_kitti_flow",
]
