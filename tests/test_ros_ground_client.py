"""nodes/ground_client.py against an in-process stand-in grounding node: service, action with
feedback and cancel, timeouts when nothing answers, and the JSON keys of `result_to_dict`."""

from __future__ import annotations

import threading
import time

import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed (run scripts/setup.sh)")
from rclpy.action import ActionServer, CancelResponse  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402

from stvg_ros.nodes.ground_client import (  # noqa: E402
    REASONING_OFF,
    GroundClient,
    GroundTimeout,
    format_result,
    result_to_dict,
)
from stvg_ros_msgs.action import Ground as GroundAction  # noqa: E402
from stvg_ros_msgs.msg import GroundingResult, TubeBox  # noqa: E402
from stvg_ros_msgs.srv import Ground  # noqa: E402

NAMESPACE = "/stvg_test_ground_client"


def _result(query: str) -> GroundingResult:
    result = GroundingResult(query=query, success=True, message="ok", target_id=4, start_offset=1.0,
                             end_offset=2.5, model="stub")  # fmt: skip
    result.clip_start.sec, result.start.sec, result.end.sec = 10, 11, 12
    box = TubeBox(x1=1.0, y1=2.0, x2=3.0, y2=4.0)
    box.header.stamp.sec, box.header.frame_id = 11, "cam"
    result.tube = [box]
    return result


@pytest.fixture(scope="module")
def context():
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    server = rclpy.create_node("stub_grounding_node", namespace=NAMESPACE, context=ctx)
    requests = []

    def on_request(request, response):
        requests.append((request.query, request.window_seconds, request.reasoning))
        response.result = _result(request.query)
        return response

    def execute(goal):
        goal.publish_feedback(GroundAction.Feedback(stage="reasoning", progress=0.5))
        if goal.request.query == "slow":
            end = time.monotonic() + 20
            while not goal.is_cancel_requested and time.monotonic() < end:
                time.sleep(0.05)
            goal.canceled()
            return GroundAction.Result(result=GroundingResult(query="slow", message="cancelled"))
        goal.succeed()
        return GroundAction.Result(result=_result(goal.request.query))

    server.create_service(Ground, "ground", on_request)
    action = ActionServer(server, GroundAction, "ground", execute, cancel_callback=lambda _: CancelResponse.ACCEPT)
    executor = MultiThreadedExecutor(num_threads=3, context=ctx)
    executor.add_node(server)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    yield ctx, requests
    executor.shutdown(timeout_sec=2)
    action.destroy()
    server.destroy_node()
    rclpy.try_shutdown(context=ctx)
    thread.join(timeout=2)


def test_service_and_action_answer(context):
    ctx, requests = context
    with GroundClient(context=ctx, namespace=NAMESPACE) as client:
        assert client.service_name == f"{NAMESPACE}/ground"
        assert client.wait_ready(10) and client.wait_ready(10, action=True)
        result = client.ask("the red one", 2.0, REASONING_OFF, timeout_s=10)
        assert result.target_id == 4 and requests[-1] == ("the red one", 2.0, REASONING_OFF)
        feedback = []
        answer = client.ask_action("the blue one", timeout_s=10, on_feedback=feedback.append)
        assert answer.status == "succeeded" and answer.result.query == "the blue one"
        assert [f.stage for f in feedback] == ["reasoning"]

        cancel = threading.Event()
        threading.Timer(0.5, cancel.set).start()
        started = time.monotonic()
        answer = client.ask_action("slow", timeout_s=30, cancel_event=cancel)
        assert answer.status == "canceled" and time.monotonic() - started < 10


def test_nothing_answering_times_out(context):
    ctx, _ = context
    with GroundClient(context=ctx, namespace="/nobody_here_ground_client") as client:
        assert not client.wait_ready(0.3)
        with pytest.raises(GroundTimeout) as exc:
            client.ask("x", timeout_s=0.3)
        assert exc.value.stage == "answer" and str(exc.value) == "no answer within 0 s"
        with pytest.raises(GroundTimeout) as exc:
            client.ask_action("x", timeout_s=0.3)
        assert exc.value.stage == "ack"


def test_result_to_dict_keys_and_format():
    summary = result_to_dict(_result("q"))
    assert list(summary) == ["success", "message", "query", "target_id", "start", "end", "start_stamp", "end_stamp",
                             "clip_start_stamp", "confidence", "reasoning", "raw", "model", "sampled_stamps", "tube"]  # fmt: skip
    assert summary["tube"] == [{"stamp": 11.0, "stamp_ns": 11_000_000_000, "frame_id": "cam",
                                "box": [1.0, 2.0, 3.0, 4.0], "interpolated": False, "t": 1.0}]  # fmt: skip
    assert [summary[k] for k in ("start", "end", "start_stamp", "clip_start_stamp")] == [1.0, 2.5, 11.0, 10.0]
    assert format_result(summary).startswith("target ID 4, 1.00 s to 2.50 s")
    failed = result_to_dict(GroundingResult(message="busy"))
    assert failed["target_id"] is None and format_result(failed) == "no answer: busy"
