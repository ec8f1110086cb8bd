"""Assemble the OpticalFlow message (and its standard Image views) from a flow result."""
from __future__ import annotations

from typing import Any

import numpy as np

from mdflow_ros.io.ros_image import array_to_image
from mdflow_ros.msg import OpticalFlow


def flow_message(header: Any, previous_stamp: Any, flow: np.ndarray, confidence: np.ndarray | None,
                 output_scale: float, model: str, backend: str, inference_s: float) -> OpticalFlow:
    """An OpticalFlow for flow (h, w, 2) float32 px and confidence (h, w) in [0, 1] or None.

    header: the current frame's std_msgs/Header (also set on both images); previous_stamp: the
    previous frame's stamp. processing_time is left 0 for the caller to set just before publishing.
    """
    msg = OpticalFlow()
    msg.header = header
    msg.previous_stamp = previous_stamp
    msg.flow = array_to_image(np.asarray(flow, np.float32), "32FC2", header)
    if confidence is not None:
        msg.confidence = array_to_image(np.asarray(confidence, np.float32), "32FC1", header)
    else:
        msg.confidence.header = header
        msg.confidence.encoding = "32FC1"
    msg.output_scale = float(output_scale)
    msg.model = model
    msg.backend = backend
    msg.inference_time = float(inference_s)
    return msg
