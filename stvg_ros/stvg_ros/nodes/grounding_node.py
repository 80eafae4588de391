"""grounding node: answers "which object, and when?" over the camera history, then follows the target.

Subscribes `image` (sensor_msgs/Image, or `image/compressed` with image_transport=compressed) and
`tracks` (stvg_ros_msgs/TrackedObjectArray) into a ClipBuffer. Serves `ground` as a service
(stvg_ros_msgs/srv/Ground) and as an action (stvg_ros_msgs/action/Ground: feedback stage +
progress, cancel) through one bounded queue; a query that finds the queue full is answered "busy"
at once. Publishes every answer on `grounding_result`, then the target's live box on `target` for
every new tracks message until `~/stop_target`, a new answer, or the track is lost for longer than
`target_lost_timeout_s` (one STATUS_LOST message says so). Publishes `/diagnostics` (images and
tracks received, buffer contents, queries) every `diagnostics_period_s`.

When the camera stops: source time stops with it, so a target is also reported lost when no tracks
message at all came for max(target_lost_timeout_s, no_image_warning_s) of wall time; a query for
the last `window_seconds` is refused while no frame came for longer than that window (and than
no_image_warning_s), since the buffer holds nothing of that time; a query over the whole buffer
(window 0) is answered from the buffered history and says how old its newest frame is.

Several cameras, one model: with `cameras: [front, rear]` every name above is per camera and
prefixed with its name (front/image, front/tracks, front/ground, front/grounding_result, front/target,
~/front/stop_target, a diagnostics status each); each camera has its own history and followed target,
and all share the one model and its query queue. Results and targets carry the camera's name
(`camera`), since track IDs are per camera. The graph (`stvg-ros up --cameras`, the launch file's
`cameras`) runs one tracker and overlay per camera in <namespace>/<camera> next to this node.

Lifecycle: configure reads the parameters and checks that the model files (and, with `sam2_refine`,
the `sam2` package and checkpoint) exist (a missing one fails the transition with a message that
names it); activate loads the model (and SAM2); deactivate cancels the query in flight (its caller
is told the node was deactivated), fails the waiting ones and frees the model.
The node configures and activates itself when `autostart` is true (the launch file sets it false and
drives the transitions).

Parameters (params.GroundingParams): num_frames, max_new_tokens, reasoning, query_timeout_s and
target_lost_timeout_s are live: set on the running node they apply from the next query (a query in
flight keeps its settings); the others are refused while configured, with the reason
(ros_params.ParameterChanges).
"""

from __future__ import annotations

import dataclasses
import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from std_srvs.srv import Trigger

from stvg_ros.core.image_codec import ImageDecodeError
from stvg_ros.grounding.backends import make_backend, resolve_model_files
from stvg_ros.grounding.backends.models import manifest_note
from stvg_ros.grounding.pipeline import GroundingPipeline, GroundingRequest
from stvg_ros.grounding.query_queue import (
    QueryJob,
    QueryQueue,
    TargetFollower,
    TargetUpdate,
    last_sighting,
    query_problem,
    reasoning_for,
)
from stvg_ros.nodes.image_input import ImageInput, ReceivedFrame
from stvg_ros.nodes.lifecycle import run_lifecycle_node
from stvg_ros.nodes.messages import (
    decode_ros_image,
    diagnostic_array,
    now_header,
    result_msg,
    stamp_to_ns,
    target_msg,
    tracks_from_msg,
)
from stvg_ros.nodes.params import GroundingParams
from stvg_ros.nodes.qos import NoPublisherWatchdog, image_topic
from stvg_ros.nodes.ros_params import ParameterChanges, declare_parameters, read_parameters
from stvg_ros.nodes.stream_spinner import StreamSpinner
from stvg_ros.perception.buffer import ClipBuffer
from stvg_ros_msgs.action import Ground as GroundAction
from stvg_ros_msgs.msg import GroundingResult, Target, TrackedObjectArray
from stvg_ros_msgs.srv import Ground as GroundService

# --------------------------------------------------------------------------------------------
# The node


RESULTS_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


class CameraChannel:
    """One camera's part of the grounding node: its history (ClipBuffer), its query interface (service,
    action, stop_target), its answers and its followed target. `name` "" is the single-camera node
    (image, tracks, ground, ...); another name prefixes every name (NAME/image, NAME/ground, ...).
    Every channel shares the node's one model and query queue."""

    def __init__(self, node: GroundingNode, name: str, p: GroundingParams) -> None:
        self.node, self.name = node, name
        self.camera = name  # written into results and targets; the tracks' own `camera` when empty
        prefix = f"{name}/" if name else ""
        self.buffer = ClipBuffer.from_config(p.buffer_config())
        self.follower = TargetFollower(p.target_lost_timeout_s)
        self.frame_id = ""
        self.last_image = 0.0  # time.monotonic() of the last decoded image
        self.tracks_received = 0
        self._decode_warned = 0.0
        self.image_topic = node.resolve_topic_name(prefix + image_topic(p.image_transport))
        self.result_pub = node.create_lifecycle_publisher(GroundingResult, prefix + "grounding_result", RESULTS_QOS)
        self.target_pub = node.create_lifecycle_publisher(Target, prefix + "target", 10)
        # Camera frames and tracks arrive on the node's stream spinner (stream_spinner.py: why); frames
        # are decoded and buffered on the input's thread, and only those the sampling rate keeps.
        streams = node.streams.node
        self.images = ImageInput(
            streams, self._on_frames, p.image_transport, p.image_depth, p.image_reliability, topic=self.image_topic
        )
        streams.create_subscription(TrackedObjectArray, node.resolve_topic_name(prefix + "tracks"), self._on_tracks, 30)
        self.services = [
            node.create_service(GroundService, prefix + "ground", self._on_ground_service, callback_group=node.query_group),
            node.create_service(Trigger, f"~/{prefix}stop_target", self._on_stop_target),
        ]  # fmt: skip
        self.action_server = ActionServer(
            node,
            GroundAction,
            prefix + "ground",
            execute_callback=self._on_ground_action,
            goal_callback=lambda _goal: GoalResponse.ACCEPT,  # refusals are answered in the result
            cancel_callback=lambda _handle: CancelResponse.ACCEPT,
            callback_group=node.query_group,
        )
        self.watchdog = NoPublisherWatchdog(node, [self.images.subscription], after_s=p.no_image_warning_s)

    @property
    def label(self) -> str:
        """How logs name this camera."""
        return f"camera {self.name!r}: " if self.name else ""

    def destroy(self) -> None:
        """Destroy this channel's entities (the tracks subscription goes with the stream spinner's node)."""
        node = self.node
        self.watchdog.destroy()
        self.action_server.destroy()
        self.images.destroy()
        for srv in self.services:
            node.destroy_service(srv)
        for pub in (self.result_pub, self.target_pub):
            node.destroy_lifecycle_publisher(pub)
        self.services = []

    # ---------------------------------------------------------------- streams

    def _on_frames(self, frames: list[ReceivedFrame]) -> None:
        """Input thread: buffer the frames the sampling rate keeps (the others are not even decoded)."""
        if not self.node.active:
            return
        for frame in frames:
            msg = frame.msg
            stamp_ns = stamp_to_ns(msg.header.stamp)
            self.last_image = time.monotonic()
            if not self.buffer.wants_frame(stamp_ns):
                continue
            try:
                rgb = decode_ros_image(msg)
            except ImageDecodeError as exc:
                self.images.count_decode_error()
                now = time.monotonic()
                if now - self._decode_warned > 5.0:  # a broken camera must not flood the log
                    self._decode_warned = now
                    self.node.get_logger().warning(f"{self.label}dropping an image that cannot be decoded: {exc}")
                continue
            self.frame_id = msg.header.frame_id
            self.buffer.add_frame(stamp_ns, rgb, frame_id=msg.header.frame_id)

    def _on_tracks(self, msg) -> None:
        if not self.node.active:
            return
        stamp_ns = stamp_to_ns(msg.header.stamp)
        tracks = tracks_from_msg(msg)
        self.tracks_received += 1
        if not self.name and msg.camera:
            self.camera = msg.camera
        self.buffer.add_tracks(stamp_ns, tracks, frame_id=msg.header.frame_id)
        if (update := self.follower.update(stamp_ns, tracks)) is not None:
            self.publish_target(update, msg.header)

    def check_tracks_silence(self, silence_s: float) -> None:
        """The followed target is lost once no tracks message came for `silence_s` of wall time."""
        if (update := self.follower.check_silence(silence_s)) is not None:
            self.publish_target(update)

    def frame_counts(self) -> dict[str, int]:
        """Camera frames received and lost by cause (ImageInput.counts), the frames the buffer holds and
        the sampling slots it missed."""
        buffer = self.buffer.stats()
        return {**self.images.counts(), "buffer_frames": buffer["frames"],
                "buffer_missed_samples": buffer["missed_samples"]}  # fmt: skip

    # ---------------------------------------------------------------- target

    def publish_target(self, update: TargetUpdate, header=None) -> None:
        node = self.node
        if not node.context.ok():  # SIGINT/SIGTERM shut the context down: destroy_node stops following
            return  # silently (publishing would raise RCLError and fail the process's exit)
        if header is None:  # not tied to a camera frame (stop request, new answer)
            header = now_header(node, self.frame_id)
        self.target_pub.publish(target_msg(update, header, self.camera))
        if update.status == "lost":
            node.get_logger().info(
                f"{self.label}target {update.target_id} unseen for {update.seconds_since_seen:.1f} s: "
                "lost, stopped following"
            )

    def stop_following(self) -> TargetUpdate | None:
        update = self.follower.stop()
        if update is not None:
            self.publish_target(update)
        return update

    def _on_stop_target(self, request, response):
        update = self.stop_following()
        response.success = update is not None
        response.message = f"stopped following target {update.target_id}" if update else "no target is being followed"
        return response

    # ---------------------------------------------------------------- queries

    def _on_ground_service(self, request, response):
        node = self.node
        deadline = time.monotonic() + node.params.query_timeout_s
        job, error = node.submit(self, request.query, request.window_seconds, request.reasoning)
        if job is not None and not job.done.wait(timeout=max(0.0, deadline - time.monotonic())):
            job.cancel.set()
            job, error = None, f"timed out after {node.params.query_timeout_s:.0f} s (query_timeout_s); cancelled"
        response.result = node.answer(self, request.query, job, error)
        return response

    def _on_ground_action(self, goal_handle):
        node = self.node
        goal = goal_handle.request
        deadline = time.monotonic() + node.params.query_timeout_s
        job, error = node.submit(self, goal.query, goal.window_seconds, goal.reasoning)
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
                job, error = None, f"timed out after {node.params.query_timeout_s:.0f} s (query_timeout_s); cancelled"
        result = node.answer(self, goal.query, job, error)
        if goal_handle.is_cancel_requested:
            result.success, result.target_id = False, -1
            result.message = result.message if "cancel" in result.message else f"cancelled ({result.message})"
            goal_handle.canceled()
        elif result.success:
            goal_handle.succeed()
        else:
            goal_handle.abort()
        return GroundAction.Result(result=result)


class GroundingNode(LifecycleNode):
    """Thin ROS shell around one GroundingPipeline (one model) and a CameraChannel per camera (see the
    module docstring)."""

    def __init__(self, node_name: str = "grounding_node", **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        self.params: GroundingParams = declare_parameters(self, GroundingParams)
        self.query_group = ReentrantCallbackGroup()  # queries wait concurrently
        self.active = False
        self.streams: StreamSpinner | None = None
        self.channels: dict[str, CameraChannel] = {}
        self._model_files: dict = {}
        self._pipeline = None
        self._backend = None
        self._queue: QueryQueue | None = None
        self._diag_pub = self._diag_timer = None
        self._silence_timer = None
        self.counts = {"queries": 0, "queries_refused": 0}  # over every camera
        self._parameter_changes = ParameterChanges(self, GroundingParams, self._apply_parameters)

    @property
    def executor_threads(self) -> int:
        """Threads this node needs in a MultiThreadedExecutor: each query in flight holds one while it
        waits for its answer, plus a refusal, the action's bookkeeping and the lifecycle services (the
        camera and tracks streams have their own executor: StreamSpinner)."""
        return max(0, self.params.queue_size) + 3 + max(1, len(self.params.cameras))

    # ---------------------------------------------------------------- lifecycle

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.params = p = read_parameters(self, GroundingParams)
            p.check()
            self._model_files = resolve_model_files(p.backend_settings(), backend=p.backend)
            p.grounding_config()  # Sam2Unavailable when sam2_refine is on without sam2 or a checkpoint
        except Exception as exc:  # a missing model file, a bad parameter: fail the transition, say why
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        # Topic names are resolved in the channels, with this node's namespace and remaps.
        self.streams = StreamSpinner(self)
        self.channels = {name: CameraChannel(self, name, p) for name in (p.cameras or [""])}
        # Tracks that stop altogether (camera or tracker gone) end the following too (module docstring).
        self._silence_timer = self.create_timer(0.2, self._check_tracks_silence)
        if p.diagnostics_period_s > 0:
            self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
            self._diag_timer = self.create_timer(p.diagnostics_period_s, self._publish_diagnostics)
        files = ", ".join(f"{k}={v}" for k, v in self._model_files.items() if k != "backend")
        cameras = f"; cameras {', '.join(p.cameras)}" if p.cameras else ""
        self.get_logger().info(f"configured: backend {p.backend}, {files}{cameras}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        started = time.monotonic()
        p = self.params
        try:
            self._backend = make_backend(p.backend, p.backend_settings())
            self._pipeline = GroundingPipeline(self._backend, p.grounding_config())
        except Exception as exc:  # ModelLoadError (mismatched mmproj, ...) and anything the loader raises
            self.get_logger().error(f"activate failed: could not load the model: {exc}")
            self._backend = self._pipeline = None
            return TransitionCallbackReturn.FAILURE
        self._queue = QueryQueue(self._run_job, self.params.queue_size)
        self.active = True
        served = ", ".join(self.resolve_service_name(f"{name}/ground" if name else "ground") for name in self.channels)
        self.get_logger().info(
            f"active: model loaded in {time.monotonic() - started:.1f} s; serving {served} (service and action)"
        )
        if note := manifest_note(self.params.model):
            self.get_logger().warning(f"model {self.params.model}: {note}")
        return super().on_activate(state)

    def _apply_parameters(self, changes: dict) -> None:
        """Live parameter changes (ParameterChanges, configured node): used from the next query on."""
        self.params = p = dataclasses.replace(self.params, **changes)
        for channel in self.channels.values():
            channel.follower.lost_timeout_ns = int(p.target_lost_timeout_s * 1e9)
        if (pipeline := self._pipeline) is not None:
            pipeline.config = dataclasses.replace(
                pipeline.config, num_frames=p.num_frames, max_new_tokens=p.max_new_tokens, reasoning=p.reasoning,
                timeout_s=p.query_timeout_s,
            )  # fmt: skip
        if (backend := self._backend) is not None and hasattr(backend, "timeout_s"):
            backend.timeout_s = float(p.query_timeout_s)  # the http backend's bound on one request

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release_model()
        return super().on_deactivate(state)

    def _release_model(self, timeout_s: float = 10.0) -> None:
        """Stop serving: cancel the query in flight, fail the waiting ones, then free the model."""
        self.active = False
        for channel in self.channels.values():
            channel.stop_following()
        queue, self._queue = self._queue, None
        if queue is not None and not queue.stop(timeout_s=timeout_s):
            # Freeing the model under a running inference would crash the process: leave it to the OS.
            self.get_logger().error(f"a query did not stop within {timeout_s:.0f} s; the model is not freed")
            self._backend = self._pipeline = None
            return
        self._pipeline = None
        backend, self._backend = self._backend, None
        if backend is not None:
            backend.close()

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._destroy_entities()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self.active:
            self.on_deactivate(state)
        self._destroy_entities()
        return TransitionCallbackReturn.SUCCESS

    def destroy_node(self) -> None:
        """Stop the node's threads and free the model before the node goes: a model left for the
        interpreter's exit is freed after the libraries it needs (llama.cpp then crashes the process)."""
        self._release_model(timeout_s=5.0)
        self._destroy_entities()
        super().destroy_node()

    def _destroy_entities(self) -> None:
        for timer in (self._diag_timer, self._silence_timer):
            if timer is not None:
                self.destroy_timer(timer)
        if self._diag_pub is not None:
            self.destroy_publisher(self._diag_pub)
        self._diag_pub = self._diag_timer = self._silence_timer = None
        channels, self.channels = self.channels, {}
        for channel in channels.values():
            channel.destroy()
        if self.streams is not None:
            self.streams.destroy()  # and with its node, the tracks subscriptions
            self.streams = None

    # ---------------------------------------------------------------- streams and diagnostics

    def _check_tracks_silence(self) -> None:
        """Timer: a followed target is lost once no tracks message came for the silence limit."""
        if not self.active:
            return
        silence_s = max(self.params.target_lost_timeout_s, self.params.no_image_warning_s)
        for channel in list(self.channels.values()):
            channel.check_tracks_silence(silence_s)

    def frame_counts(self) -> dict[str, int]:
        """Camera frames received and lost by cause, frames buffered and sampling slots missed, summed
        over the cameras (empty while unconfigured)."""
        totals: dict[str, int] = {}
        for channel in list(self.channels.values()):
            for key, value in channel.frame_counts().items():
                totals[key] = totals.get(key, 0) + int(value)
        return totals

    def _publish_diagnostics(self) -> None:
        for channel in list(self.channels.values()):
            buffer = channel.buffer.stats()
            since_image = time.monotonic() - channel.last_image if channel.last_image else None
            values = {
                **{k: str(v) for k, v in channel.frame_counts().items()},
                **{k: str(v) for k, v in self.counts.items()},
                "tracks": str(channel.tracks_received),
                "buffer_track_frames": str(buffer.get("track_frames", 0)),
                "buffer_mb": f"{buffer.get('nbytes', 0) / 2**20:.1f}",
                "seconds_since_image": f"{since_image:.1f}" if since_image is not None else "never",
                "following": str(channel.follower.target_id if channel.follower.target_id is not None else -1),
                "model": str(self.params.model),
            }
            if not self.active:
                level, message = DiagnosticStatus.OK, "inactive (lifecycle)"
            elif since_image is None or since_image > max(5.0, 3 * self.params.diagnostics_period_s):
                level, message = DiagnosticStatus.WARN, "no images"
            else:
                level, message = DiagnosticStatus.OK, "ready"
            component = f"grounding {channel.name}" if channel.name else "grounding"
            self._diag_pub.publish(diagnostic_array(self, component, level, message, values))

    # ---------------------------------------------------------------- queries

    def submit(self, channel: CameraChannel, query: str, window_s: float, reasoning_flag: int):
        """Queue a query on `channel`'s history: (job, "") or (None, why it cannot run). Never blocks."""
        self.counts["queries"] += 1
        job, error = self._queue_query(channel, query, window_s, reasoning_flag)
        if job is None:
            self.counts["queries_refused"] += 1
        return job, error

    def _queue_query(self, channel: CameraChannel, query: str, window_s: float, reasoning_flag: int):
        queue = self._queue
        if not self.active or queue is None:
            return None, "the grounding node is not active (lifecycle); activate it and ask again"
        if problem := query_problem(query, window_s):
            return None, problem
        topic = channel.image_topic
        if len(channel.buffer) == 0:
            return None, f"no camera frames received yet on {topic}; nothing to ground"
        # A stopped camera: the buffer's newest frames are old; the last N seconds it holds are not the
        # last N seconds of the scene (module docstring).
        since_s = time.monotonic() - channel.last_image if channel.last_image else 0.0
        note = ""
        if window_s > 0 and since_s > max(float(window_s), self.params.no_image_warning_s):
            return None, (
                f"no camera frames for {since_s:.1f} s on {topic}: the camera may have stopped, and the buffer holds "
                f"nothing of the last {window_s:g} s asked for; ask again when frames arrive (window_seconds 0 "
                "searches the whole buffered history)"
            )
        if self.params.no_image_warning_s > 0 and since_s > self.params.no_image_warning_s:
            note = f"no camera frames for {since_s:.1f} s on {topic}: answered from the buffered history"
        reasoning = reasoning_for(reasoning_flag, self.params.reasoning)
        request = GroundingRequest(query=query, window_s=float(window_s), reasoning=reasoning)
        job = QueryJob(request=request, snapshot=channel.buffer.snapshot(float(window_s)), note=note, camera=channel.name)
        if not queue.submit(job):
            return None, (
                f"busy: {self.params.queue_size + 1} queries are in flight (1 running + queue_size "
                f"{self.params.queue_size} waiting"
                + (f", over {len(self.channels)} cameras" if len(self.channels) > 1 else "")
                + "); ask again later"
            )
        return job, ""

    def _run_job(self, job: QueryJob) -> GroundingResult:
        """Worker thread: ground, publish the answer, follow its target (even if the caller gave up)."""
        channel = self.channels[job.camera]
        outcome = self._pipeline.ground(job.snapshot, job.request, progress=job.report, cancel=job.cancel)
        if not self.active and outcome.finish_reason == "cancelled":  # cancelled by _release_model
            outcome.message = (
                "cancelled: the grounding node was deactivated (lifecycle) while the query ran; "
                "activate it and ask again"
            )
        elif job.note:
            outcome.message = f"{outcome.message}; {job.note}" if outcome.message else job.note
        now = self.get_clock().now().to_msg()
        result = result_msg(outcome, str(job.request.query), channel.frame_id, now, channel.camera)
        if self.context.ok():  # not when the query was cancelled by a shutdown (SIGINT/SIGTERM)
            channel.result_pub.publish(result)
        self.get_logger().info(
            f'{channel.label}query "{outcome.query}": {result.message} ({outcome.timings["total_ms"] / 1e3:.1f} s)'
        )
        if outcome.success:
            seen_ns, box = last_sighting(job.snapshot, outcome.target_id, default_ns=outcome.end_ns)
            if (previous := channel.follower.follow(outcome.target_id, outcome.query, seen_ns, box)) is not None:
                channel.publish_target(previous)
        else:
            channel.stop_following()
        return result

    def answer(self, channel: CameraChannel, query: str, job: QueryJob | None, error: str) -> GroundingResult:
        """The result for the caller: the job's, or a failure that says why there is none."""
        if job is not None and job.outcome is not None:
            return job.outcome
        result = GroundingResult(
            camera=channel.camera, query=query, success=False, target_id=-1, model=self._model_files.get("name", "")
        )
        result.message = error or (job.error if job is not None else "") or "no answer"
        result.header.stamp = self.get_clock().now().to_msg()
        result.header.frame_id = channel.frame_id
        return result


def main(args: list[str] | None = None) -> int:
    """`ros2 run stvg_ros grounding_node`: one node, self-activating, spun until SIGINT/SIGTERM."""
    return run_lifecycle_node(GroundingNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
