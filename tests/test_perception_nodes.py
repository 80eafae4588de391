"""Tracker and overlay nodes in their own processes over DDS, fed by the player node from a
synthetic rosbag2: tracks and the annotated image carry the source headers, `~/enable`,
/diagnostics, bad images, QoS warnings and a missing model."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from tests.ros_support import NodeProcess, RosClient, image_msg, wait_until

pytestmark = pytest.mark.ros
pytest.importorskip("rclpy", reason="rclpy is not installed (run scripts/setup.sh)")

NAMESPACE = f"/perception_test_{os.getpid()}"


def stamp_of(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def ros_args(module: str, namespace: str, **params) -> list[str]:
    args = ["-m", module, "--ros-args", "-r", f"__ns:={namespace}"]
    for key, value in params.items():
        args += ["-p", f"{key}:={value}"]
    return args


@pytest.fixture(scope="module")
def graph(tiny_detector, synth_dataset, tmp_path_factory):
    """Tracker + overlay nodes, a test client, then the player looping a synthetic bag."""
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from stvg_ros_msgs.msg import TrackedObjectArray

    logs = tmp_path_factory.mktemp("perception-nodes")
    tracker = NodeProcess.python(
        ros_args(
            "stvg_ros.nodes.tracker_node", NAMESPACE, detector=tiny_detector["onnx-int8"], threads=1,
            diagnostics_period_s=0.5, no_image_warning_s=1.0, image_reliability="reliable", image_depth=50,
        ),
        logs / "tracker.log",
    )  # fmt: skip
    overlay = NodeProcess.python(ros_args("stvg_ros.nodes.overlay_node", NAMESPACE), logs / "overlay.log")
    processes = [tracker, overlay]
    client = RosClient(namespace=NAMESPACE, name="perception_test_client")
    try:
        reliable = QoSProfile(depth=500, reliability=ReliabilityPolicy.RELIABLE)
        client.images = client.collect(Image, "image", reliable, maxlen=500)
        client.tracks = client.collect(TrackedObjectArray, "tracks", reliable, maxlen=500)
        client.annotated = client.collect(Image, "image_annotated", reliable, maxlen=500)
        client.diagnostics = client.collect(DiagnosticArray, "/diagnostics", 50, maxlen=200)
        assert tracker.wait_for_log("tracking on", 120), tracker.log()
        assert tracker.wait_for_log("no publisher on", 20), tracker.log()  # before the player starts
        player = NodeProcess.python(
            ros_args(
                "stvg_ros.nodes.player_node", NAMESPACE, bag=synth_dataset.bags[0], loop="true", rate=1.0,
                start_delay_s=0.0, wait_for_subscribers=3, wait_timeout_s=60.0,
            ),
            logs / "player.log",
        )  # fmt: skip
        processes.append(player)
        client.processes = {"tracker": tracker, "overlay": overlay, "player": player}
        yield client
    finally:
        for process in processes:
            process.stop()
        client.close()


def test_tracks_arrive_for_every_frame_with_its_header(graph):
    assert wait_until(lambda: len(graph.tracks) >= 50, 90), graph.processes["tracker"].log()
    tracks = list(graph.tracks)
    image_headers = {stamp_of(m): m.header.frame_id for m in graph.images}
    assert all(image_headers.get(stamp_of(t)) == t.header.frame_id == "camera" for t in tracks)
    # a reliable, depth-50 subscription here (the default is best effort, depth 1: the newest
    # frame): every image published while the tracker ran got its tracks, in order
    window = [s for s in sorted(image_headers) if stamp_of(tracks[0]) <= s <= stamp_of(tracks[-1])]
    assert [stamp_of(t) for t in tracks] == window
    ids = {o.track_id for t in tracks for o in t.objects}
    assert ids and min(ids) >= 1 and sum(len(t.objects) > 0 for t in tracks) >= 0.9 * len(tracks)
    assert {o.label for t in tracks for o in t.objects} == {"shape"}


def test_overlay_image_keeps_the_header_and_draws_the_ids_with_render_ids(graph):
    from stvg_ros.core.image_codec import decode_image
    from stvg_ros.core.render import render_ids
    from stvg_ros.nodes.messages import tracks_from_msg

    assert wait_until(lambda: len(graph.annotated) >= 20, 60), graph.processes["overlay"].log()
    images = {stamp_of(m): m for m in graph.images}
    tracks = {stamp_of(m): m for m in graph.tracks}
    checked = 0
    for annotated in list(graph.annotated):
        source = images[stamp_of(annotated)]
        assert annotated.header.frame_id == source.header.frame_id
        assert (annotated.width, annotated.height, annotated.encoding) == (source.width, source.height, "rgb8")
        track_msg = tracks.get(stamp_of(annotated))
        if track_msg is not None and track_msg.objects:
            expected = render_ids(decode_image(source), tracks_from_msg(track_msg))
            np.testing.assert_array_equal(decode_image(annotated), expected)
            checked += 1
    assert checked >= 10


def test_enable_service_pauses_and_resumes_tracking(graph):
    from std_srvs.srv import SetBool

    enable = graph.service(SetBool, f"{NAMESPACE}/tracker_node/enable", timeout_s=30)
    assert wait_until(lambda: len(graph.tracks) > 0, 60)
    response = graph.call(enable, SetBool.Request(data=False), 10)
    assert response.success and "paused" in response.message
    time.sleep(0.5)  # let a message already in flight arrive
    paused_at, images_at = stamp_of(graph.tracks[-1]), len(graph.images)
    time.sleep(1.5)
    assert len(graph.images) > images_at and stamp_of(graph.tracks[-1]) == paused_at
    assert graph.call(enable, SetBool.Request(data=True), 10).success
    assert wait_until(lambda: stamp_of(graph.tracks[-1]) > paused_at, 20)


def test_diagnostics_report_rates_and_latency(graph):
    def tracker_status():
        for array in reversed(graph.diagnostics):
            for status in array.status:
                if "tracker_node" in status.name:
                    values = {kv.key: kv.value for kv in status.values}
                    running = values.get("enabled") == "True" and float(values.get("detector_hz", 0)) > 0
                    if running and float(values.get("input_hz", 0)) > 0:
                        return status, values
        return None

    assert wait_until(lambda: tracker_status() is not None, 30)
    status, values = tracker_status()
    assert status.level == status.OK and status.message == "tracking"
    lost = ("lost_in_transport", "lost_in_reader_queue", "dropped_backlog", "decode_errors")
    keys = {"output_hz", "latency_ms_p50", "latency_ms_p95", "frames_received", "frames_lost", "caught_up",
            "detect_every", *lost}  # fmt: skip
    assert keys <= set(values)
    assert int(values["frames_lost"]) == sum(int(values[key]) for key in lost)
    assert float(values["input_hz"]) <= 15 and float(values["processing_ms_p95"]) < 1000
    assert float(values["latency_ms_p95"]) >= float(values["latency_ms_p50"]) > 0  # bag stamps: now - stamp is old


def test_bad_images_are_dropped_with_the_reason_and_tracking_goes_on(graph):
    from sensor_msgs.msg import Image

    publisher = graph.node.create_publisher(Image, "image", 10)
    assert wait_until(lambda: publisher.get_subscription_count() >= 3, 20)
    bad = image_msg(np.zeros((4, 4, 3), np.uint8), 1)
    bad.encoding = "32FC1"
    empty = Image(encoding="rgb8")
    tracker = graph.processes["tracker"]
    for msg in [bad, empty] * 3:
        publisher.publish(msg)
        time.sleep(0.05)
    assert tracker.wait_for_log("unsupported image encoding '32FC1'", 20), tracker.log()
    assert tracker.wait_for_log("zero size", 10)
    last = stamp_of(graph.tracks[-1])
    assert wait_until(lambda: stamp_of(graph.tracks[-1]) > last, 20) and tracker.alive()
    assert "Traceback" not in tracker.log()


def test_qos_mismatch_is_reported(tmp_path):
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    namespace = f"{NAMESPACE}_qos"
    overlay = NodeProcess.python(
        ros_args("stvg_ros.nodes.overlay_node", namespace, image_reliability="reliable", no_image_warning_s=0.5),
        tmp_path / "overlay.log",
    )
    client = RosClient(namespace=namespace, name="qos_test_client")
    try:
        assert overlay.wait_for_log(f"no publisher on '{namespace}/image'", 60), overlay.log()
        client.node.create_publisher(Image, "image", qos_profile_sensor_data)  # best effort: cannot match
        assert overlay.wait_for_log("none matched: QoS mismatch", 20), overlay.log()
        assert "best_effort" in overlay.log()
    finally:
        client.close()
        overlay.stop()


def test_a_missing_model_fails_configure_with_the_file_name(tmp_path):
    tracker = NodeProcess.python(
        ros_args("stvg_ros.nodes.tracker_node", f"{NAMESPACE}_missing", detector=str(tmp_path / "gone.onnx")),
        tmp_path / "tracker.log",
    )
    try:
        assert tracker.wait_for_log("configure failed", 60), tracker.log()
        assert "gone.onnx" in tracker.log() and "Traceback" not in tracker.log()
    finally:
        tracker.stop()


def test_the_default_detector_is_the_real_object_one_and_its_absence_says_how_to_get_it(tmp_path):
    """With no detector given, the tracker loads yolo11n (COCO); offline and not pulled, configure fails
    with the command that gets it (the synthetic detector is only ever an explicit choice)."""
    tracker = NodeProcess.python(
        ros_args("stvg_ros.nodes.tracker_node", f"{NAMESPACE}_default"), tmp_path / "tracker.log",
        env={"STVG_ROS_MODELS": str(tmp_path / "empty-models"), "STVG_OFFLINE": "1"},
    )  # fmt: skip
    try:
        assert tracker.wait_for_log("configure failed", 60), tracker.log()
        log = tracker.log()
        assert "'yolo11n'" in log and "stvg-ros models pull yolo11n" in log and "Traceback" not in log
        assert "yolo-synth-tiny" not in log
    finally:
        tracker.stop()


# --------------------------------------------------------------------------------------------
# Parameter files, docs and visualisation configs match the node schemas


@pytest.mark.parametrize("node", ["tracker", "overlay"])
def test_config_files_and_docs_match_the_parameter_schema(node):
    import dataclasses
    from pathlib import Path

    import yaml

    from stvg_ros.nodes.params import OverlayParams, TrackerParams, parameters_markdown

    schema = TrackerParams if node == "tracker" else OverlayParams
    repo = Path(__file__).resolve().parents[1]
    params = yaml.safe_load((repo / "stvg_ros" / "config" / f"{node}.yaml").read_text())[f"/**/{node}_node"]
    defaults = dataclasses.asdict(schema())
    assert params["ros__parameters"] == defaults, f"config/{node}.yaml drifted from {schema.__name__}"
    docs = (repo / "docs" / "perception.md").read_text()
    assert parameters_markdown(schema) in docs, f"docs/perception.md: paste parameters_markdown({schema.__name__})"


def test_rviz_and_foxglove_configs_show_the_annotated_image():
    import json
    from pathlib import Path

    import yaml

    config = Path(__file__).resolve().parents[1] / "stvg_ros" / "config"
    rviz = yaml.safe_load((config / "stvg_ros.rviz").read_text())
    topics = [d["Topic"]["Value"] for d in rviz["Visualization Manager"]["Displays"]]
    assert "/image_annotated" in topics
    layout = json.loads((config / "stvg_ros_foxglove.json").read_text())
    assert any(p.get("imageMode", {}).get("imageTopic") == "/image_annotated" for p in layout["configById"].values())
    assert "Image!stvgids" in json.dumps(layout["layout"])


def test_viz_configs_follow_the_namespace_and_camera(tmp_path):
    import json
    from pathlib import Path

    import yaml

    from stvg_ros.nodes.viz_configs import write_viz_configs

    paths = write_viz_configs(tmp_path, "robot/front", "/front/color/image_raw", label="front")
    rviz = yaml.safe_load(paths["rviz"].read_text())
    assert [d["Topic"]["Value"] for d in rviz["Visualization Manager"]["Displays"]] == [
        "/robot/front/image_annotated", "/front/color/image_raw"]  # fmt: skip
    panels = json.loads(paths["foxglove"].read_text())["configById"]
    assert panels["RawMessages!stvgtracks"]["topicPath"] == "/robot/front/tracks"
    assert panels["RawMessages!stvgresult"]["topicPath"] == "/robot/front/grounding_result"
    assert panels["Image!stvgcam"]["imageMode"]["imageTopic"] == "/front/color/image_raw"
    assert panels["DiagnosticSummary!stvgdiag"]["topicToRender"] == "/diagnostics"  # global, not moved
    single = write_viz_configs(tmp_path / "one", "", "/camera/image_raw")
    package = Path(__file__).resolve().parents[1] / "stvg_ros" / "config" / "stvg_ros_foxglove.json"
    assert json.loads(single["foxglove"].read_text()) == json.loads(package.read_text())  # the default graph's


def test_compressed_input_and_lifecycle_transitions(tiny_detector, tmp_path):
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState, GetState
    from sensor_msgs.msg import CompressedImage

    from stvg_ros.synthetic.scenes import SceneSpec, generate_scene
    from stvg_ros_msgs.msg import TrackedObjectArray
    from tests.ros_support import compressed_msg

    namespace = f"{NAMESPACE}_compressed"
    tracker = NodeProcess.python(
        ros_args(
            "stvg_ros.nodes.tracker_node", namespace, detector=tiny_detector["onnx-int8"], threads=1,
            autostart="false", image_transport="compressed", image_reliability="reliable", image_depth=20,
        ),
        tmp_path / "tracker.log",
    )  # fmt: skip
    client = RosClient(namespace=namespace, name="compressed_test_client")
    try:
        change = client.service(ChangeState, "tracker_node/change_state", timeout_s=60)
        state = client.service(GetState, "tracker_node/get_state", timeout_s=10)
        assert client.call(state, GetState.Request(), 10, idempotent=True).current_state.label == "unconfigured"
        for transition in (Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_ACTIVATE):
            request = ChangeState.Request(transition=Transition(id=transition))
            assert client.call(change, request, 60).success, tracker.log()
        assert client.call(state, GetState.Request(), 10, idempotent=True).current_state.label == "active"
        tracks = client.collect(TrackedObjectArray, "tracks", 50)
        publisher = client.node.create_publisher(CompressedImage, "image/compressed", 50)
        assert wait_until(lambda: publisher.get_subscription_count() > 0, 20), tracker.log()
        scene = generate_scene(5, SceneSpec(seconds=4.0, fps=10.0, difficulty="easy"))
        sent = [scene.stamp_ns(f) for f in range(20)]
        for f, stamp in enumerate(sent):
            publisher.publish(compressed_msg(scene.render_frame(f), stamp))
            time.sleep(0.05)
        assert wait_until(lambda: len(tracks) >= len(sent), 30), tracker.log()
        assert [stamp_of(t) for t in tracks] == sent and any(t.objects for t in tracks)
        request = ChangeState.Request(transition=Transition(id=Transition.TRANSITION_DEACTIVATE))
        assert client.call(change, request, 30).success
        publisher.publish(compressed_msg(scene.render_frame(25), scene.stamp_ns(25)))
        time.sleep(1.0)
        assert len(tracks) == len(sent) and tracker.alive()  # inactive: no subscription, no tracks
    finally:
        client.close()
        tracker.stop()
