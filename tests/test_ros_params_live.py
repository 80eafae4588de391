"""Parameters of running nodes, set over DDS (rcl_interfaces SetParameters, as `ros2 param set` does),
and a clean Ctrl-C: node processes in their own namespaces, this process their camera and client.

A live-tunable parameter takes effect on the running node (the tracker's `conf` in /diagnostics,
the grounding node's `num_frames` in the next answer's sampled frames); one read on configure is
refused with the reason while the node is configured and accepted once it is unconfigured; a value
outside the range, of the wrong type, or of a read-only parameter is refused. SIGINT (Ctrl-C) ends
each node with exit code 0 and no error in its log, the tracker with frames in flight.
"""

from __future__ import annotations

import os
import signal
import threading

import numpy as np
import pytest

from tests.http_server_support import MisbehavingServer, Reply, sse_chunk
from tests.ros_support import NodeProcess, RosClient, image_msg, tracks_msg, wait_until

pytestmark = pytest.mark.ros
rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed (run scripts/setup.sh)")
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState  # noqa: E402
from rcl_interfaces.msg import SetParametersResult  # noqa: E402
from rcl_interfaces.srv import DescribeParameters, GetParameters, SetParameters  # noqa: E402
from rclpy.parameter import Parameter, parameter_value_to_python  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from stvg_ros.nodes.ros_params import READ_ON_CONFIGURE  # noqa: E402
from stvg_ros_msgs.msg import TrackedObjectArray  # noqa: E402
from stvg_ros_msgs.srv import Ground  # noqa: E402

TRACKER, OVERLAY, GROUNDING = (
    "/live_tracker/tracker_node",
    "/live_overlay/overlay_node",
    "/live_grounding/grounding_node",
)
T0 = 1_700_000_000 * 1_000_000_000
FPS = 10
ANSWER = "<answer>Target ID: 3, Time range: 0.00 to 0.40</answer>"
#: The most a start, a transition or an answer may take on a loaded 2-core machine.
TIMEOUT_S = 90.0
#: What a clean exit's log never holds.
ERRORS = ("cannot use Destroyable", "Traceback", "[ERROR]", "Fatal Python error", "Segmentation fault")


# --------------------------------------------------------------------------------------------
# Fixtures


def _answer(reply: Reply) -> None:
    reply.stream(sse_chunk(ANSWER), sse_chunk(None, "stop"), b"data: [DONE]\n\n")


@pytest.fixture(scope="module")
def model_server():
    server = MisbehavingServer(_answer)
    try:
        yield server
    finally:
        server.stop()


def _start(module: str, namespace: str, log, **params) -> NodeProcess:
    args = ["-m", f"stvg_ros.nodes.{module}", "--ros-args", "-r", f"__ns:={namespace}"]
    for key, value in params.items():
        args += ["-p", f"{key}:={value}"]
    return NodeProcess.python(args, log)


@pytest.fixture(scope="module")
def nodes(tiny_detector, model_server, tmp_path_factory):
    """The three nodes, each in its own namespace, self-activating (autostart)."""
    logs = tmp_path_factory.mktemp("params_live")
    procs = {
        TRACKER: _start("tracker_node", "/live_tracker", logs / "tracker.log", detector=tiny_detector["onnx-int8"],
                        threads=1, diagnostics_period_s=0.25),
        OVERLAY: _start("overlay_node", "/live_overlay", logs / "overlay.log"),
        GROUNDING: _start("grounding_node", "/live_grounding", logs / "grounding.log", backend="http",
                          endpoint=model_server.url, model="test-model", num_frames=4, reasoning=False,
                          buffer_sample_fps=5.0, query_timeout_s=30.0),
    }  # fmt: skip
    try:
        yield procs
    finally:
        for proc in procs.values():
            proc.stop()


@pytest.fixture(scope="module")
def client(nodes):
    ros = RosClient(name="params_live_client")
    try:
        for name, proc in nodes.items():
            assert ros.wait_active(name, TIMEOUT_S), proc.log()[-3000:]
        ros.diagnostics = ros.collect(DiagnosticArray, "/diagnostics")
        yield ros
    finally:
        ros.close()


class Camera:
    """Frames at FPS for the tracker, frames and tracks for the grounding node (target 3 moving)."""

    def __init__(self, client: RosClient) -> None:
        node = client.node
        self.pubs = [node.create_publisher(Image, "/live_tracker/image", 10),
                     node.create_publisher(Image, "/live_grounding/image", 10)]  # fmt: skip
        self.tracks = node.create_publisher(TrackedObjectArray, "/live_grounding/tracks", 30)
        self.sent = 0
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="test-camera", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._closing.wait(1.0 / FPS):
            t = self.sent / FPS
            x = 10.0 + (12.0 * t) % 80.0
            boxes = {3: (x, 30.0, x + 30.0, 60.0), 5: (110.0, 70.0, 140.0, 100.0)}
            rgb = np.full((120, 160, 3), 90, np.uint8)
            for tid, (x1, y1, x2, y2) in boxes.items():
                rgb[int(y1) : int(y2), int(x1) : int(x2)] = (40, 200, 40) if tid == 3 else (40, 40, 220)
            stamp_ns = T0 + int(t * 1e9)
            for pub in self.pubs:
                pub.publish(image_msg(rgb, stamp_ns))
            self.tracks.publish(tracks_msg(boxes, stamp_ns))
            self.sent += 1

    def close(self) -> None:
        self._closing.set()
        self._thread.join(timeout=5)


@pytest.fixture(scope="module")
def camera(client):
    cam = Camera(client)
    try:
        yield cam
    finally:
        cam.close()


# --------------------------------------------------------------------------------------------
# Helpers


def _set(client: RosClient, node: str, name: str, value) -> SetParametersResult:
    """Set one parameter of `node` over its SetParameters service; the node's answer."""
    service = client.service(SetParameters, f"{node}/set_parameters", timeout_s=20)
    request = SetParameters.Request(parameters=[Parameter(name, value=value).to_parameter_msg()])
    (result,) = client.call(service, request, 20, idempotent=True).results
    return result


def _get(client: RosClient, node: str, name: str):
    service = client.service(GetParameters, f"{node}/get_parameters", timeout_s=20)
    (value,) = client.call(service, GetParameters.Request(names=[name]), 20, idempotent=True).values
    return parameter_value_to_python(value)


def _transition(client: RosClient, node: str, transition: int) -> bool:
    service = client.service(ChangeState, f"{node}/change_state", timeout_s=20)
    return client.call(service, ChangeState.Request(transition=Transition(id=transition)), TIMEOUT_S).success


def _tracker_diagnostic(client: RosClient, key: str) -> str | None:
    """A value of the tracker's newest /diagnostics status (None before the first)."""
    for array in reversed(client.diagnostics):
        for status in array.status:
            if status.name == f"{TRACKER}: tracker":
                return next((kv.value for kv in status.values if kv.key == key), None)
    return None


def _ask(client: RosClient) -> object:
    service = client.service(Ground, "/live_grounding/ground", timeout_s=20)
    return client.call(service, Ground.Request(query="the green square", reasoning=Ground.Request.REASONING_OFF),
                       TIMEOUT_S).result  # fmt: skip


# --------------------------------------------------------------------------------------------
# Parameters


def test_tracker_live_change_takes_effect_and_bad_values_are_refused_with_the_reason(client, nodes, camera):
    assert wait_until(lambda: _tracker_diagnostic(client, "conf") not in (None, "0.42"), TIMEOUT_S)
    assert wait_until(lambda: _tracker_diagnostic(client, "input_hz") not in (None, "0.0"), TIMEOUT_S), "no frames"
    result = _set(client, TRACKER, "conf", 0.42)
    assert result.successful, result.reason
    # the running detector uses it: /diagnostics reports the detector's threshold
    assert wait_until(lambda: _tracker_diagnostic(client, "conf") == "0.42", 10), _tracker_diagnostic(client, "conf")
    assert nodes[TRACKER].wait_for_log("parameters changed: conf=0.42 (in effect now)", 10)

    refused = {
        ("detector", "yolo11n"): READ_ON_CONFIGURE,  # read on configure: refused while active
        ("conf", 1.5): "",  # a double outside [0, 1] (rclpy's range check says why)
        ("conf", 2): "conf must be in [0.0, 1.0], got 2.0",  # an integer for the float parameter
        ("conf", "high"): "must be float",
        ("autostart", False): "read-only",
        ("max_det", 0): "",  # an integer outside [1, 10000]
    }
    for (name, value), reason in refused.items():
        result = _set(client, TRACKER, name, value)
        assert not result.successful, (name, value)
        assert result.reason and reason in result.reason, (name, value, result.reason)
    assert _get(client, TRACKER, "conf") == 0.42 and _get(client, TRACKER, "max_det") == 300
    assert _get(client, TRACKER, "detector").endswith("yolo-synth-tiny-int8.onnx")
    assert _tracker_diagnostic(client, "conf") == "0.42"
    assert nodes[TRACKER].alive()


def test_grounding_num_frames_change_shapes_the_next_answer(client, nodes, camera):
    assert wait_until(lambda: camera.sent >= 20, TIMEOUT_S)
    first = _ask(client)
    assert first.success and len(first.sampled_stamps) == 4, first.message
    result = _set(client, GROUNDING, "num_frames", 2)
    assert result.successful, result.reason
    second = _ask(client)
    assert second.success and len(second.sampled_stamps) == 2, second.message
    result = _set(client, GROUNDING, "backend", "transformers")
    assert not result.successful and READ_ON_CONFIGURE in result.reason and "backend" in result.reason
    result = _set(client, GROUNDING, "num_frames", 0)  # outside [1, 256]
    assert not result.successful and result.reason
    assert _get(client, GROUNDING, "num_frames") == 2 and _get(client, GROUNDING, "backend") == "http"


def test_a_parameter_read_on_configure_is_accepted_while_unconfigured(client, nodes):
    result = _set(client, OVERLAY, "draw_boxes", True)  # live: accepted while active
    assert result.successful, result.reason
    result = _set(client, OVERLAY, "cache_size", 5)
    assert not result.successful and "cache_size" in result.reason and READ_ON_CONFIGURE in result.reason
    assert _transition(client, OVERLAY, Transition.TRANSITION_DEACTIVATE)
    assert not _set(client, OVERLAY, "cache_size", 5).successful  # inactive is configured too
    assert _transition(client, OVERLAY, Transition.TRANSITION_CLEANUP)
    result = _set(client, OVERLAY, "cache_size", 5)
    assert result.successful, result.reason
    assert not _set(client, OVERLAY, "cache_size", 0).successful  # the range holds when unconfigured too
    assert nodes[OVERLAY].wait_for_log("parameters changed: cache_size=5 (read on configure)", 10)
    for transition in (Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_ACTIVATE):
        assert _transition(client, OVERLAY, transition), nodes[OVERLAY].log()[-3000:]
    assert _get(client, OVERLAY, "cache_size") == 5 and _get(client, OVERLAY, "draw_boxes") is True


def test_descriptors_say_range_read_only_and_when_a_change_applies(client, nodes):
    service = client.service(DescribeParameters, f"{GROUNDING}/describe_parameters", timeout_s=20)
    names = ["num_frames", "query_timeout_s", "backend", "autostart"]
    described = client.call(service, DescribeParameters.Request(names=names), 20, idempotent=True).descriptors
    num_frames, timeout, backend, autostart = described
    assert [(r.from_value, r.to_value) for r in num_frames.integer_range] == [(1, 256)]
    assert [(r.from_value, r.to_value) for r in timeout.floating_point_range] == [(0.1, 86400.0)]
    assert num_frames.additional_constraints.startswith("live") and timeout.additional_constraints.startswith("live")
    assert backend.additional_constraints == READ_ON_CONFIGURE and not backend.read_only
    assert "llama_cpp" in backend.description  # the choices
    assert autostart.read_only and not num_frames.read_only


# --------------------------------------------------------------------------------------------
# Ctrl-C


@pytest.mark.parametrize("name", [TRACKER, OVERLAY, GROUNDING])
def test_sigint_ends_the_node_cleanly(name, client, nodes, camera):
    """Last: SIGINT (Ctrl-C) to the node's process alone, the camera still sending."""
    proc = nodes[name]
    assert client.wait_active(name, TIMEOUT_S), proc.log()[-3000:]
    if name == TRACKER:  # frames in flight on the tracker's processing thread
        sent = camera.sent
        assert wait_until(lambda: camera.sent >= sent + 5, 10)
    os.kill(proc.proc.pid, signal.SIGINT)
    assert wait_until(lambda: not proc.alive(), 30), f"{name} still running 30 s after SIGINT"
    log = proc.log()
    assert proc.proc.returncode == 0, log[-3000:]
    for error in ERRORS:
        assert error not in log, log[max(0, log.find(error) - 1000) :][:4000]


@pytest.mark.parametrize(
    ("module", "param", "value", "expected"),
    [
        ("stvg_ros.nodes.tracker_node", "conf", "5.0", "conf out of range"),
        ("stvg_ros.nodes.grounding_node", "num_frames", "0", "num_frames out of range"),
        ("stvg_ros.nodes.overlay_node", "min_box_side_px", "-4.0", "min_box_side_px out of range"),
    ],
)
def test_a_bad_value_given_at_start_is_one_line_and_exit_code_2(tmp_path, module, param, value, expected):
    node = NodeProcess.python(["-m", module, "--ros-args", "-p", f"{param}:={value}"], tmp_path / "node.log")
    try:
        assert wait_until(lambda: not node.alive(), 60), node.log()
        assert node.proc.returncode == 2, node.log()
        log = node.log()
        assert "bad parameter" in log and expected in log and "Traceback" not in log, log
    finally:
        node.stop()
