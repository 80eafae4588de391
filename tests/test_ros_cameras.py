"""Two cameras, one model: `stvg-ros up --cameras` runs a tracker and an overlay per camera and one
grounding node for both. Each camera is fed its own synthetic bag by its own player process; a query
to each camera's `ground` service is answered from that camera's tracks, and tracks, answers and the
followed target all name their camera (track IDs are per camera). The model is loaded once.
"""

from __future__ import annotations

import pytest

from tests.ros_support import NodeProcess, RosClient, wait_until

pytestmark = pytest.mark.ros
rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed (run scripts/setup.sh)")
from stvg_ros_msgs.msg import Target, TrackedObjectArray  # noqa: E402
from stvg_ros_msgs.srv import Ground  # noqa: E402

NAMESPACE = "/multi"
CAMERAS = {"front": "/multi_front/image_raw", "rear": "/multi_rear/image_raw"}
ANSWER_TIMEOUT_S = 90.0


def test_two_cameras_share_one_model_and_answer_each_from_its_own_tracks(tiny_detector, tiny_vlm, synth_dataset,
                                                                         tmp_path):  # fmt: skip
    cameras = ",".join(f"{name}={topic}" for name, topic in CAMERAS.items())
    up = NodeProcess.python(
        ["-m", "stvg_ros.cli.main", "up", "--namespace", NAMESPACE, "--cameras", cameras, "--no-overlay",
         "--model", str(tiny_vlm.gguf_q8_0), "-p", f"grounding_node:mmproj={tiny_vlm.mmproj_f32}",
         "-p", "grounding_node:n_gpu_layers=0", "-p", "grounding_node:n_threads=1", "-p", "grounding_node:num_frames=8",
         "-p", f"tracker_node:detector={tiny_detector['onnx-int8']}", "-p", "tracker_node:threads=1"],
        tmp_path / "up.log",
    )  # fmt: skip
    client = RosClient(namespace=NAMESPACE, name="cameras_client")
    players: list[NodeProcess] = []
    try:
        recorded: dict[str, dict[int, set[int]]] = {name: {} for name in CAMERAS}
        named: dict[str, set[str]] = {name: set() for name in CAMERAS}

        def on_tracks(camera: str, msg) -> None:
            stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
            recorded[camera][stamp] = {o.track_id for o in msg.objects}
            named[camera].add(msg.camera)

        targets = {name: client.collect(Target, f"{name}/target") for name in CAMERAS}
        for name in CAMERAS:
            client.node.create_subscription(
                TrackedObjectArray, f"{name}/tracks", lambda m, n=name: on_tracks(n, m), 200
            )
            assert client.wait_active(f"{name}/tracker_node", 90), up.log()
        assert client.wait_active("grounding_node", 90), up.log()
        assert up.log().count("llama.cpp loaded") == 1, up.log()  # one model for both cameras
        nodes = set(client.node.get_node_names_and_namespaces())
        assert {("tracker_node", f"{NAMESPACE}/front"), ("tracker_node", f"{NAMESPACE}/rear"),
                ("grounding_node", NAMESPACE)} <= nodes  # fmt: skip

        ground = {name: client.service(Ground, f"{name}/ground", timeout_s=20) for name in CAMERAS}
        request = Ground.Request(query="the red circle", reasoning=Ground.Request.REASONING_OFF)
        for (name, topic), bag in zip(CAMERAS.items(), synth_dataset.bags[:2], strict=True):
            # One camera at a time: the other camera's history stays its own (empty before its bag plays).
            player = NodeProcess.python(
                ["-m", "stvg_ros.nodes.player_node", "--ros-args", "-r", f"__node:=player_{name}",
                 "-r", f"image:={topic}", "-p", f"bag:={bag}", "-p", "rate:=2.0",
                 "-p", "wait_for_subscribers:=2", "-p", "start_delay_s:=0.5"],
                tmp_path / f"player_{name}.log",
            )  # fmt: skip
            players.append(player)
            assert wait_until(lambda p=player: not p.alive(), 90), player.log()
            assert player.proc.returncode == 0, player.log()
            assert wait_until(lambda n=name: len(recorded[n]) >= 20, 20), {k: len(v) for k, v in recorded.items()}
            wait_until(lambda: False, 1.0)  # the last tracks messages reach the grounding node too
            if name == "front":
                assert not recorded["rear"]
                refused = client.call(ground["rear"], request, 30).result
                assert not refused.success and refused.camera == "rear"
                assert f"no camera frames received yet on {CAMERAS['rear']}" in refused.message
            result = client.call(ground[name], request, ANSWER_TIMEOUT_S).result
            assert result.success, (name, result.message)
            assert result.camera == name
            assert result.target_id in set().union(*recorded[name].values())
            assert wait_until(lambda n=name: len(targets[n]) > 0, 10), f"no target on {name}/target"
            assert {t.camera for t in targets[name]} == {name}
        assert named == {name: {name} for name in CAMERAS}  # every tracks message names its camera
        assert "Traceback" not in up.log()
    finally:
        client.close()
        for player in players:
            player.stop()
        code = up.stop(timeout_s=20)
    assert code == 0, up.log()
