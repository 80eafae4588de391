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
configures and activates itself.

    python -m stvg_ros.nodes.tracker_node --ros-args -p detector:=yolo-synth-tiny -r image:=/camera/image_raw
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from std_srvs.srv import SetBool

from stvg_ros.core.image_codec import ImageDecodeError
from stvg_ros.nodes.common import (
    RELIABILITIES,
    KeyedThrottle,
    NoPublisherWatchdog,
    declare_parameters,
    decode_ros_image,
    diagnostic_array,
    param,
    parameters_markdown,
    read_parameters,
    run_lifecycle_node,
    stamp_to_ns,
    tracks_to_msg,
)
from stvg_ros.nodes.image_input import ImageInput, ReceivedFrame
from stvg_ros.perception.detector import DetectorError
from stvg_ros.perception.pipeline import BACKENDS, PRECISIONS, PerceptionConfig
from stvg_ros.perception.stats import LatencyMeter, RateMeter
from stvg_ros_msgs.msg import TrackedObjectArray

try:  # real ROS systems: also publish the standard detection message
    from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose  # type: ignore
except ImportError:
    Detection2DArray = None


@dataclass
class TrackerParams:
    """Parameters of the tracker node (config/tracker.yaml; table in docs/perception.md)."""

    autostart: bool = param(True, "configure and activate on start (false: wait for a lifecycle manager)")
    detector: str = param("yolo-synth-tiny", "detector: model manifest name (models/*.yaml) or a .onnx/.pt/.yaml path")
    backend: str = param("onnx", "detector runtime: ONNX Runtime or ultralytics (torch)", choices=BACKENDS)
    precision: str = param("int8", "ONNX file to load: static int8 (faster on CPU) or fp32", choices=PRECISIONS)
    conf: float = param(0.1, "detector confidence threshold (ByteTrack uses boxes down to track_low_thresh)")
    iou: float = param(0.5, "NMS IoU threshold (duplicate boxes would become competing tracks)")
    classes: list[str] = field(
        default_factory=list, metadata={"description": "class filter: names or ids (empty: all classes)"}
    )
    imgsz: int = param(0, "detector input size (0: the model's own)")
    max_det: int = param(300, "most detections per frame")
    threads: int = param(0, "ONNX Runtime threads (0: its default)")
    detect_every: int = param(0, "run the detector every N frames, predict in between (0: adapt N to load)")
    max_detect_every: int = param(6, "largest N when adapting")
    cpu_budget: float = param(0.6, "share of the frame interval the tracker may use on average when adapting")
    track_high_thresh: float = param(0.25, "ByteTrack: first-association score threshold")
    track_low_thresh: float = param(0.1, "ByteTrack: second-association score threshold")
    new_track_thresh: float = param(0.25, "ByteTrack: score needed to start a track")
    match_thresh: float = param(0.8, "ByteTrack: association cost threshold")
    lost_buffer_s: float = param(1.0, "ByteTrack keeps a lost track this long for IoU re-matching")
    reid_max_gap_s: float = param(
        3.0, "re-associate a new track with one lost at most this long ago, in seconds without detections (0: off)"
    )
    reid_min_similarity: float = param(0.6, "re-association: minimum colour-histogram similarity (0..1)")
    reid_gate_sizes: float = param(2.5, "re-association: motion gate radius in object sizes")
    reid_low_score: bool = param(
        True, "re-association: low-score detections (track_low_thresh..new_track_thresh) may revive a lost ID"
    )
    image_transport: str = param(
        "raw", "camera input: Image on `image` or CompressedImage on `image/compressed`", choices=("raw", "compressed")
    )
    image_reliability: str = param(
        "best_effort",
        "QoS reliability of the image subscription (best_effort also receives from reliable publishers)",
        choices=RELIABILITIES,
    )
    image_depth: int = param(
        10, "QoS depth (KEEP_LAST) of the image subscription: frames the DDS reader holds while the executor is busy"
    )
    image_backlog: int = param(
        30, "frames queued for the processing thread; when it falls further behind the oldest are dropped (counted)"
    )
    no_image_warning_s: float = param(5.0, "warn when no image publisher has matched for this long (0: never)")
    diagnostics_period_s: float = param(1.0, "period of /diagnostics messages (0: none)")
    publish_detection2d: bool = param(
        True, "also publish vision_msgs/Detection2DArray on `detections` where vision_msgs is installed"
    )


def parameters_table() -> str:
    return parameters_markdown(TrackerParams)


def perception_config(p: TrackerParams) -> PerceptionConfig:
    return PerceptionConfig.from_node_parameters(vars(p))


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

    # ---- lifecycle

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        from stvg_ros.core import model_registry
        from stvg_ros.perception.pipeline import model_file

        try:
            self.params = p = read_parameters(self, TrackerParams)
            self.config = perception_config(p)
            model = model_file(self.config)
        except (ValueError, model_registry.ModelRegistryError, DetectorError) as exc:
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        self.get_logger().info(f"detector file: {model}")
        self._tracks_pub = self.create_lifecycle_publisher(TrackedObjectArray, "tracks", 10)
        if Detection2DArray is not None and p.publish_detection2d:
            self._det_pub = self.create_lifecycle_publisher(Detection2DArray, "detections", 10)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        from stvg_ros.perception.pipeline import build_perception

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
                tracks = self.pipeline.catch_up(stamp_ns, _image_size(msg), frame.lost_before)
            else:
                tracks = self.pipeline.process(stamp_ns, rgb, frame.lost_before)
            if self.pipeline.stats.detector_runs > runs_before:
                self._detector.tick()
            names = self.pipeline.class_names
        self._tracks_pub.publish(tracks_to_msg(tracks, msg.header, names))
        if self._det_pub is not None:
            self._det_pub.publish(_detection2d_array(tracks, msg.header, names))
        self._output.tick()
        self._processing.add(time.monotonic() - started)
        self._latency.add(max(0.0, (self.get_clock().now().nanoseconds - stamp_ns) / 1e9))

    def _publish_diagnostics(self) -> None:
        stats = self.pipeline.stats if self.pipeline is not None else None
        counts = {**(self._images.counts() if self._images is not None else {}), **self.counts}
        counts["caught_up"] = stats.caught_up if stats else 0
        values = {
            "input_hz": f"{self._input.rate():.1f}",
            "output_hz": f"{self._output.rate():.1f}",
            "detector_hz": f"{self._detector.rate():.1f}",
            "latency_ms_p50": f"{self._latency.percentile_ms(50):.1f}",
            "latency_ms_p95": f"{self._latency.percentile_ms(95):.1f}",
            "processing_ms_p95": f"{self._processing.percentile_ms(95):.1f}",
            "detect_every": str(stats.detect_every if stats else 0),
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


def _detection2d_array(tracks, header, class_names):
    out = Detection2DArray(header=header)
    for i in range(len(tracks)):
        x1, y1, x2, y2 = (float(v) for v in tracks.xyxy[i])
        det = Detection2D(header=header, id=str(int(tracks.track_id[i])))
        det.bbox.center.position.x, det.bbox.center.position.y = (x1 + x2) / 2, (y1 + y2) / 2
        det.bbox.size_x, det.bbox.size_y = x2 - x1, y2 - y1
        hypothesis = ObjectHypothesisWithPose()
        class_id = int(tracks.class_id[i])
        hypothesis.hypothesis.class_id = class_names[class_id] if 0 <= class_id < len(class_names) else str(class_id)
        hypothesis.hypothesis.score = float(tracks.score[i])
        det.results.append(hypothesis)
        out.detections.append(det)
    return out


def _image_size(msg) -> tuple[int, int] | None:
    """(width, height) of an Image; None for a CompressedImage (no size without decoding: boxes stay unclipped)."""
    width, height = int(getattr(msg, "width", 0)), int(getattr(msg, "height", 0))
    return (width, height) if width > 0 and height > 0 else None


def main(args: list[str] | None = None) -> int:
    return run_lifecycle_node(TrackerNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
