"""Assemble the OpticalFlow message (and its standard Image views) from a flow result."""
from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from mdflow_ros.io.ros_image import array_to_image
from mdflow_ros.msg import OpticalFlow


def scale_outputs(flow: np.ndarray, confidence: np.ndarray | None,
                  scale: float) -> tuple[np.ndarray, np.ndarray | None]:
    """Resize flow (H, W, 2) and confidence (H, W) by ``scale``; flow values follow into the new pixels.

    Area averaging; u is multiplied by new_width / W and v by new_height / H. scale 1 returns the inputs.
    """
    height, width = flow.shape[:2]
    out_h, out_w = max(1, round(height * scale)), max(1, round(width * scale))
    if (out_h, out_w) == (height, width):
        return flow, confidence
    flow = cv2.resize(flow, (out_w, out_h), interpolation=cv2.INTER_AREA)
    flow *= np.array([out_w / width, out_h / height], np.float32)
    if confidence is not None:
        confidence = cv2.resize(confidence, (out_w, out_h), interpolation=cv2.INTER_AREA)
    return flow, confidence


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
