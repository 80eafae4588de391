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
        self._silence_timer = None
        self._last_image = 0.0  # time.monotonic() of the last decoded image
        self.counts = {"tracks": 0, "queries": 0, "queries_refused": 0}
        self._parameter_changes = ParameterChanges(self, GroundingParams, self._apply_parameters)

    @property
    def executor_threads(self) -> int:
        """Threads this node needs in a MultiThreadedExecutor: each query in flight holds one while it
        waits for its answer, plus a refusal, the action's bookkeeping and the lifecycle services (the
        camera and tracks streams have their own executor: StreamSpinner)."""
        return max(0, self.params.queue_size) + 4

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
        self._buffer = ClipBuffer.from_config(p.buffer_config())
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
        # Tracks that stop altogether (camera or tracker gone) end the following too (module docstring).
        self._silence_timer = self.create_timer(0.2, self._check_tracks_silence)
        if p.diagnostics_period_s > 0:
            self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
            self._diag_timer = self.create_timer(p.diagnostics_period_s, self._publish_diagnostics)
        files = ", ".join(f"{k}={v}" for k, v in self._model_files.items() if k != "backend")
        self.get_logger().info(f"configured: backend {p.backend}, {files}")
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
        self._active = True
        self.get_logger().info(
            f"active: model loaded in {time.monotonic() - started:.1f} s; serving {self.resolve_service_name('ground')} "
            "(service and action)"
        )
        if note := manifest_note(self.params.model):
            self.get_logger().warning(f"model {self.params.model}: {note}")
        return super().on_activate(state)

    def _apply_parameters(self, changes: dict) -> None:
        """Live parameter changes (ParameterChanges, configured node): used from the next query on."""
        self.params = p = dataclasses.replace(self.params, **changes)
        self._follower.lost_timeout_ns = int(p.target_lost_timeout_s * 1e9)
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
        self._active = False
        self._stop_following()
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
        if self._active:
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
        if self._watchdog is not None:
            self._watchdog.destroy()
        if self._diag_timer is not None:
            self.destroy_timer(self._diag_timer)
        if self._silence_timer is not None:
            self.destroy_timer(self._silence_timer)
            self._silence_timer = None
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

    def _check_tracks_silence(self) -> None:
        """Timer: the followed target is lost once no tracks message came for the silence limit."""
        if not self._active:
            return
        silence_s = max(self.params.target_lost_timeout_s, self.params.no_image_warning_s)
        if (update := self._follower.check_silence(silence_s)) is not None and self._target_pub is not None:
            self._publish_target(update)

    def frame_counts(self) -> dict[str, int]:
        """Camera frames received and lost by cause (ImageInput.counts), and the frames the buffer
        holds and the sampling slots it missed (empty while unconfigured)."""
        if self._images is None or self._buffer is None:
            return {}
        buffer = self._buffer.stats()
        return {**self._images.counts(), "buffer_frames": buffer["frames"],
                "buffer_missed_samples": buffer["missed_samples"]}  # fmt: skip

    def _publish_diagnostics(self) -> None:
        buffer = self._buffer.stats() if self._buffer is not None else {}
        since_image = time.monotonic() - self._last_image if self._last_image else None
        values = {
            **{k: str(v) for k, v in self.frame_counts().items()},
            **{k: str(v) for k, v in self.counts.items()},
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
        if not self.context.ok():  # SIGINT/SIGTERM shut the context down: destroy_node stops following
            return  # silently (publishing would raise RCLError and fail the process's exit)
        if header is None:  # not tied to a camera frame (stop request, new answer)
            header = now_header(self, self._frame_id)
        self._target_pub.publish(target_msg(update, header))
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
        if not self._active or self._queue is None:
            return None, "the grounding node is not active (lifecycle); activate it and ask again"
        if problem := query_problem(query, window_s):
            return None, problem
        topic = self.resolve_topic_name(image_topic(self.params.image_transport))
        if self._buffer is None or len(self._buffer) == 0:
            return None, f"no camera frames received yet on {topic}; nothing to ground"
        # A stopped camera: the buffer's newest frames are old; the last N seconds it holds are not the
        # last N seconds of the scene (module docstring).
        since_s = time.monotonic() - self._last_image if self._last_image else 0.0
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
        job = QueryJob(request=request, snapshot=self._buffer.snapshot(float(window_s)), note=note)
        if not self._queue.submit(job):
            return None, (
                f"busy: {self.params.queue_size + 1} queries are in flight (1 running + queue_size "
                f"{self.params.queue_size} waiting); ask again later"
            )
        return job, ""

    def _run_job(self, job: QueryJob) -> GroundingResult:
        """Worker thread: ground, publish the answer, follow its target (even if the caller gave up)."""
        outcome = self._pipeline.ground(job.snapshot, job.request, progress=job.report, cancel=job.cancel)
        if not self._active and outcome.finish_reason == "cancelled":  # cancelled by _release_model
            outcome.message = (
                "cancelled: the grounding node was deactivated (lifecycle) while the query ran; "
                "activate it and ask again"
            )
        elif job.note:
            outcome.message = f"{outcome.message}; {job.note}" if outcome.message else job.note
        result = result_msg(outcome, str(job.request.query), self._frame_id, self.get_clock().now().to_msg())
        if self.context.ok():  # not when the query was cancelled by a shutdown (SIGINT/SIGTERM)
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


def main(args: list[str] | None = None) -> int:
    """`ros2 run stvg_ros grounding_node`: one node, self-activating, spun until SIGINT/SIGTERM."""
    return run_lifecycle_node(GroundingNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
