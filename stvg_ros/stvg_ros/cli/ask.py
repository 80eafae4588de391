"""`stvg-ros ask "QUERY"`: ask a running grounding node over its service (or action, with progress).

Exit status: 0 the node answered with success, 1 it answered without success (no usable answer,
busy, no frames yet, cancelled), 2 no node answered within the timeout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "ask",
        help="send a query to a running grounding node (service or action)",
        description="Ask a running grounding node which object matches QUERY, and when.",
    )
    parser.add_argument("query", help='plain-language description, e.g. "the red circle that stops"')
    parser.add_argument("--window", type=float, default=0.0, metavar="S", help="look back S seconds (0: whole buffer)")
    reasoning = parser.add_mutually_exclusive_group()
    reasoning.add_argument("--no-reasoning", action="store_true", help="answer only, no <think> block (faster)")
    reasoning.add_argument("--reasoning", action="store_true", help="force the <think> block")
    parser.add_argument("--action", action="store_true", help="use the action: print progress, Ctrl-C cancels")
    parser.add_argument("--timeout", type=float, default=180.0, metavar="S", help="give up after S seconds")
    parser.add_argument("--namespace", default="", help="namespace of the grounding node")
    parser.add_argument("--name", default="ground", help="service/action name (relative to the namespace)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def _ns(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def result_to_dict(result) -> dict:
    """A stvg_ros_msgs/GroundingResult as JSON values, with the keys of `stvg-ros ground --json`.

    `start`/`end` are seconds from the clip start (what the model said); `*_stamp` are ROS times in
    seconds; tube entries carry `stamp` (s), `stamp_ns`, `frame_id`, `box` [x1, y1, x2, y2] in
    pixels, `interpolated` and `t` (s from the clip start). Failed answers have None where no
    value exists.
    """
    ok = bool(result.success)
    clip_start_ns = _ns(result.clip_start)
    return {
        "success": ok,
        "message": result.message,
        "query": result.query,
        "target_id": int(result.target_id) if ok else None,
        "start": round(float(result.start_offset), 3) if ok else None,
        "end": round(float(result.end_offset), 3) if ok else None,
        "start_stamp": _ns(result.start) / 1e9 if ok else None,
        "end_stamp": _ns(result.end) / 1e9 if ok else None,
        "clip_start_stamp": clip_start_ns / 1e9 if clip_start_ns else None,
        "confidence": round(float(result.confidence), 4),
        "reasoning": result.reasoning,
        "raw": result.raw_answer,
        "model": result.model,
        "sampled_stamps": [_ns(t) / 1e9 for t in result.sampled_stamps],
        "tube": [
            {
                "stamp": _ns(box.header.stamp) / 1e9,
                "stamp_ns": _ns(box.header.stamp),
                "frame_id": box.header.frame_id,
                "box": [round(float(v), 2) for v in (box.x1, box.y1, box.x2, box.y2)],
                "interpolated": bool(box.interpolated),
                "t": round((_ns(box.header.stamp) - clip_start_ns) / 1e9, 4),
            }
            for box in result.tube
        ],
    }


def format_result(summary: dict) -> str:
    """Human-readable lines for a result dict."""
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


def _reasoning_flag(args: argparse.Namespace) -> int:
    return 2 if args.no_reasoning else 1 if args.reasoning else 0


def _wait(future, deadline: float) -> bool:
    while not future.done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def run(args: argparse.Namespace) -> int:
    import threading

    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    rclpy.init(args=None)
    node = rclpy.create_node(f"stvg_ros_ask_{int(time.time() * 1000) % 100000}", namespace=args.namespace or None)
    executor = SingleThreadedExecutor()
    executor.add_node(node)

    def spin() -> None:
        try:
            executor.spin()
        except ExternalShutdownException:
            pass

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    deadline = time.monotonic() + args.timeout
    try:
        call = _call_action if args.action else _call_service
        summary, status = call(node, args, deadline)
    except KeyboardInterrupt:
        summary, status = None, "interrupted"
    finally:
        executor.shutdown(timeout_sec=2)
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
        spinner.join(timeout=2)
    if summary is None:
        print(f"stvg-ros ask: {status}", file=sys.stderr)
        if args.json:
            print(json.dumps({"success": False, "message": status}))
        return 2
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(format_result(summary))
    return 0 if summary["success"] else 1


def _call_service(node, args, deadline: float):
    from stvg_ros_msgs.srv import Ground

    client = node.create_client(Ground, args.name)
    name = node.resolve_service_name(args.name)
    if not client.wait_for_service(timeout_sec=max(0.1, min(10.0, deadline - time.monotonic()))):
        return None, f"no grounding node serves {name} (is `stvg-ros up` running, with the same ROS_DOMAIN_ID?)"
    future = client.call_async(
        Ground.Request(query=args.query, window_seconds=args.window, reasoning=_reasoning_flag(args))
    )
    if not _wait(future, deadline):
        return None, f"no answer from {name} within {args.timeout:.0f} s"
    return result_to_dict(future.result().result), "done"


def _call_action(node, args, deadline: float):
    from action_msgs.msg import GoalStatus
    from rclpy.action import ActionClient

    from stvg_ros_msgs.action import Ground

    client = ActionClient(node, Ground, args.name)
    if not client.wait_for_server(timeout_sec=max(0.1, min(10.0, deadline - time.monotonic()))):
        return None, f"no grounding action server {args.name} (is `stvg-ros up` running?)"

    def on_feedback(msg) -> None:
        print(f"[{msg.feedback.stage}] {msg.feedback.progress * 100:5.1f} %", file=sys.stderr)

    goal = Ground.Goal(query=args.query, window_seconds=args.window, reasoning=_reasoning_flag(args))
    sent = client.send_goal_async(goal, feedback_callback=on_feedback)
    if not _wait(sent, deadline):
        return None, "the goal was not acknowledged in time"
    handle = sent.result()
    if not handle.accepted:
        return None, "the goal was rejected"
    result = handle.get_result_async()
    try:
        if not _wait(result, deadline):
            handle.cancel_goal_async()
            return None, f"no result within {args.timeout:.0f} s (goal cancelled)"
    except KeyboardInterrupt:
        cancel = handle.cancel_goal_async()
        _wait(cancel, time.monotonic() + 5)
        _wait(result, time.monotonic() + 10)
        if not result.done():
            return None, "interrupted; cancel requested"
    response = result.result()
    summary = result_to_dict(response.result.result)
    summary["status"] = {
        GoalStatus.STATUS_SUCCEEDED: "succeeded",
        GoalStatus.STATUS_ABORTED: "aborted",
        GoalStatus.STATUS_CANCELED: "canceled",
    }.get(response.status, str(response.status))
    return summary, "done"
