"""grounding node: answers "which object, and when?" over the camera history, then follows the target.

Subscribes `image` (sensor_msgs/Image, or `image/compressed` with image_transport=compressed) and
`tracks` (stvg_ros_msgs/TrackedObjectArray) into a ClipBuffer. Serves `ground` as a service
(stvg_ros_msgs/srv/Ground) and as an action (stvg_ros_msgs/action/Ground: feedback stage +
progress, cancel) through one bounded queue; a query that finds the queue full is answered "busy"
at once. Publishes every answer on `grounding_result`, then the target's live box on `target` for
every new tracks message until `~/stop_target`, a new answer, or the track is lost for longer than
`target_lost_timeout_s` (one STATUS_LOST message says so). Publishes `/diagnostics` (images and
tracks received, buffer contents, queries) every `diagnostics_period_s`.

Lifecycle: configure reads the parameters and checks that the model files (and, with `sam2_refine`,
the `sam2` package and checkpoint) exist (a missing one fails the transition with a message that
names it); activate loads the model (and SAM2); deactivate frees it.
The node configures and activates itself when `autostart` is true.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Header
from std_srvs.srv import Trigger

from stvg_ros.core.image_codec import ImageDecodeError
from stvg_ros.core.prompt import QueryError, normalize_query
from stvg_ros.nodes.common import (
    RELIABILITIES,
    NoPublisherWatchdog,
    declare_parameters,
    decode_ros_image,
    diagnostic_array,
    image_topic,
    now_header,
    ns_to_stamp,
    param,
    read_parameters,
    run_lifecycle_node,
    stamp_to_ns,
    tracks_from_msg,
)
from stvg_ros.nodes.image_input import ImageInput, ReceivedFrame
from stvg_ros.nodes.query_queue import (
    QueryJob,
    QueryQueue,
    TargetFollower,
    TargetUpdate,
    check_window,
    reasoning_for,
)
from stvg_ros.nodes.stream_spinner import StreamSpinner
from stvg_ros_msgs.action import Ground as GroundAction
from stvg_ros_msgs.msg import GroundingResult, Target, TrackedObjectArray, TubeBox
from stvg_ros_msgs.srv import Ground as GroundService

BACKENDS = ("llama_cpp", "transformers", "http")
#: Feedback stages of the action, in order.
STAGES = ("queued", "sampling", "encoding", "reasoning", "parsing")


@dataclass
class GroundingParams:
    """Parameters of the grounding node (config/grounding.yaml; table in docs/ros.md)."""

    autostart: bool = param(True, "configure and activate on start (false: wait for a lifecycle manager)")
    backend: str = param("llama_cpp", "VLM backend", choices=BACKENDS)
    model: str = param(
        "stvg-r1-7b-q4_k_m",
        "model manifest name (models/*.yaml) or a path: GGUF file (llama_cpp), HF folder (transformers), "
        "served model name (http)",
    )
    mmproj: str = param("", "vision projector GGUF for llama_cpp (empty: the one the manifest names)")
    endpoint: str = param("", "OpenAI-compatible base URL for backend http, e.g. http://gpu-server:8080/v1")
    n_ctx: int = param(8192, "llama.cpp context length in tokens (frames + prompt + answer must fit)")
    n_threads: int = param(0, "llama.cpp CPU threads (0: all cores but one)")
    n_gpu_layers: int = param(-1, "llama.cpp layers offloaded to the GPU (-1: all, 0: CPU only)")
    flash_attn: bool = param(True, "llama.cpp flash attention (less memory and faster on GPU; false if a build lacks it)")
    num_frames: int = param(16, "frames sampled from the query window and shown to the model")
    reasoning: bool = param(True, "queries with REASONING_DEFAULT get a `<think>` block first (false: answer only)")
    max_new_tokens: int = param(512, "longest model answer in tokens (reasoning included)")
    buffer_seconds: float = param(30.0, "camera history kept for queries, in seconds of source time")
    buffer_sample_fps: float = param(2.0, "frames per second kept in the history (STVG-R1 samples video at 2 fps)")
    buffer_max_mb: float = param(64.0, "memory bound of the history in MB (oldest entries dropped first)")
    query_timeout_s: float = param(120.0, "longest a query may take from arrival (queue wait included)")
    queue_size: int = param(2, "queries that may wait while one runs; more are answered busy at once")
    target_lost_timeout_s: float = param(3.0, "stop following when the target is unseen this long (source time)")
    image_transport: str = param(
        "raw",
        "camera input: sensor_msgs/Image on `image` or CompressedImage on `image/compressed`",
        choices=("raw", "compressed"),
    )
    image_reliability: str = param(
        "best_effort",
        "QoS reliability of the image subscription (best_effort also receives from reliable publishers)",
        choices=RELIABILITIES,
    )
    image_depth: int = param(
        10, "QoS depth (KEEP_LAST) of the image subscription: frames the DDS reader holds while the executor is busy"
    )
    no_image_warning_s: float = param(5.0, "warn when no image publisher has matched for this long (0: never)")
    diagnostics_period_s: float = param(1.0, "period of /diagnostics messages (0: none)")
    sam2_refine: bool = param(False, "draw IDs at SAM2 mask centres on the sampled frames (needs `sam2` + a checkpoint)")
    sam2_checkpoint: str = param("", "SAM2.1 tiny checkpoint (.pt) for sam2_refine (required when it is on)")
    sam2_image_size: int = param(512, "SAM2 image encoder input size (1024: SAM2's own; 512: ~7x faster on CPU)")


# --------------------------------------------------------------------------------------------
# The node


STATUS_CODES = {
    "tracking": Target.STATUS_TRACKING,
    "occluded": Target.STATUS_OCCLUDED,
    "lost": Target.STATUS_LOST,
    "stopped": Target.STATUS_STOPPED,
}
RESULTS_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


class GroundingNode(LifecycleNode):
    """Thin ROS shell around ClipBuffer + GroundingPipeline (see the module docstring)."""

    def __init__(self, node_name: str = "grounding_node", **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        self.params: GroundingParams = declare_parameters(self, GroundingParams)
        self._query_group = ReentrantCallbackGroup()  # queries wait concurrently
        self._active = False
        self._model_files: dict = {}
        self._buffer = None
        self._pipeline = None
        self._backend = None
        self._queue: QueryQueue | None = None
        self._follower = TargetFollower(self.params.target_lost_timeout_s)
        self._streams: StreamSpinner | None = None
        self._services_made: list = []
        self._action_server = None
        self._watchdog = None
        self._result_pub = self._target_pub = None
        self._frame_id = ""
        self._decode_warned = 0.0
        self._images: ImageInput | None = None
        self._diag_pub = self._diag_timer = None
        self._last_image = 0.0  # time.monotonic() of the last decoded image
        self.counts = {"tracks": 0, "queries": 0, "queries_refused": 0}

    @property
    def executor_threads(self) -> int:
        """Threads this node needs in a MultiThreadedExecutor: each query in flight holds one while it
        waits for its answer, plus a refusal, the action's bookkeeping and the lifecycle services (the
        camera and tracks streams have their own executor: StreamSpinner)."""
        return max(0, self.params.queue_size) + 4

    # ---------------------------------------------------------------- lifecycle

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        from stvg_ros.grounding.backends import resolve_model_files
        from stvg_ros.grounding.settings import backend_kwargs, grounding_config
        from stvg_ros.perception.buffer import ClipBuffer

        try:
            self.params = p = read_parameters(self, GroundingParams)
            if problems := _check_params(p):
                raise ValueError("; ".join(problems))
            self._model_files = resolve_model_files(backend=p.backend, **backend_kwargs(vars(p)))
            grounding_config(vars(p))  # Sam2Unavailable when sam2_refine is on without sam2 or a checkpoint
        except Exception as exc:  # a missing model file, a bad parameter: fail the transition, say why
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        self._buffer = ClipBuffer(
            max_seconds=p.buffer_seconds, sample_fps=p.buffer_sample_fps, max_bytes=int(p.buffer_max_mb * 2**20)
        )
        self._follower = TargetFollower(p.target_lost_timeout_s)
        self._result_pub = self.create_lifecycle_publisher(GroundingResult, "grounding_result", RESULTS_QOS)
        self._target_pub = self.create_lifecycle_publisher(Target, "target", 10)
        # Camera frames and tracks arrive on an internal node with a single-threaded executor of its own
        # (stream_spinner.py: why); frames are decoded and buffered on the input's thread, and only those
        # the sampling rate keeps. Topic names are resolved here, with this node's namespace and remaps.
        self._streams = StreamSpinner(self)
        self._images = ImageInput(
            self._streams.node, self._on_frames, p.image_transport, p.image_depth, p.image_reliability,
            topic=self.resolve_topic_name(image_topic(p.image_transport)),
        )  # fmt: skip
        self._streams.node.create_subscription(
            TrackedObjectArray, self.resolve_topic_name("tracks"), self._on_tracks, 30
        )
        self._services_made = [
            self.create_service(GroundService, "ground", self._on_ground_service, callback_group=self._query_group),
            self.create_service(Trigger, "~/stop_target", self._on_stop_target),
        ]
        self._action_server = ActionServer(
            self,
            GroundAction,
            "ground",
            execute_callback=self._on_ground_action,
            goal_callback=lambda _goal: GoalResponse.ACCEPT,  # refusals are answered in the result
            cancel_callback=lambda _handle: CancelResponse.ACCEPT,
            callback_group=self._query_group,
        )
        self._watchdog = NoPublisherWatchdog(self, [self._images.subscription], after_s=p.no_image_warning_s)
        if p.diagnostics_period_s > 0:
            self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
            self._diag_timer = self.create_timer(p.diagnostics_period_s, self._publish_diagnostics)
        files = ", ".join(f"{k}={v}" for k, v in self._model_files.items() if k != "backend")
        self.get_logger().info(f"configured: backend {p.backend}, {files}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        from stvg_ros.grounding.backends import make_backend
        from stvg_ros.grounding.models import manifest_note
        from stvg_ros.grounding.pipeline import GroundingPipeline
        from stvg_ros.grounding.settings import grounding_settings

        started = time.monotonic()
        try:
            backend, kwargs, config = grounding_settings(vars(self.params))
            self._backend = make_backend(backend, **kwargs)
            self._pipeline = GroundingPipeline(self._backend, config)
        except Exception as exc:  # ModelLoadError (mismatched mmproj, ...) and anything the loader raises
            self.get_logger().error(f"activate failed: could not load the model: {exc}")
            self._backend = self._pipeline = None
            return TransitionCallbackReturn.FAILURE
        self._queue = QueryQueue(self._run_job, self.params.queue_size)
        self._active = True
        self.get_logger().info(
            f"active: model loaded in {time.monotonic() - started:.1f} s; serving {self.resolve_service_name('ground')} "
            "(service and action)"
        )
        if note := manifest_note(self.params.model):
            self.get_logger().warning(f"model {self.params.model}: {note}")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = False
        self._stop_following()
        if self._queue is not None:
            self._queue.stop()
            self._queue = None
        self._pipeline = None
        if self._backend is not None:
            self._backend.close()
            self._backend = None
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._destroy_entities()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._active:
            self.on_deactivate(state)
        self._destroy_entities()
        return TransitionCallbackReturn.SUCCESS

    def destroy_node(self) -> None:
        self._active = False
        if self._queue is not None:
            self._queue.stop(timeout_s=2.0)
            self._queue = None
        super().destroy_node()

    def _destroy_entities(self) -> None:
        if self._watchdog is not None:
            self._watchdog.destroy()
        if self._diag_timer is not None:
            self.destroy_timer(self._diag_timer)
        if self._diag_pub is not None:
            self.destroy_publisher(self._diag_pub)
        self._diag_pub = self._diag_timer = None
        if self._action_server is not None:
            self._action_server.destroy()
        if self._images is not None:
            self._images.destroy()
            self._images = None
        if self._streams is not None:
            self._streams.destroy()  # and with its node, the tracks subscription
            self._streams = None
        for srv in self._services_made:
            self.destroy_service(srv)
        for pub in (self._result_pub, self._target_pub):
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
        self._watchdog = self._action_server = self._result_pub = self._target_pub = self._buffer = None
        self._services_made = []

    # ---------------------------------------------------------------- streams

    def _on_frames(self, frames: list[ReceivedFrame]) -> None:
        """Input thread: buffer the frames the sampling rate keeps (the others are not even decoded)."""
        buffer = self._buffer
        if not self._active or buffer is None:
            return
        for frame in frames:
            msg = frame.msg
            stamp_ns = stamp_to_ns(msg.header.stamp)
            self._last_image = time.monotonic()
            if not buffer.wants_frame(stamp_ns):
                continue
            try:
                rgb = decode_ros_image(msg)
            except ImageDecodeError as exc:
                self._images.count_decode_error()
                now = time.monotonic()
                if now - self._decode_warned > 5.0:  # a broken camera must not flood the log
                    self._decode_warned = now
                    self.get_logger().warning(f"dropping an image that cannot be decoded: {exc}")
                continue
            self._frame_id = msg.header.frame_id
            buffer.add_frame(stamp_ns, rgb, frame_id=msg.header.frame_id)

    def _on_tracks(self, msg) -> None:
        if not self._active:
            return
        stamp_ns = stamp_to_ns(msg.header.stamp)
        tracks = tracks_from_msg(msg)
        self.counts["tracks"] += 1
        self._buffer.add_tracks(stamp_ns, tracks, frame_id=msg.header.frame_id)
        if (update := self._follower.update(stamp_ns, tracks)) is not None:
            self._publish_target(update, msg.header)

    def _publish_diagnostics(self) -> None:
        buffer = self._buffer.stats() if self._buffer is not None else {}
        since_image = time.monotonic() - self._last_image if self._last_image else None
        images = self._images.counts() if self._images is not None else {}
        values = {
            **{k: str(v) for k, v in images.items()},
            **{k: str(v) for k, v in self.counts.items()},
            "buffer_frames": str(buffer.get("frames", 0)),
            "buffer_missed_samples": str(buffer.get("missed_samples", 0)),
            "buffer_track_frames": str(buffer.get("track_frames", 0)),
            "buffer_mb": f"{buffer.get('nbytes', 0) / 2**20:.1f}",
            "seconds_since_image": f"{since_image:.1f}" if since_image is not None else "never",
            "following": str(self._follower.target_id if self._follower.target_id is not None else -1),
            "model": str(self.params.model),
        }
        if not self._active:
            level, message = DiagnosticStatus.OK, "inactive (lifecycle)"
        elif since_image is None or since_image > max(5.0, 3 * self.params.diagnostics_period_s):
            level, message = DiagnosticStatus.WARN, "no images"
        else:
            level, message = DiagnosticStatus.OK, "ready"
        self._diag_pub.publish(diagnostic_array(self, "grounding", level, message, values))

    def _publish_target(self, update: TargetUpdate, header=None) -> None:
        if header is None:  # not tied to a camera frame (stop request, new answer)
            header = now_header(self, self._frame_id)
        box = update.box if update.box is not None else np.zeros(4, np.float32)
        self._target_pub.publish(
            Target(
                header=header,
                target_id=int(update.target_id),
                query=update.query,
                status=STATUS_CODES[update.status],
                seconds_since_seen=float(update.seconds_since_seen),
                x1=float(box[0]),
                y1=float(box[1]),
                x2=float(box[2]),
                y2=float(box[3]),
            )
        )
        if update.status == "lost":
            self.get_logger().info(
                f"target {update.target_id} unseen for {update.seconds_since_seen:.1f} s: lost, stopped following"
            )

    def _stop_following(self) -> TargetUpdate | None:
        update = self._follower.stop()
        if update is not None and self._target_pub is not None:
            self._publish_target(update)
        return update

    def _on_stop_target(self, request, response):
        update = self._stop_following()
        response.success = update is not None
        response.message = f"stopped following target {update.target_id}" if update else "no target is being followed"
        return response

    # ---------------------------------------------------------------- queries

    def _submit(self, query: str, window_s: float, reasoning_flag: int) -> tuple[QueryJob | None, str]:
        """Queue a query: (job, "") or (None, why it cannot run). Never blocks."""
        self.counts["queries"] += 1
        job, error = self._queue_query(query, window_s, reasoning_flag)
        if job is None:
            self.counts["queries_refused"] += 1
        return job, error

    def _queue_query(self, query: str, window_s: float, reasoning_flag: int) -> tuple[QueryJob | None, str]:
        from stvg_ros.grounding.pipeline import GroundingRequest

        if not self._active or self._queue is None:
            return None, "the grounding node is not active (lifecycle); activate it and ask again"
        if "\ufffd" in query:  # rclpy decodes strings with errors="replace": the sender's bytes were not UTF-8
            return None, "bad query: the query is not valid UTF-8 (undecodable bytes arrived as U+FFFD)"
        try:
            normalize_query(query)  # refuse bad input before it takes a queue slot
        except QueryError as exc:
            return None, f"bad query: {exc}"
        if problem := check_window(window_s):
            return None, problem
        if self._buffer is None or len(self._buffer) == 0:
            topic = self.resolve_topic_name(image_topic(self.params.image_transport))
            return None, f"no camera frames received yet on {topic}; nothing to ground"
        reasoning = reasoning_for(reasoning_flag, self.params.reasoning)
        request = GroundingRequest(query=query, window_s=float(window_s), reasoning=reasoning)
        job = QueryJob(request=request, snapshot=self._buffer.snapshot(float(window_s)))
        if not self._queue.submit(job):
            return None, (
                f"busy: {self.params.queue_size + 1} queries are in flight (1 running + queue_size "
                f"{self.params.queue_size} waiting); ask again later"
            )
        return job, ""

    def _run_job(self, job: QueryJob) -> GroundingResult:
        """Worker thread: ground, publish the answer, follow its target (even if the caller gave up)."""
        outcome = self._pipeline.ground(job.snapshot, job.request, progress=job.report, cancel=job.cancel)
        result = result_msg(outcome, str(job.request.query), self._frame_id, self.get_clock().now().to_msg())
        self._result_pub.publish(result)
        self.get_logger().info(f'query "{outcome.query}": {result.message} ({outcome.timings["total_ms"] / 1e3:.1f} s)')
        if outcome.success:
            seen_ns, box = last_sighting(job.snapshot, outcome.target_id, default_ns=outcome.end_ns)
            if (previous := self._follower.follow(outcome.target_id, outcome.query, seen_ns, box)) is not None:
                self._publish_target(previous)
        else:
            self._stop_following()
        return result

    def _answer(self, query: str, job: QueryJob | None, error: str) -> GroundingResult:
        """The result for the caller: the job's, or a failure that says why there is none."""
        if job is not None and job.outcome is not None:
            return job.outcome
        result = GroundingResult(query=query, success=False, target_id=-1, model=self._model_files.get("name", ""))
        result.message = error or (job.error if job is not None else "") or "no answer"
        result.header.stamp = self.get_clock().now().to_msg()
        result.header.frame_id = self._frame_id
        return result

    def _on_ground_service(self, request, response):
        deadline = time.monotonic() + self.params.query_timeout_s
        job, error = self._submit(request.query, request.window_seconds, request.reasoning)
        if job is not None and not job.done.wait(timeout=max(0.0, deadline - time.monotonic())):
            job.cancel.set()
            job, error = None, f"timed out after {self.params.query_timeout_s:.0f} s (query_timeout_s); cancelled"
        response.result = self._answer(request.query, job, error)
        return response

    def _on_ground_action(self, goal_handle):
        goal = goal_handle.request
        deadline = time.monotonic() + self.params.query_timeout_s
        job, error = self._submit(goal.query, goal.window_seconds, goal.reasoning)
        while job is not None:
            finished = job.done.wait(timeout=0.05)
            for stage, progress in job.take_updates():
                goal_handle.publish_feedback(GroundAction.Feedback(stage=stage, progress=float(progress)))
            if finished:
                break
            if goal_handle.is_cancel_requested:
                job.cancel.set()
            if time.monotonic() > deadline:
                job.cancel.set()
                job, error = None, f"timed out after {self.params.query_timeout_s:.0f} s (query_timeout_s); cancelled"
        result = self._answer(goal.query, job, error)
        if goal_handle.is_cancel_requested:
            result.success, result.target_id = False, -1
            result.message = result.message if "cancel" in result.message else f"cancelled ({result.message})"
            goal_handle.canceled()
        elif result.success:
            goal_handle.succeed()
        else:
            goal_handle.abort()
        return GroundAction.Result(result=result)


def result_msg(outcome, query: str, frame_id: str, now) -> GroundingResult:
    """GroundingOutcome (pipeline) -> GroundingResult message; `now` stamps the answer."""
    msg = GroundingResult(
        query=query, success=bool(outcome.success), message=str(outcome.message or ""), model=str(outcome.model)
    )
    msg.header.stamp, msg.header.frame_id = now, frame_id
    msg.target_id = int(outcome.target_id) if outcome.success and outcome.target_id is not None else -1
    for name in ("start", "end", "clip_start"):
        value = getattr(outcome, f"{name}_ns", None)
        if value is not None:
            setattr(msg, name, ns_to_stamp(value))
    msg.start_offset = float(outcome.start_s or 0.0)
    msg.end_offset = float(outcome.end_s or 0.0)
    msg.confidence = float(outcome.confidence or 0.0)
    msg.reasoning = str(outcome.reasoning or "")
    msg.raw_answer = str(outcome.raw or "")
    msg.tube = [
        TubeBox(
            header=Header(stamp=ns_to_stamp(entry.stamp_ns), frame_id=str(entry.frame_id or frame_id)),
            x1=float(entry.xyxy[0]),
            y1=float(entry.xyxy[1]),
            x2=float(entry.xyxy[2]),
            y2=float(entry.xyxy[3]),
            interpolated=bool(entry.interpolated),
        )
        for entry in (outcome.tube or [])
    ]
    msg.sampled_stamps = [ns_to_stamp(s) for s in (outcome.sampled_stamps_ns or [])]
    return msg


def last_sighting(snapshot, target_id: int, default_ns: int | None) -> tuple[int, np.ndarray | None]:
    """(stamp, box) of the newest frame in `snapshot` where `target_id` was detected."""
    for frame in reversed(list(getattr(snapshot, "track_frames", []) or [])):
        tracks = frame.tracks
        rows = np.flatnonzero((tracks.track_id == target_id) & tracks.detected)
        if len(rows):
            return int(frame.stamp_ns), tracks.xyxy[rows[0]].copy()
    return int(default_ns or 0), None


def _check_params(p: GroundingParams) -> list[str]:
    problems = []
    if p.num_frames < 1:
        problems.append(f"num_frames must be >= 1, got {p.num_frames}")
    if p.buffer_seconds <= 0 or p.buffer_sample_fps <= 0 or p.buffer_max_mb <= 0:
        problems.append("buffer_seconds, buffer_sample_fps and buffer_max_mb must be > 0")
    if p.query_timeout_s <= 0:
        problems.append(f"query_timeout_s must be > 0, got {p.query_timeout_s}")
    if p.queue_size < 0:
        problems.append(f"queue_size must be >= 0, got {p.queue_size}")
    if p.backend == "http" and not p.endpoint:
        problems.append("backend http needs `endpoint` (e.g. http://gpu-server:8080/v1)")
    return problems


def main(args: list[str] | None = None) -> int:
    """`ros2 run stvg_ros grounding_node`: one node, self-activating, spun until SIGINT/SIGTERM."""
    return run_lifecycle_node(GroundingNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
