"""The one client of a grounding node's `ground` service and action (`stvg-ros ask`, the demo, eval replay).

`GroundClient` wraps an rclpy node (given and spun by its owner, or created here in a given context
and spun on a thread of its own). Every wait has a timeout: a missing or silent node ends in
`GroundTimeout`, never in a hang. `result_to_dict` / `format_result` turn a GroundingResult into the
JSON values of `stvg-ros ask --json` and into lines for people.

This module imports without ROS (rclpy and the message packages are imported when a client is made),
so `result_to_dict` and the errors can be imported anywhere.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stvg_ros.nodes.messages import stamp_to_ns

#: Ground request `reasoning` values (stvg_ros_msgs Ground.srv / Ground.action).
REASONING_DEFAULT, REASONING_ON, REASONING_OFF = 0, 1, 2
_POLL_S = 0.02


class GroundError(RuntimeError):
    """A query that got no answer: the call failed, the goal was rejected or cancelled, ..."""


class GroundTimeout(GroundError):
    """No answer in time. `stage` is what was waited for: "answer" (service), "ack" or "result" (action)."""

    def __init__(self, message: str, stage: str) -> None:
        super().__init__(message)
        self.stage = stage


@dataclass(frozen=True)
class ActionAnswer:
    """What the action returned: the GroundingResult and the goal's final status."""

    result: Any  # stvg_ros_msgs/GroundingResult
    status: str  # "succeeded", "aborted", "canceled" or the numeric status


DISCOVERY_SETTLE_S = 0.5  # see GroundClient.wait_ready


def _wait(future, deadline: float, cancel_event: threading.Event | None = None) -> bool:
    """Poll until `future` is done (True), the deadline passes or `cancel_event` is set (False)."""
    while not future.done():
        left = deadline - time.monotonic()
        if left <= 0 or (cancel_event is not None and cancel_event.is_set()):
            return False
        time.sleep(min(_POLL_S, left))
    return True


class GroundClient:
    """Service and action client of one grounding node (`name` resolves in the node's namespace)."""

    def __init__(
        self,
        node=None,
        *,
        name: str = "ground",
        context=None,
        node_name: str = "stvg_ros_ground_client",
        namespace: str | None = None,
    ) -> None:
        """Use `node` (its owner spins it), or create `node_name` in `context` and spin it here."""
        import rclpy

        from stvg_ros_msgs.srv import Ground

        self._Ground = Ground
        self.name = name
        self._owns_node = node is None
        self.node = node if node is not None else rclpy.create_node(node_name, namespace=namespace, context=context)
        self.service = self.node.create_client(Ground, name)
        self._action = None
        self._executor = self._thread = None
        if self._owns_node:
            from rclpy.executors import SingleThreadedExecutor

            self._executor = SingleThreadedExecutor(context=context)
            self._executor.add_node(self.node)
            self._thread = threading.Thread(target=self._spin, name="ground-client-spin", daemon=True)
            self._thread.start()

    def _spin(self) -> None:
        from stvg_ros.nodes.lifecycle import spin_until_shutdown

        spin_until_shutdown(self._executor)  # SIGINT/SIGTERM end it quietly, even mid-wait

    @property
    def service_name(self) -> str:
        """The fully qualified service (and action) name."""
        return self.node.resolve_service_name(self.name)

    @property
    def action(self):
        """The rclpy ActionClient (made on first use)."""
        if self._action is None:
            from rclpy.action import ActionClient

            from stvg_ros_msgs.action import Ground

            self._action = ActionClient(self.node, Ground, self.name)
        return self._action

    def wait_ready(self, timeout_s: float, *, action: bool = False) -> bool:
        """Whether the service (or the action server) appeared within `timeout_s`.

        Once it appears, wait DISCOVERY_SETTLE_S more: the client sees the server's endpoints before
        the server has matched the client's reply reader, and a reply sent in that gap is dropped
        (rmw_fastrtps logs "failed to send response (timeout)"; ros2/rmw_fastrtps#842). A query is
        minutes of VLM time, so it is never re-sent; the short wait makes the gap rare instead.
        """
        ready = self.action.server_is_ready if action else self.service.service_is_ready
        deadline = time.monotonic() + timeout_s
        while not ready():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        time.sleep(DISCOVERY_SETTLE_S)
        return True

    def ask(self, query: str, window_s: float = 0.0, reasoning: int = REASONING_DEFAULT, *, timeout_s: float):
        """Ask over the service; the GroundingResult. GroundTimeout after `timeout_s`, GroundError on a failed call."""
        request = self._Ground.Request(query=query, window_seconds=float(window_s), reasoning=int(reasoning))
        future = self.service.call_async(request)
        if not _wait(future, time.monotonic() + timeout_s):
            future.cancel()
            raise GroundTimeout(f"no answer within {timeout_s:.0f} s", "answer")
        if future.exception() is not None:
            raise GroundError(f"service call failed: {future.exception()}")
        return future.result().result

    def ask_action(
        self,
        query: str,
        window_s: float = 0.0,
        reasoning: int = REASONING_DEFAULT,
        *,
        timeout_s: float,
        on_feedback: Callable[[Any], None] | None = None,
        cancel_event: threading.Event | None = None,
    ) -> ActionAnswer:
        """Ask over the action. `on_feedback` gets each Ground.Feedback; setting `cancel_event` cancels
        the goal (the cancelled result is returned when it comes within 15 s). A goal still running at
        `timeout_s` is cancelled and GroundTimeout raised; GroundError when rejected or interrupted."""
        from action_msgs.msg import GoalStatus

        from stvg_ros_msgs.action import Ground

        deadline = time.monotonic() + timeout_s
        goal = Ground.Goal(query=query, window_seconds=float(window_s), reasoning=int(reasoning))
        feedback = (lambda msg: on_feedback(msg.feedback)) if on_feedback is not None else None
        sent = self.action.send_goal_async(goal, feedback_callback=feedback)
        if not _wait(sent, deadline, cancel_event):
            if cancel_event is not None and cancel_event.is_set():
                raise GroundError("interrupted")
            raise GroundTimeout("the goal was not acknowledged in time", "ack")
        handle = sent.result()
        if not handle.accepted:
            raise GroundError("the goal was rejected")
        result = handle.get_result_async()
        if not _wait(result, deadline, cancel_event):
            cancel = handle.cancel_goal_async()
            if cancel_event is None or not cancel_event.is_set():
                raise GroundTimeout(f"no result within {timeout_s:.0f} s (goal cancelled)", "result")
            _wait(cancel, time.monotonic() + 5)
            if not _wait(result, time.monotonic() + 10):
                raise GroundError("interrupted; cancel requested")
        response = result.result()
        status = {
            GoalStatus.STATUS_SUCCEEDED: "succeeded",
            GoalStatus.STATUS_ABORTED: "aborted",
            GoalStatus.STATUS_CANCELED: "canceled",
        }.get(response.status, str(response.status))
        return ActionAnswer(response.result.result, status)

    def close(self) -> None:
        """Stop the spinner and destroy the node when made here (a given node stays its owner's)."""
        from stvg_ros.nodes.lifecycle import stop_spinner

        if not self._owns_node or not stop_spinner(self._executor, self._thread, 2.0):
            return  # another owner's node; or one a wait set still holds, which the process exit frees
        if self._action is not None:
            self._action.destroy()
        self.node.destroy_node()

    def __enter__(self) -> GroundClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def result_to_dict(result) -> dict:
    """A stvg_ros_msgs/GroundingResult as JSON values, with the keys of `stvg-ros ground --json`.

    `start`/`end` are seconds from the clip start (what the model said); `*_stamp` are ROS times in
    seconds; tube entries carry `stamp` (s), `stamp_ns`, `frame_id`, `box` [x1, y1, x2, y2] in
    pixels, `interpolated` and `t` (s from the clip start). Failed answers have None where no
    value exists.
    """
    ok = bool(result.success)
    clip_start_ns = stamp_to_ns(result.clip_start)
    return {
        "success": ok,
        "message": result.message,
        "query": result.query,
        "target_id": int(result.target_id) if ok else None,
        "start": round(float(result.start_offset), 3) if ok else None,
        "end": round(float(result.end_offset), 3) if ok else None,
        "start_stamp": stamp_to_ns(result.start) / 1e9 if ok else None,
        "end_stamp": stamp_to_ns(result.end) / 1e9 if ok else None,
        "clip_start_stamp": clip_start_ns / 1e9 if clip_start_ns else None,
        "confidence": round(float(result.confidence), 4),
        "reasoning": result.reasoning,
        "raw": result.raw_answer,
        "model": result.model,
        "sampled_stamps": [stamp_to_ns(t) / 1e9 for t in result.sampled_stamps],
        "tube": [
            {
                "stamp": stamp_to_ns(box.header.stamp) / 1e9,
                "stamp_ns": stamp_to_ns(box.header.stamp),
                "frame_id": box.header.frame_id,
                "box": [round(float(v), 2) for v in (box.x1, box.y1, box.x2, box.y2)],
                "interpolated": bool(box.interpolated),
                "t": round((stamp_to_ns(box.header.stamp) - clip_start_ns) / 1e9, 4),
            }
            for box in result.tube
        ],
    }


def format_result(summary: dict) -> str:
    """Human-readable lines for a `result_to_dict` dict."""
    if not summary["success"]:
        return f"no answer: {summary['message']}"
    tube = summary["tube"]
    lines = [
        f"target ID {summary['target_id']}, {summary['start']:.2f} s to {summary['end']:.2f} s of the clip "
        f"(ROS time {summary['start_stamp']:.3f} to {summary['end_stamp']:.3f})",
        f"tube: {len(tube)} boxes" + (f", first {tube[0]['box']}, last {tube[-1]['box']}" if tube else ""),
        f"model: {summary['model']}",
    ]
    return "\n".join(lines)
