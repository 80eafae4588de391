"""tracker node: camera images in, tracked objects with persistent IDs out, on every frame.

Subscribes `image` (sensor_msgs/Image) or `image/compressed` (CompressedImage, with
`image_transport: compressed`). Publishes `tracks` (stvg_ros_msgs/TrackedObjectArray) with the
source image's header unchanged, `detections` (vision_msgs/Detection2DArray, track ID in
`Detection2D.id`) where vision_msgs is installed, and `/diagnostics` (rates, latency, drops).
`~/enable` (std_srvs/SetBool) pauses and resumes processing without unloading the model.

Threads: the camera subscription (nodes/image_input.py) only queues each frame and returns, so
the DDS reader's queue is drained as frames arrive; a processing thread takes every waiting frame,
oldest first: the newest is decoded, detected (every k-th frame) and tracked, the older ones get
the tracker's prediction without being decoded (they are late already). Every camera frame gets a
tracks message however far behind the detector falls, and frames lost on the way are counted by
cause in /diagnostics.

Lifecycle: configure reads the parameters and checks that the model file exists (a missing file
fails the transition with a message that names it and how to get it); activate loads the model
and subscribes; deactivate unsubscribes and frees the model. With `autostart` (default) the node
configures and activates itself (the launch file sets it false and drives the transitions).

Parameters (params.TrackerParams): the live ones (conf, iou, max_det, detect_every, ...) take effect
on the running pipeline when set (`ros2 param set`); the others are refused while configured, with
the reason (ros_params.ParameterChanges).

    python -m stvg_ros.nodes.tracker_node --ros-args -p detector:=yolo-synth-tiny -r image:=/camera/image_raw
"""

from __future__ import annotations

import dataclasses
import threading
import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from std_srvs.srv import SetBool

from stvg_ros.core.image_codec import ImageDecodeError
from stvg_ros.core.model_registry import ModelRegistryError
from stvg_ros.nodes.image_input import ImageInput, ReceivedFrame
from stvg_ros.nodes.lifecycle import run_lifecycle_node
from stvg_ros.nodes.messages import (
    decode_ros_image,
    diagnostic_array,
    image_size,
    stamp_to_ns,
    tracks_to_detection2d,
    tracks_to_msg,
)
from stvg_ros.nodes.params import TrackerParams
from stvg_ros.nodes.qos import KeyedThrottle, NoPublisherWatchdog
from stvg_ros.nodes.ros_params import ParameterChanges, declare_parameters, read_parameters
from stvg_ros.perception.detector import DetectorError
from stvg_ros.perception.pipeline import build_perception, model_file
from stvg_ros.perception.stats import LatencyMeter, RateMeter
from stvg_ros_msgs.msg import TrackedObjectArray

try:  # real ROS systems: also publish the standard detection message
    from vision_msgs.msg import Detection2DArray  # type: ignore
except ImportError:
    Detection2DArray = None


class TrackerNode(LifecycleNode):
    def __init__(self, **kwargs) -> None:
        super().__init__("tracker_node", **kwargs)
        self.params: TrackerParams = declare_parameters(self, TrackerParams)
        self.pipeline = None
        self.enabled = True
        self._lock = threading.Lock()
        self._watchdog = self._diag_timer = None
        self._tracks_pub = self._det_pub = self._diag_pub = None
        self._input, self._output, self._detector = RateMeter(), RateMeter(), RateMeter()
        self._latency, self._processing = LatencyMeter(), LatencyMeter()
        self._images: ImageInput | None = None
        self.counts = {"processing_errors": 0}
        self._drop_log = KeyedThrottle(self.get_logger())
        self.create_service(SetBool, "~/enable", self._on_enable)
        self._parameter_changes = ParameterChanges(self, TrackerParams, self._apply_parameters)

    # ---- lifecycle

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.params = p = read_parameters(self, TrackerParams)
            self.config = p.perception_config()
            model = model_file(self.config)
        except (ValueError, ModelRegistryError, DetectorError) as exc:
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        self.get_logger().info(f"detector file: {model}")
        self._tracks_pub = self.create_lifecycle_publisher(TrackedObjectArray, "tracks", 10)
        if Detection2DArray is not None and p.publish_detection2d:
            self._det_pub = self.create_lifecycle_publisher(Detection2DArray, "detections", 10)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.pipeline = build_perception(self.config)
        except Exception as exc:  # any loader error: fail the transition with its message
            self.get_logger().error(f"activate failed: cannot load the detector: {exc}")
            return TransitionCallbackReturn.FAILURE
        p = self.params
        self._images = ImageInput(self, self._on_frames, p.image_transport, p.image_depth, p.image_reliability,
                                  backlog=p.image_backlog)  # fmt: skip
        self._watchdog = NoPublisherWatchdog(self, [self._images.subscription], after_s=p.no_image_warning_s)
        if p.diagnostics_period_s > 0:
            self._diag_timer = self.create_timer(p.diagnostics_period_s, self._publish_diagnostics)
        self.get_logger().info(f"tracking on {self._images.topic_name} with {p.detector} ({p.backend}, {p.precision})")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        for pub in (self._tracks_pub, self._det_pub):
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
        if self._diag_pub is not None:
            self.destroy_publisher(self._diag_pub)
        self._tracks_pub = self._det_pub = self._diag_pub = None
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def destroy_node(self) -> None:
        """Stop the frame thread (a detection in progress finishes) before the node goes."""
        self._release()
        super().destroy_node()

    def _release(self) -> None:
        if self._diag_timer is not None:
            self.destroy_timer(self._diag_timer)
        if self._watchdog is not None:
            self._watchdog.destroy()
        if self._images is not None:
            self._images.destroy()  # stops the processing thread after the frame in progress
        self._images = self._watchdog = self._diag_timer = None
        with self._lock:
            self.pipeline = None

    # ---- callbacks

    def _apply_parameters(self, changes: dict) -> None:
        """Live parameter changes (ParameterChanges, configured node): into the config and, when
        active, the running detector, tracker and detection schedule (between two frames)."""
        with self._lock:
            self.params = dataclasses.replace(self.params, **changes)
            self.config = self.params.perception_config()
            if self.pipeline is not None:
                self.pipeline.config = self.config
                self.pipeline.tracker.config = self.config.tracker
                c, detector = self.config, self.pipeline.detector
                detector.settings = dataclasses.replace(detector.settings, conf=c.conf, iou=c.iou, max_det=c.max_det)
                if c.detect_every > 0:
                    self.pipeline.stats.detect_every = c.detect_every

    def _on_enable(self, request, response):
        self.enabled = bool(request.data)
        if self._images is not None:
            self._images.pause(not self.enabled)  # frames received before the pause are not processed after it
        response.success, response.message = True, "processing " + ("enabled" if self.enabled else "paused")
        self.get_logger().info(response.message)
        return response

    def _on_frames(self, frames: list[ReceivedFrame]) -> None:
        """Processing thread: every waiting frame, oldest first; all but the newest are caught up on."""
        for i, frame in enumerate(frames):
            self._input.tick()
            try:
                self._process(frame, catch_up=i < len(frames) - 1)
            except Exception as exc:  # never let one frame end the thread
                if not self.context.ok():  # SIGINT/SIGTERM shut the context down mid-frame: the end, not a fault
                    return
                self.counts["processing_errors"] += 1
                self.get_logger().error(f"processing a frame failed: {exc}", throttle_duration_sec=5.0)

    def _process(self, frame: ReceivedFrame, catch_up: bool) -> None:
        """Track one frame and publish its tracks; `catch_up`: predict without decoding (newer frames wait)."""
        started = time.monotonic()
        msg = frame.msg
        if not self.enabled:
            return
        stamp_ns = stamp_to_ns(msg.header.stamp)
        rgb = None
        if not catch_up:
            try:
                rgb = decode_ros_image(msg)
            except ImageDecodeError as exc:
                self._images.count_decode_error()
                self._drop_log.warning(str(exc).split(":")[0], f"dropping image: {exc}")
                return
        with self._lock:
            if self.pipeline is None:
                return
            runs_before = self.pipeline.stats.detector_runs
            if rgb is None:
                tracks = self.pipeline.catch_up(stamp_ns, image_size(msg), frame.lost_before)
            else:
                tracks = self.pipeline.process(stamp_ns, rgb, frame.lost_before)
            if self.pipeline.stats.detector_runs > runs_before:
                self._detector.tick()
            names = self.pipeline.class_names
        if not self.context.ok():  # shut down while this frame was processed (SIGINT/SIGTERM): nothing to publish
            return
        self._tracks_pub.publish(tracks_to_msg(tracks, msg.header, names, self.params.camera))
        if self._det_pub is not None:
            self._det_pub.publish(tracks_to_detection2d(tracks, msg.header, names))
        self._output.tick()
        self._processing.add(time.monotonic() - started)
        self._latency.add(max(0.0, (self.get_clock().now().nanoseconds - stamp_ns) / 1e9))

    def frame_counts(self) -> dict[str, int]:
        """Camera frames received and lost by cause (ImageInput.counts; empty while inactive)."""
        return self._images.counts() if self._images is not None else {}

    def _publish_diagnostics(self) -> None:
        pipeline = self.pipeline
        stats = pipeline.stats if pipeline is not None else None
        counts = {**self.frame_counts(), **self.counts}
        counts["caught_up"] = stats.caught_up if stats else 0
        values = {
            "input_hz": f"{self._input.rate():.1f}",
            "output_hz": f"{self._output.rate():.1f}",
            "detector_hz": f"{self._detector.rate():.1f}",
            "latency_ms_p50": f"{self._latency.percentile_ms(50):.1f}",
            "latency_ms_p95": f"{self._latency.percentile_ms(95):.1f}",
            "processing_ms_p95": f"{self._processing.percentile_ms(95):.1f}",
            "detect_every": str(stats.detect_every if stats else 0),
            "conf": f"{pipeline.detector.settings.conf if pipeline is not None else self.params.conf:g}",
            "enabled": str(self.enabled),
            **{k: str(v) for k, v in counts.items()},
        }
        level, message = DiagnosticStatus.OK, "tracking"
        if not self.enabled:
            level, message = DiagnosticStatus.OK, "paused by ~/enable"
        elif self._input.rate() == 0:
            level, message = DiagnosticStatus.WARN, "no images"
        elif self.counts["processing_errors"] or counts.get("decode_errors"):
            level, message = DiagnosticStatus.WARN, "some frames failed (see the log)"
        self._diag_pub.publish(diagnostic_array(self, "tracker", level, message, values))


def main(args: list[str] | None = None) -> int:
    return run_lifecycle_node(TrackerNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
