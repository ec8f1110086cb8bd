"""Flow files (Middlebury .flo, KITTI .png, .npy) and colour-wheel visualisation."""
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
