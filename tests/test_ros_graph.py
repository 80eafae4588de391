"""End to end over DDS across OS processes, and `stvg-ros up`.

A synthetic rosbag2 is played by player_node (process 1) into tracker_node (process 2, the tiny
synthetic detector) and grounding_node (process 3, the tiny VLM through llama.cpp); this process
records the tracker's output and asks over the service and the action. The answers must name a
track the tracker published, a span inside the buffered history, and a tube whose boxes are the
tracker's boxes for those stamps. Then `stvg-ros up` starts the same graph in one process with a
namespace, a camera remap, parameter overrides and use_sim_time.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.ros_support import NodeProcess, RosClient, wait_until

pytestmark = pytest.mark.ros
rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed (run scripts/setup.sh)")
from action_msgs.msg import GoalStatus  # noqa: E402
from rcl_interfaces.srv import GetParameters  # noqa: E402

from stvg_ros_msgs.action import Ground as GroundAction  # noqa: E402
from stvg_ros_msgs.msg import TrackedObjectArray  # noqa: E402
from stvg_ros_msgs.srv import Ground  # noqa: E402

NAMESPACE = "/e2e"
CAMERA_TOPIC = "/e2e_camera/image_raw"
ANSWER_TIMEOUT_S = 90.0


def ns(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


@pytest.fixture(scope="module")
def bag(synth_dataset):
    from stvg_ros.core.bag_io import iter_image_bag

    path = synth_dataset.bags[0]
    return path, [frame.stamp_ns for frame in iter_image_bag(path)]


@pytest.fixture(scope="module")
def graph(tiny_detector, tiny_vlm, bag, tmp_path_factory):
    """tracker + grounding processes, fed by a player process; yields (client, {stamp_ns: Tracks})."""
    from stvg_ros.nodes.messages import tracks_from_msg

    logs = tmp_path_factory.mktemp("e2e")
    ros_args = ["--ros-args", "-r", f"__ns:={NAMESPACE}", "-r", f"image:={CAMERA_TOPIC}"]
    tracker = NodeProcess.python(
        ["-m", "stvg_ros.nodes.tracker_node", *ros_args,
         "-p", f"detector:={tiny_detector['onnx-int8']}", "-p", "threads:=1"],
        logs / "tracker.log",
    )  # fmt: skip
    grounding = NodeProcess.python(
        ["-m", "stvg_ros.nodes.grounding_node", *ros_args,
         "-p", f"model:={tiny_vlm.gguf_q8_0}", "-p", f"mmproj:={tiny_vlm.mmproj_f32}", "-p", "n_gpu_layers:=0",
         "-p", "n_threads:=1", "-p", "num_frames:=8", "-p", f"query_timeout_s:={ANSWER_TIMEOUT_S}"],
        logs / "grounding.log",
    )  # fmt: skip
    processes = [tracker, grounding]
    client = RosClient(namespace=NAMESPACE, name="e2e_client")
    try:
        recorded: dict[int, object] = {}
        client.node.create_subscription(
            TrackedObjectArray,
            "tracks",
            lambda msg: recorded.__setitem__(ns(msg.header.stamp), tracks_from_msg(msg)),
            200,
        )
        assert client.wait_active("tracker_node", 90), tracker.log()
        assert client.wait_active("grounding_node", 90), grounding.log()
        client.ground = client.service(Ground, "ground", timeout_s=30)
        path, stamps = bag
        player = NodeProcess.python(
            ["-m", "stvg_ros.nodes.player_node", *ros_args, "-p", f"bag:={path}", "-p", "rate:=2.0",
             "-p", "wait_for_subscribers:=2", "-p", "start_delay_s:=0.5"],
            logs / "player.log",
        )  # fmt: skip
        processes.append(player)
        assert wait_until(lambda: not player.alive(), 60), player.log()
        assert player.proc.returncode == 0, player.log()
        assert wait_until(lambda: len(recorded) >= len(stamps) // 2 and max(recorded) >= stamps[-3], 20), (
            f"the tracker published {len(recorded)} of {len(stamps)} frames\n{tracker.log()}"
        )
        wait_until(lambda: False, 1.0)  # the last tracks messages reach the grounding node too
        client.processes = {"tracker": tracker, "grounding": grounding}
        yield client, dict(recorded)
    finally:
        client.close()
        for process in processes:
            process.stop()


def check_answer(result, recorded: dict, bag_stamps: list[int]) -> int:
    """ID among the tracker's IDs; span inside the buffered history; tube = the tracker's boxes.

    Returns how many tube boxes were compared with a box the tracker published."""
    assert result.success, result.message
    ids = {int(t) for tracks in recorded.values() for t in tracks.track_id}
    assert result.target_id in ids
    # The buffer holds the camera frames the node received (the tracker may have dropped some): the
    # clip starts at one of the bag's frames and the span lies between the clip start and the last frame.
    start, end = ns(result.start), ns(result.end)
    assert ns(result.clip_start) in bag_stamps
    assert ns(result.clip_start) <= start <= end <= bag_stamps[-1]
    sampled = [ns(t) for t in result.sampled_stamps]
    assert sampled and set(sampled) <= set(bag_stamps) and ns(result.clip_start) <= min(sampled)
    tube_stamps = [ns(box.header.stamp) for box in result.tube]
    assert tube_stamps == sorted(tube_stamps) and set(tube_stamps) <= set(recorded)
    if len(tube_stamps) > 1:
        assert start <= tube_stamps[0] and tube_stamps[-1] <= end
    matched = 0
    for box, stamp in zip(result.tube, tube_stamps, strict=True):
        tracks = recorded[stamp]
        rows = np.flatnonzero(tracks.track_id == result.target_id)
        if len(rows):  # the tracker had the target on this frame: exactly its box
            np.testing.assert_allclose([box.x1, box.y1, box.x2, box.y2], tracks.xyxy[rows[0]], atol=1e-3)
            assert box.interpolated == (not bool(tracks.detected[rows[0]]))
            matched += 1
        else:  # filled between two sightings
            assert box.interpolated
    # Every frame of the span on which the tracker had the target is in the tube.
    with_target = [s for s in recorded if start <= s <= end and result.target_id in recorded[s].track_id]
    assert set(with_target) <= set(tube_stamps)
    if not result.tube:  # the random model may name a span outside its target's life: it says so
        assert "empty tube" in result.message
    return matched


def test_service_answers_over_dds_match_the_tracker(graph, bag):
    client, recorded = graph
    matched = []
    for query in ("the red circle", "the square that moves left", "the small triangle that stops"):
        request = Ground.Request(query=query, reasoning=Ground.Request.REASONING_OFF)
        result = client.call(client.ground, request, ANSWER_TIMEOUT_S).result
        matched.append(check_answer(result, recorded, bag[1]))
        assert result.model and "<answer>" in result.raw_answer
    # The tiny model picks IDs and spans at random; over three answers some tube holds tracker boxes.
    assert max(matched) >= 1, matched


def test_action_answer_over_dds_matches_the_tracker(graph, bag):
    client, recorded = graph
    action = client.action(GroundAction, "ground", timeout_s=10)
    stages = []
    goal = client.result_of(
        action.send_goal_async(
            GroundAction.Goal(query="the blue square that moves", reasoning=GroundAction.Goal.REASONING_ON),
            feedback_callback=lambda msg: stages.append(msg.feedback.stage),
        ),
        10,
    )
    response = client.result_of(goal.get_result_async(), ANSWER_TIMEOUT_S)
    assert response.status == GoalStatus.STATUS_SUCCEEDED, response.result.result.message
    check_answer(response.result.result, recorded, bag[1])
    assert "sampling" in stages and "reasoning" in stages
    for name, process in client.processes.items():
        assert process.alive() and "Traceback" not in process.log(), name


def test_stvg_ros_up_starts_the_graph_with_remaps_namespace_and_overrides(tiny_detector, tiny_vlm, tmp_path):
    up = NodeProcess.python(
        ["-m", "stvg_ros.cli.main", "up", "--namespace", "up_test", "--camera-topic", "/up_cam/image_raw",
         "--model", str(tiny_vlm.gguf_q8_0), "--use-sim-time",
         "-p", f"grounding_node:mmproj={tiny_vlm.mmproj_f32}", "-p", "grounding_node:n_gpu_layers=0",
         "-p", "grounding_node:n_threads=1", "-p", f"tracker_node:detector={tiny_detector['onnx-int8']}",
         "-p", "tracker_node:threads=1"],
        tmp_path / "up.log",
    )  # fmt: skip
    client = RosClient(namespace="/up_test", name="up_client")
    try:
        for name in ("tracker_node", "overlay_node", "grounding_node"):
            assert client.wait_active(name, 90), up.log()
        ground = client.service(Ground, "ground", timeout_s=30)
        answer = client.call(ground, Ground.Request(query="the red circle"), 30).result
        # The camera remap reached the grounding node: it says which topic it waits on.
        assert not answer.success and "no camera frames received yet on /up_cam/image_raw" in answer.message
        names = set(client.node.get_node_names_and_namespaces())
        assert {("tracker_node", "/up_test"), ("overlay_node", "/up_test"), ("grounding_node", "/up_test")} <= names
        get = client.service(GetParameters, "grounding_node/get_parameters", timeout_s=10)
        values = client.call(get, GetParameters.Request(names=["use_sim_time", "n_threads", "model"]), 10, idempotent=True).values
        assert values[0].bool_value is True and values[1].integer_value == 1
        assert values[2].string_value == str(tiny_vlm.gguf_q8_0)
    finally:
        client.close()
        code = up.stop(timeout_s=20)
    assert code == 0, up.log()
    assert "Traceback" not in up.log()


_TEARDOWN_SCRIPT = """
import json, sys, threading
import rclpy
from stvg_ros.nodes.graph import Graph, graph_nodes, merged_params_file, ros_arguments

detector, model, mmproj, out_dir = sys.argv[1:5]
overrides = {
    "tracker_node": {"detector": detector, "threads": 1},
    "grounding_node": {"model": model, "mmproj": mmproj, "n_gpu_layers": 0, "n_threads": 1},
}
rclpy.init(args=ros_arguments(merged_params_file(None, overrides, out_dir), "/teardown_cam/image_raw", "teardown"))
graph = Graph(graph_nodes()).build().start()
grounding = graph.node("grounding_node")
backend = grounding._backend
llm_before = backend._llm is not None
rclpy.shutdown()  # what SIGINT does: the context ends, every executor returns
graph.spin()
graph.stop()
alive = [t.name for t in threading.enumerate() if t is not threading.main_thread() and t.is_alive()]
print(json.dumps({"failed": graph.failed, "llm_before": llm_before, "llm_after": backend._llm is not None,
                  "threads": alive}))
"""


def test_graph_stop_ends_every_thread_and_frees_the_model_before_exit(tiny_detector, tiny_vlm, tmp_path):
    """What SIGINT leads to in `stvg-ros up`: after `Graph.stop()` no thread of the nodes is left running
    and the model is freed; a model or a frame thread left for the interpreter's exit crashed it
    (SIGSEGV, once in ~30 runs on a loaded machine)."""
    import json
    import subprocess
    import sys

    args = [str(tiny_detector["onnx-int8"]), str(tiny_vlm.gguf_q8_0), str(tiny_vlm.mmproj_f32), str(tmp_path)]
    done = subprocess.run(
        [sys.executable, "-c", _TEARDOWN_SCRIPT, *args], capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["failed"] == [] and result["llm_before"] is True
    assert result["llm_after"] is False, "the model was left for the interpreter's exit"
    assert result["threads"] == [], f"threads still running after Graph.stop(): {result['threads']}"
