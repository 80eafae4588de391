"""`stvg-ros ask "QUERY"`: ask a running grounding node over its service (or action, with progress).

Exit status: 0 the node answered with success, 1 it answered without success (no usable answer,
busy, no frames yet, cancelled), 2 no node answered within the timeout.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time

from stvg_ros.nodes.ground_client import (
    REASONING_DEFAULT,
    REASONING_OFF,
    REASONING_ON,
    GroundClient,
    GroundError,
    GroundTimeout,
    format_result,
    result_to_dict,
)


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


def _reasoning_flag(args: argparse.Namespace) -> int:
    return REASONING_OFF if args.no_reasoning else REASONING_ON if args.reasoning else REASONING_DEFAULT


def run(args: argparse.Namespace) -> int:
    import rclpy  # here, not at import: cli modules load without ROS

    rclpy.init(args=None)
    client = GroundClient(
        name=args.name,
        node_name=f"stvg_ros_ask_{int(time.time() * 1000) % 100000}",
        namespace=args.namespace or None,
    )
    deadline = time.monotonic() + args.timeout
    try:
        call = _call_action if args.action else _call_service
        summary, status = call(client, args, deadline)
    except KeyboardInterrupt:
        summary, status = None, "interrupted"
    finally:
        client.close()
        if rclpy.ok():
            rclpy.shutdown()
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


def _ready_wait(deadline: float) -> float:
    return max(0.1, min(10.0, deadline - time.monotonic()))


def _call_service(client: GroundClient, args: argparse.Namespace, deadline: float) -> tuple[dict | None, str]:
    if not client.wait_ready(_ready_wait(deadline)):
        return None, (
            f"no grounding node serves {client.service_name} (is `stvg-ros up` running, with the same ROS_DOMAIN_ID?)"
        )
    try:
        result = client.ask(args.query, args.window, _reasoning_flag(args), timeout_s=deadline - time.monotonic())
    except GroundTimeout:
        return None, f"no answer from {client.service_name} within {args.timeout:.0f} s"
    except GroundError as exc:
        return None, str(exc)
    return result_to_dict(result), "done"


def _call_action(client: GroundClient, args: argparse.Namespace, deadline: float) -> tuple[dict | None, str]:
    if not client.wait_ready(_ready_wait(deadline), action=True):
        return None, f"no grounding action server {args.name} (is `stvg-ros up` running?)"

    def on_feedback(feedback) -> None:
        print(f"[{feedback.stage}] {feedback.progress * 100:5.1f} %", file=sys.stderr)

    cancel = threading.Event()

    def on_sigint(*_) -> None:  # the first Ctrl-C cancels the goal, a second one gives up
        if cancel.is_set():
            raise KeyboardInterrupt
        cancel.set()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        answer = client.ask_action(
            args.query,
            args.window,
            _reasoning_flag(args),
            timeout_s=deadline - time.monotonic(),
            on_feedback=on_feedback,
            cancel_event=cancel,
        )
    except GroundTimeout as exc:
        if exc.stage == "result":
            return None, f"no result within {args.timeout:.0f} s (goal cancelled)"
        return None, str(exc)
    except GroundError as exc:
        return None, str(exc)
    finally:
        signal.signal(signal.SIGINT, previous)
    return {**result_to_dict(answer.result), "status": answer.status}, "done"
