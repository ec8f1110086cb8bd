"""The rclpy flow node: camera images in, mdflow_ros/msg/OpticalFlow out.

    python -m mdflow_ros.node --ros-args --params-file config/flow.yaml -r image:=/camera/image_raw
    ros2 run mdflow_ros flow_node --ros-args ...        (after colcon build)

Topics (relative, so a namespace applies): in ``image`` (sensor_msgs/Image; or
``image/compressed`` with input_transport compressed); out ``optical_flow`` (OpticalFlow) and
its standard-typed views ``optical_flow/flow`` (32FC2), ``optical_flow/confidence`` (32FC1)
and ``optical_flow/color`` (rgb8 colour wheel), each serialised only while it has
subscribers; ``/diagnostics``. QoS follows REP-2003 (sensor data in, reliable out) and takes
ROS 2's standard overrides at start-up: ``qos_overrides.<topic>.subscription.<policy>`` and
``qos_overrides.<topic>.publisher.<policy>`` for history, depth and reliability, with the topic
as the node resolves it (e.g. ``qos_overrides./camera/image_raw.subscription.reliability``).

Threading: the subscription callback only puts the newest message into a one-slot mailbox
(a replaced message counts as dropped). One worker thread owns the FlowEstimator (model
loading included, so all GPU work stays on it): it decodes the newest frame, pairs it with
the previous processed frame, runs the network and publishes. Nothing queues.

Faults: a frame larger than ``max_input_pixels`` is dropped before it is decoded (a compressed
one by its header), a malformed or non-image frame is ignored, each logged (throttled) and
counted in /diagnostics; an invalid parameter, parameter file, QoS override or model file
stops the start-up with one ``cannot start:`` line and status 1; SIGINT and SIGTERM stop the
node at any moment with status 0 (mdflow_ros/ros/stop.py).
"""
from __future__ import annotations

import logging
import sys
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.exceptions import ParameterException
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.qos_overriding_options import InvalidQosOverridesError, QoSOverridingOptions
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CompressedImage, Image

from mdflow_ros.files import ModelFileError, model_identity
from mdflow_ros.inference import FlowEstimator, InputError, ModelNotShippedError
from mdflow_ros.io.colorwheel import flow_to_color
from mdflow_ros.io.ros_image import (CAMERA_ENCODINGS, ImageDecodeError, array_to_image, compressed_to_array,
                                     cv_bridge_available, estimator_input, image_to_array,
                                     image_to_array_cv_bridge)
from mdflow_ros.msg import OpticalFlow
from mdflow_ros.ros.dds_env import use_large_data_transport
from mdflow_ros.ros.mailbox import LatestOnly
from mdflow_ros.ros.message import flow_message
from mdflow_ros.ros.pairing import FrameInfo, PairTracker, stamp_ns
from mdflow_ros.ros.params import ParameterError, check_parameter_files, declare_parameters, qos_check
from mdflow_ros.ros.stats import COUNTERS, FlowStats
from mdflow_ros.ros.stop import SPIN_PERIOD_S, WORKER_DEADLINE_S, StopSignals, exit_now

NODE_NAME = "flow_node"
RUNTIME_PARAMETERS = ("max_frame_gap", "output_scale", "color_max_flow")
WARN_THROTTLE_S = 5.0
QOS_ERRORS = (RuntimeError, ParameterException, InvalidQosOverridesError)
"""What rclpy raises for a qos_overrides value it cannot use (unknown policy value, wrong type)."""
QOS_ALLOWED = ("history keep_last, keep_all or system_default; depth an integer of at least 1; "
               "reliability reliable, best_effort or system_default")


class StartupError(RuntimeError):
    """The node cannot start (bad parameters, no model, no backend); the text says why."""


def image_qos() -> QoSProfile:
    """The camera subscription's default QoS (REP-2003 sensor data): best effort, which matches any
    publisher, keep last 1, volatile. A new profile each call: QoS overrides change it in place."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, durability=DurabilityPolicy.VOLATILE,
                      reliability=ReliabilityPolicy.BEST_EFFORT)


def output_qos() -> QoSProfile:
    """The optical_flow publishers' default QoS: reliable, keep last 1, volatile (a new profile each call)."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, durability=DurabilityPolicy.VOLATILE,
                      reliability=ReliabilityPolicy.RELIABLE)


def load_estimator(params: dict[str, Any], log: Any) -> FlowEstimator:
    """The FlowEstimator the parameters ask for, falling back to ``fallback_backend`` if the backend fails.

    Raises StartupError when no model is available or no allowed backend loads.
    """
    size = (params["input_height"], params["input_width"]) if params["input_height"] else None
    options = dict(model=params["model"] or None, input_size=size, confidence=params["confidence"],
                   threads=params["threads"] or None, device=params["device"], precision=params["precision"])
    backend, fallback = params["backend"], params["fallback_backend"]
    try:
        return FlowEstimator(backend=backend, **options)
    except (ModelNotShippedError, FileNotFoundError, ModelFileError) as err:  # no backend does better
        raise StartupError(str(err)) from None
    except Exception as err:  # any backend failure: missing library, no GPU, unreadable model
        if fallback in ("none", backend):
            raise StartupError(f"backend {backend!r} failed to load: {err} "
                               f"(fallback_backend is {fallback!r})") from None
        log.warning(f"backend {backend!r} failed to load: {err}; falling back to {fallback!r}")
        first = err
    try:
        return FlowEstimator(backend=fallback, **options)
    except Exception as err:  # as above
        raise StartupError(f"backend {backend!r} failed to load ({first}) and so did fallback "
                           f"{fallback!r} ({err})") from None


class _RosLogHandler(logging.Handler):
    """Forwards the Python logging of mdflow_ros (e.g. the backend choice) to the node's ROS logger."""

    def __init__(self, logger: Any):
        super().__init__(logging.INFO)
        self._logger = logger

    def emit(self, record: logging.LogRecord) -> None:
        text = self.format(record)
        if record.levelno >= logging.ERROR:
            self._logger.error(text)
        elif record.levelno >= logging.WARNING:
            self._logger.warning(text)
        else:
            self._logger.info(text)


class FlowNode(Node):
    """Dense optical flow between consecutive camera frames (see the module docstring)."""

    def __init__(self, **kwargs: Any):
        super().__init__(NODE_NAME, **kwargs)
        log = self.get_logger()
        self._py_log = logging.getLogger("mdflow_ros")
        self._py_log_handler = _RosLogHandler(log)
        self._py_log.addHandler(self._py_log_handler)
        self._py_log.setLevel(logging.INFO)
        try:
            self.params = declare_parameters(self)
        except ParameterError as err:
            raise StartupError(str(err)) from None
        self._runtime = {name: self.params[name] for name in RUNTIME_PARAMETERS}
        self.add_post_set_parameters_callback(self._on_parameters_set)
        self.stats = FlowStats()
        self._mailbox = LatestOnly()
        self._pairs = PairTracker()
        self._warned: dict[str, float] = {}
        self._decode_raw = image_to_array_cv_bridge if cv_bridge_available() else image_to_array
        self._pub = self._with_qos_overrides(self.create_publisher, "publisher", OpticalFlow, "optical_flow",
                                             output_qos())
        self._pub_flow, self._pub_confidence, self._pub_color = (
            self._with_qos_overrides(self.create_publisher, "publisher", Image, f"optical_flow/{view}", output_qos())
            for view in ("flow", "confidence", "color"))
        self._pub_diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)

        self.estimator: FlowEstimator | None = None
        self._startup_error: Exception | None = None
        self._ready = threading.Event()
        self._worker = threading.Thread(target=self._work, name="flow_worker", daemon=True)
        self._worker.start()
        self._ready.wait()  # a signal meanwhile ends the process (ros/stop.py)
        if self._startup_error is not None:
            self._worker.join()
            raise StartupError(str(self._startup_error))
        self.model = model_identity(self.estimator.model_path)
        log.info(f"flow from {self.model} on {self.estimator.backend.description}; "
                 f"image conversion: {'cv_bridge' if self._decode_raw is image_to_array_cv_bridge else 'numpy'}")

        msg_type, topic = ((CompressedImage, "image/compressed") if self.params["input_transport"] == "compressed"
                           else (Image, "image"))
        try:
            self._sub = self._with_qos_overrides(self.create_subscription, "subscription", msg_type, topic,
                                                 self._on_image, image_qos())
        except StartupError:
            self.close()
            raise
        self._diagnostics_timer = self.create_timer(self.params["diagnostics_period"], self._publish_diagnostics)
        log.info(f"subscribed to {self._sub.topic_name}; publishing {self._pub.topic_name}")

    def _with_qos_overrides(self, create: Callable[..., Any], kind: str, msg_type: type, topic: str,
                            *args: Any) -> Any:
        """``create(msg_type, topic, *args)`` (a publisher or subscription) with ROS 2's standard QoS override
        parameters for history, depth and reliability (read-only); StartupError naming them if they are unusable."""
        prefix = f"qos_overrides.{self.resolve_topic_name(topic)}.{kind}"
        options = QoSOverridingOptions.with_default_policies(callback=qos_check(prefix))
        with warnings.catch_warnings():  # depth 0 is refused by qos_check, after rclpy warned about it
            warnings.filterwarnings("ignore", message="A zero depth with KEEP_LAST", category=UserWarning)
            try:
                return create(msg_type, topic, *args, qos_overriding_options=options)
            except ParameterError as err:
                raise StartupError(str(err)) from None
            except QOS_ERRORS as err:
                raise StartupError(f"parameters {prefix}.*: {err}; allowed: {QOS_ALLOWED}") from None

    def _on_parameters_set(self, parameters: list[Any]) -> None:
        for param in parameters:
            if param.name in self._runtime:
                self._runtime[param.name] = param.value

    def _on_image(self, msg: Any) -> None:
        """Subscription callback: keep the newest frame for the worker, count the one it replaces."""
        self.stats.count("received")
        if self._mailbox.put((msg, time.monotonic())):
            self.stats.count("dropped")

    def _work(self) -> None:
        """The worker thread: load the model, then process frames until the mailbox closes."""
        try:
            self.get_logger().info(f"loading the model ({self.params['model'] or 'the shipped teacher'}, "
                                   f"backend {self.params['backend']})")
            self.estimator = load_estimator(self.params, self.get_logger())
            if self.estimator.input_size is not None:
                blank = np.zeros((*self.estimator.input_size, 3), np.uint8)
                self.estimator.estimate(blank, blank)
        except Exception as err:
            self._startup_error = err
        finally:
            self._ready.set()
        if self._startup_error is not None:
            return
        while (item := self._mailbox.take()) is not None:
            try:
                self._process(*item)
            except Exception as err:  # the node never dies on input
                if self._mailbox.closed or not self.context.ok():  # stopping: an inference was cancelled
                    return
                self.stats.count("errors")
                self.get_logger().error(f"flow failed for a frame: {type(err).__name__}: {err}",
                                        throttle_duration_sec=WARN_THROTTLE_S)

    def _decode(self, msg: Any) -> tuple[FrameInfo, np.ndarray, str]:
        """Frame info, estimator input array and its encoding; ImageDecodeError for a bad or oversized image
        (checked against max_input_pixels before decoding)."""
        limit = self.params["max_input_pixels"]
        if isinstance(msg, CompressedImage):
            pixels, encoding = compressed_to_array(msg, limit)
            source_encoding = encoding
        else:
            pixels = self._decode_raw(msg, CAMERA_ENCODINGS, limit)
            pixels, encoding = estimator_input(pixels, msg.encoding)
            source_encoding = msg.encoding
        height, width = pixels.shape[:2]
        info = FrameInfo(stamp_ns(msg.header.stamp), height, width, source_encoding, msg.header.frame_id)
        return info, pixels, encoding

    def _process(self, msg: Any, received_s: float) -> None:
        """Decode one frame, pair it, compute and publish the flow from the previous frame."""
        log = self.get_logger()
        try:
            info, pixels, encoding = self._decode(msg)
        except ImageDecodeError as err:
            oversized = err.kind == "oversized"
            self.stats.count("oversized" if oversized else "bad")
            self._warn(err.kind, f"{'dropping an oversized' if oversized else 'ignoring a bad'} image on "
                                 f"{self._sub.topic_name}: {err}")
            return
        step = self._pairs.advance(info, (msg.header, pixels), self._runtime["max_frame_gap"])
        if step.reset is not None:
            self.stats.count("resets")
            if step.log:
                log.info(f"frame pair reset, no flow across it: {step.reset}")
        if step.previous is None:
            return
        previous_header, previous_pixels = step.previous
        scale = self._runtime["output_scale"]
        try:
            result = self.estimator.estimate(previous_pixels, pixels, encoding, output_scale=scale)
        except InputError as err:  # e.g. frames smaller than the estimator accepts
            self.stats.count("bad")
            self._pairs.forget()
            self._warn("pair", f"ignoring a bad image pair: {err}")
            return
        self._publish(msg.header, previous_header.stamp, result.flow, result.confidence, scale, received_s)

    def _warn(self, kind: str, text: str) -> None:
        """A warning, at most one per WARN_THROTTLE_S for each kind of problem (worker thread only)."""
        now = time.monotonic()
        if now - self._warned.get(kind, -WARN_THROTTLE_S) >= WARN_THROTTLE_S:
            self._warned[kind] = now
            self.get_logger().warning(text)

    def _publish(self, header: Any, previous_stamp: Any, flow: np.ndarray, confidence: np.ndarray | None,
                 scale: float, received_s: float) -> None:
        """Publish the OpticalFlow (flow and confidence are at ``scale``) and the views that have subscribers."""
        out = flow_message(header, previous_stamp, flow, confidence, scale, self.model,
                           self.estimator.backend.description, self.estimator.last_inference_s)
        out.processing_time = time.monotonic() - received_s
        self._pub.publish(out)
        if self._pub_flow.get_subscription_count():
            self._pub_flow.publish(out.flow)
        if confidence is not None and self._pub_confidence.get_subscription_count():
            self._pub_confidence.publish(out.confidence)
        if self._pub_color.get_subscription_count():
            color = flow_to_color(flow, self._runtime["color_max_flow"] or None)
            self._pub_color.publish(array_to_image(color, "rgb8", header))
        self.stats.record_publish(time.monotonic(), out.processing_time, self.estimator.last_inference_s)

    def _publish_diagnostics(self) -> None:
        """Timer: one DiagnosticStatus with the counters, rate, latency and backend."""
        snap = self.stats.snapshot(time.monotonic())
        status = DiagnosticStatus(name=f"{self.get_fully_qualified_name()}: optical flow",
                                  hardware_id=self.estimator.backend.description)
        if snap["errors"]:
            status.level, status.message = DiagnosticStatus.WARN, f"{snap['errors']:.0f} failed inferences"
        elif snap["published"] == 0:
            status.level, status.message = DiagnosticStatus.OK, "waiting for images"
        else:
            status.level, status.message = DiagnosticStatus.OK, f"publishing at {snap['publish_rate_hz']:.1f} Hz"
        values = {"backend": self.estimator.backend.description, "model": self.model,
                  **{k: f"{v:.0f}" if k in COUNTERS else f"{v:.2f}" for k, v in snap.items()}}
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self._pub_diagnostics.publish(array)

    def close(self, timeout: float = WORKER_DEADLINE_S) -> bool:
        """Stop the worker: no more frames, the inference in flight cancelled where the backend can, at most
        ``timeout`` s of waiting; detach the log forwarding. False when the worker is still busy (abandoned)."""
        self._mailbox.close()
        if self.estimator is not None:
            self.estimator.cancel()
        self._worker.join(timeout=timeout)
        self._py_log.removeHandler(self._py_log_handler)
        return not self._worker.is_alive()


def start_error(text: str) -> int:
    """Log the one ``cannot start:`` line; the exit status 1."""
    rclpy.logging.get_logger(NODE_NAME).fatal(f"cannot start: {text}")
    return 1


def spin_until_stopped(node: FlowNode, stop: StopSignals) -> None:
    """Spin ``node`` until a stop signal or an rclpy shutdown (waking every SPIN_PERIOD_S to look)."""
    executor = SingleThreadedExecutor(context=node.context)
    executor.add_node(node)
    stop.defer()
    try:
        while not stop.requested.is_set() and node.context.ok():
            executor.spin_once(timeout_sec=SPIN_PERIOD_S)
    finally:
        executor.shutdown(timeout_sec=0)


def main(argv: list[str] | None = None, stop: StopSignals | None = None) -> int:
    """Run the node until SIGINT / SIGTERM (status 0); 1 with one ``cannot start:`` line when it cannot start.

    stop: the signal handling installed by the entry point (mdflow_ros/node.py) before the heavy
    imports; installed here when None.
    """
    stop = stop or StopSignals.install()
    args = sys.argv if argv is None else argv
    try:
        check_parameter_files(args)
    except ParameterError as err:
        return start_error(str(err))
    transport = use_large_data_transport()
    try:
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    except RuntimeError as err:  # rcl's RCLError: arguments or a parameter file it cannot read
        return start_error(str(err).split(", at /")[0])
    node = None
    try:
        node = FlowNode()
        if transport:
            setting = ", ".join(f"{k}={v}" for k, v in transport.items())
            node.get_logger().info(f"Fast DDS transports were not configured; for large images: {setting}")
        spin_until_stopped(node, stop)
    except StartupError as err:
        return start_error(str(err))
    finally:
        stopped = node is None or node.close()
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
        if not stopped:  # an inference that cannot be interrupted: abandon it (ros/stop.py)
            exit_now(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
