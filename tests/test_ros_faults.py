"""Faults a robot left running unattended meets, each driven over DDS against node processes.

The grounding node runs in its own process with the `http` backend pointed at a model server in this
process (tests/http_server_support.py: a loopback OpenAI-compatible server whose behaviour each test
switches), and this process is its camera: frames and tracks at 10 Hz, stamped with the time since
the camera started (so source time follows the clock, as with a live camera). Faults: the model
server dies mid-answer and comes back; the server hangs (query timeout); the node is deactivated
and reactivated mid-query; the camera stops and comes back; SIGTERM to every process the package
starts, mid-query for the grounding node, leaves no process behind.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.http_server_support import MisbehavingServer, Reply, sse_chunk
from tests.ros_support import NodeProcess, RosClient, image_msg, tracks_msg, wait_until

pytestmark = pytest.mark.ros
rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed (run scripts/setup.sh)")
from action_msgs.msg import GoalStatus  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from stvg_ros_msgs.action import Ground as GroundAction  # noqa: E402
from stvg_ros_msgs.msg import GroundingResult, Target, TrackedObjectArray  # noqa: E402
from stvg_ros_msgs.srv import Ground  # noqa: E402

NAMESPACE = "/faults_test"
T0 = 1_700_000_000 * 1_000_000_000
FPS = 10
TARGET = 3
ANSWER = f"<answer>Target ID: {TARGET}, Time range: 0.00 to 0.40</answer>"
QUERY_TIMEOUT_S = 6.0
#: target_lost_timeout_s and no_image_warning_s of the node: a camera silent this long has stopped.
SILENCE_S = 2.0
#: The most a query or a transition may take beyond its own limits on a loaded 2-core machine.
MARGIN_S = 15.0
REASONING_OFF = Ground.Request.REASONING_OFF


# --------------------------------------------------------------------------------------------
# The model server


class ModelServer:
    """A loopback model server whose replies `behaviour` decides; it can die and come back on its port."""

    def __init__(self) -> None:
        self.behaviour: Callable[[Reply], object] = self.answer
        self.chats = 0  # chat requests received, over every restart
        self.mid_answer = threading.Event()  # a reply has begun (dying, dripping)
        self.die = threading.Event()
        self.server = MisbehavingServer(self._chat)
        self.port, self.url = self.server.port, self.server.url

    def _chat(self, reply: Reply) -> object:
        self.chats += 1
        return self.behaviour(reply)

    def use(self, behaviour: Callable[[Reply], object]) -> None:
        """Reply with `behaviour` from now on."""
        self.mid_answer.clear()
        self.die.clear()
        self.behaviour = behaviour

    def answer(self, reply: Reply) -> None:
        """A well-behaved stream naming TARGET."""
        pieces = [ANSWER[i : i + 10] for i in range(0, len(ANSWER), 10)]
        reply.stream(*(sse_chunk(p) for p in pieces), sse_chunk(None, "stop"), b"data: [DONE]\n\n")

    def dying(self, reply: Reply) -> None:
        """Begin the answer, then abort the connection (TCP reset) once `die` is set: a crashed server."""
        reply.start_stream()
        reply.send(sse_chunk("<answer>Target"))
        self.mid_answer.set()
        self.die.wait(60)
        reply.reset()

    def dripping(self, reply: Reply) -> None:
        """A slow model: one token every 0.2 s, until the client goes."""
        if reply.start_stream():
            self.mid_answer.set()
            while reply.send(sse_chunk("x")) and not reply.server.stopping.wait(0.2):
                pass

    @staticmethod
    def hanging(reply: Reply) -> None:
        """Accept the request, never answer."""
        reply.hang()

    def kill(self) -> None:
        """The server process dies: the port refuses connections, open ones are reset."""
        self.server.stop()
        self.die.set()

    def restart(self) -> None:
        """The server comes back on the same port."""
        self.server = MisbehavingServer(self._chat, port=self.port)


# --------------------------------------------------------------------------------------------
# The camera


def _boxes(t: float) -> dict[int, tuple[float, float, float, float]]:
    x = 10.0 + (12.0 * t) % 80.0
    return {TARGET: (x, 30.0, x + 30.0, 60.0), 5: (110.0, 70.0, 140.0, 100.0)}


def _frame(boxes: dict) -> np.ndarray:
    rgb = np.full((120, 160, 3), 90, np.uint8)
    for tid, (x1, y1, x2, y2) in boxes.items():
        rgb[int(y1) : int(y2), int(x1) : int(x2)] = (40, 200, 40) if tid == TARGET else (40, 40, 220)
    return rgb


class Camera:
    """Frames and their tracks at FPS on a thread of this process, stamped T0 + seconds since start."""

    def __init__(self, client: RosClient) -> None:
        self.image_pub = client.node.create_publisher(Image, "image", 10)
        self.tracks_pub = client.node.create_publisher(TrackedObjectArray, "tracks", 30)
        self.running = threading.Event()
        self.last_stamp_ns = 0
        self._started = time.monotonic()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="test-camera", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._closing.wait(1.0 / FPS):
            if not self.running.is_set():
                continue
            t = time.monotonic() - self._started
            stamp_ns = T0 + int(t * 1e9)
            boxes = _boxes(t)
            self.image_pub.publish(image_msg(_frame(boxes), stamp_ns))
            self.tracks_pub.publish(tracks_msg(boxes, stamp_ns))
            self.last_stamp_ns = stamp_ns

    def start(self) -> int:
        """Start publishing; returns the source time (ns) from which the frames are new."""
        resumed = T0 + int((time.monotonic() - self._started) * 1e9)
        self.running.set()
        return resumed

    def stop(self) -> None:
        """Stop publishing (the publishers stay: a camera that stops sending)."""
        self.running.clear()

    def close(self) -> None:
        self._closing.set()
        self._thread.join(timeout=5)


# --------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def model_server():
    server = ModelServer()
    try:
        yield server
    finally:
        server.die.set()
        server.server.stop()


@pytest.fixture(scope="module")
def node(model_server, tmp_path_factory):
    params = {
        "backend": "http",
        "endpoint": model_server.url,
        "model": "test-model",
        "num_frames": 4,
        "queue_size": 2,
        "reasoning": False,
        "query_timeout_s": QUERY_TIMEOUT_S,
        "target_lost_timeout_s": SILENCE_S,
        "no_image_warning_s": SILENCE_S,
        "buffer_sample_fps": 5.0,
        "diagnostics_period_s": 0.25,
    }
    args = ["-m", "stvg_ros.nodes.grounding_node", "--ros-args", "-r", f"__ns:={NAMESPACE}"]
    for key, value in params.items():
        args += ["-p", f"{key}:={value}"]
    proc = NodeProcess.python(args, tmp_path_factory.mktemp("faults") / "grounding_node.log")
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def client(node):
    ros = RosClient(namespace=NAMESPACE, name="faults_client")
    try:
        assert ros.wait_active("grounding_node", 90), node.log()
        ros.ground = ros.service(Ground, "ground", timeout_s=20)
        ros.change_state = ros.service(ChangeState, "grounding_node/change_state", timeout_s=20)
        ros.ground_action = ros.action(GroundAction, "ground", 20)
        ros.targets = ros.collect(Target, "target")
        ros.diagnostics = ros.collect(DiagnosticArray, "/diagnostics")
        ros.results = ros.collect(GroundingResult, "grounding_result")
        yield ros
    finally:
        ros.close()


@pytest.fixture(scope="module")
def camera(client):
    cam = Camera(client)
    try:
        cam.start()
        assert wait_until(lambda: _diagnostic(client, "buffer_frames") >= 3, 60), "no camera frame reached the node"
        yield cam
    finally:
        cam.close()


@pytest.fixture
def serving(model_server, camera, node, client):
    """A well-behaved model server and a running camera at the start of a test."""
    model_server.use(model_server.answer)
    camera.start()
    assert node.alive(), node.log()[-3000:]
    return model_server


# --------------------------------------------------------------------------------------------
# Helpers


def _diagnostic(client: RosClient, key: str) -> float:
    """A value of the grounding node's newest /diagnostics status (-1 before the first)."""
    for array in reversed(client.diagnostics):
        for status in array.status:
            if status.name.endswith(": grounding"):
                value = next((kv.value for kv in status.values if kv.key == key), "-1")
                return float(value) if value.replace(".", "", 1).lstrip("-").isdigit() else -1.0
    return -1.0


def ns(stamp) -> int:
    """builtin_interfaces/Time -> integer nanoseconds."""
    return stamp.sec * 1_000_000_000 + stamp.nanosec


def _ask(client: RosClient, query: str = "the green square", window: float = 0.0) -> GroundingResult:
    """Ask over the service (no reasoning) and wait for the result."""
    request = Ground.Request(query=query, window_seconds=window, reasoning=REASONING_OFF)
    return client.call(client.ground, request, QUERY_TIMEOUT_S + MARGIN_S).result


def _send_goal(client: RosClient, query: str, stages: list | None = None):
    """Send an action goal (its feedback stages appended to `stages`); the accepted goal handle."""
    goal = client.result_of(
        client.ground_action.send_goal_async(
            GroundAction.Goal(query=query, reasoning=GroundAction.Goal.REASONING_OFF),
            feedback_callback=lambda msg: stages.append(msg.feedback.stage) if stages is not None else None,
        ),
        10,
    )
    assert goal.accepted
    return goal


def _transition(client: RosClient, transition: int) -> bool:
    """Drive the grounding node's lifecycle; True when the transition succeeded."""
    request = ChangeState.Request(transition=Transition(id=transition))
    return client.call(client.change_state, request, MARGIN_S).success


def _targets_after(client: RosClient, mark: int) -> list:
    """`target` messages received after the first `mark` ones."""
    return list(client.targets)[mark:]


# --------------------------------------------------------------------------------------------
# The model server dies, hangs


def test_model_server_dies_mid_answer_then_the_next_query_works_once_it_is_back(client, serving):
    server = serving
    chat_url = f"{server.url}/chat/completions"
    server.use(server.dying)
    future = client.ground.call_async(Ground.Request(query="the green square", reasoning=REASONING_OFF))
    assert server.mid_answer.wait(QUERY_TIMEOUT_S + MARGIN_S), "the query never reached the model server"
    killed = time.monotonic()
    server.kill()
    result = client.result_of(future, MARGIN_S).result
    assert time.monotonic() - killed < MARGIN_S
    assert not result.success and result.target_id == -1
    assert chat_url in result.message and "crashed or be restarting" in result.message, result.message
    assert wait_until(lambda: any(r.message == result.message for r in client.results), 10), "not published"

    # While it is down: every query fails at once, naming the server.
    down = _ask(client)
    assert not down.success and f"cannot reach the model server {server.url}" in down.message, down.message

    server.restart()
    server.use(server.answer)
    back = _ask(client)
    assert back.success and back.target_id == TARGET, back.message


def test_a_hung_model_server_times_the_query_out_and_the_node_serves_on(client, serving):
    server = serving
    server.use(server.hanging)
    asked = time.monotonic()
    result = _ask(client)
    took = time.monotonic() - asked
    assert not result.success and f"timed out after {QUERY_TIMEOUT_S:.0f} s (query_timeout_s)" in result.message
    assert QUERY_TIMEOUT_S - 0.5 <= took <= QUERY_TIMEOUT_S + MARGIN_S, took

    goal = _send_goal(client, "the green square")
    response = client.result_of(goal.get_result_async(), QUERY_TIMEOUT_S + MARGIN_S)
    assert response.status == GoalStatus.STATUS_ABORTED
    assert "timed out" in response.result.result.message and not response.result.result.success

    server.use(server.answer)
    again = _ask(client)
    assert again.success and again.target_id == TARGET, again.message


# --------------------------------------------------------------------------------------------
# Lifecycle


def test_deactivate_mid_query_ends_it_clearly_and_activate_serves_again(client, serving):
    server = serving
    server.use(server.dripping)
    running = client.ground.call_async(Ground.Request(query="the green square", reasoning=REASONING_OFF))
    assert server.mid_answer.wait(MARGIN_S), "the query never reached the model server"
    stages: list[str] = []
    waiting = _send_goal(client, "the blue square", stages)  # queued behind the running one
    waiting_result = waiting.get_result_async()
    assert wait_until(lambda: "queued" in stages, MARGIN_S), "the action's query was not queued"

    assert _transition(client, Transition.TRANSITION_DEACTIVATE)
    result = client.result_of(running, MARGIN_S).result
    assert not result.success and "deactivated" in result.message, result.message
    assert "timed out" not in result.message
    response = client.result_of(waiting_result, MARGIN_S)
    assert response.status == GoalStatus.STATUS_ABORTED
    assert "deactivated" in response.result.result.message, response.result.result.message

    inactive = _ask(client)
    assert not inactive.success and "not active (lifecycle)" in inactive.message

    server.use(server.answer)
    assert _transition(client, Transition.TRANSITION_ACTIVATE)
    back = _ask(client)
    assert back.success and back.target_id == TARGET, back.message


# --------------------------------------------------------------------------------------------
# The camera


def test_camera_stops_target_goes_lost_then_tracking_resumes_without_stale_frames(client, serving, camera):
    answer = _ask(client)
    assert answer.success and answer.target_id == TARGET, answer.message
    mark = len(client.targets)
    assert wait_until(
        lambda: any(m.status == Target.STATUS_TRACKING and m.target_id == TARGET for m in _targets_after(client, mark)),
        MARGIN_S,
    ), "the answered target was not followed"

    # The camera stops: with no tracks at all, the target is reported lost once, after the silence.
    camera.stop()
    stopped = time.monotonic()
    mark = len(client.targets)
    assert wait_until(lambda: any(m.status == Target.STATUS_LOST for m in _targets_after(client, mark)),
                      SILENCE_S + MARGIN_S)  # fmt: skip
    assert time.monotonic() - stopped >= SILENCE_S - 1.0  # the silence, not the stop request, made it lost
    lost = [m for m in _targets_after(client, mark) if m.status == Target.STATUS_LOST]
    assert len(lost) == 1 and lost[0].target_id == TARGET and lost[0].seconds_since_seen >= SILENCE_S

    # No frames for longer than the window asked for: refused, not answered from the old frames.
    assert wait_until(lambda: time.monotonic() - stopped > SILENCE_S + 1.0, SILENCE_S + 2.0)
    recent = _ask(client, window=1.0)
    assert not recent.success and recent.target_id == -1
    assert "no camera frames for" in recent.message and f"{NAMESPACE}/image" in recent.message, recent.message
    # The whole buffered history may still be searched; the answer says how old it is.
    history = _ask(client, window=0.0)
    assert history.success, history.message
    assert "no camera frames for" in history.message and "buffered history" in history.message
    assert max(ns(s) for s in history.sampled_stamps) <= camera.last_stamp_ns

    # The camera comes back: a query about the last second uses only new frames, and tracking resumes.
    received = _diagnostic(client, "frames_received")
    resumed_ns = camera.start()
    assert wait_until(lambda: _diagnostic(client, "frames_received") >= received + 15, MARGIN_S)
    mark = len(client.targets)
    fresh = _ask(client, window=1.0)
    assert fresh.success and fresh.target_id == TARGET, fresh.message
    assert "no camera frames" not in fresh.message
    assert fresh.sampled_stamps and min(ns(s) for s in fresh.sampled_stamps) >= resumed_ns
    assert fresh.tube and min(ns(box.header.stamp) for box in fresh.tube) >= resumed_ns
    assert wait_until(
        lambda: any(
            m.status == Target.STATUS_TRACKING and m.target_id == TARGET and ns(m.header.stamp) >= resumed_ns
            for m in _targets_after(client, mark)
        ),
        MARGIN_S,
    ), "tracking did not resume"


# --------------------------------------------------------------------------------------------
# SIGTERM


def _process_table() -> dict[int, tuple[int, int]]:
    """{pid: (parent pid, process group)} of every process on this machine."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        table[int(entry.name)] = (int(fields[1]), int(fields[2]))
    return table


def _left_behind(pid: int) -> list[int]:
    """Processes of `pid`'s group (it leads its own session: NodeProcess) or whose parent it was."""
    return sorted(p for p, (parent, group) in _process_table().items() if p != pid and pid in (parent, group))


def _sigterm(proc: NodeProcess, timeout_s: float = MARGIN_S) -> float:
    """SIGTERM the process alone (as systemd or a supervisor does); it exits 0 within `timeout_s`, its
    log has no traceback or crash, and no process of its group is left. Returns the seconds it took."""
    assert proc.alive(), proc.log()[-3000:]
    sent = time.monotonic()
    os.kill(proc.proc.pid, signal.SIGTERM)
    assert wait_until(lambda: not proc.alive(), timeout_s), f"still running {timeout_s} s after SIGTERM"
    took = time.monotonic() - sent
    log = proc.log()
    assert proc.proc.returncode == 0, log[-3000:]
    for crash in ("Traceback", "Fatal Python error", "Segmentation fault"):
        assert crash not in log, log[max(0, log.find(crash) - 500) :][:4000]
    assert _left_behind(proc.proc.pid) == [], "processes left behind"
    return took


def _wait_frames(client: RosClient, topic: str, timeout_s: float) -> bool:
    """True once 3 images arrived on `topic`."""
    from rclpy.qos import qos_profile_sensor_data

    frames = client.collect(Image, topic, qos=qos_profile_sensor_data)
    return wait_until(lambda: len(frames) >= 3, timeout_s)


@pytest.mark.parametrize("name", ["tracker_node", "overlay_node", "player_node", "up"])
def test_sigterm_ends_each_process_cleanly(name, client, tiny_detector, tiny_vlm, synth_dataset, tmp_path):
    namespace = f"/sigterm_{name}"
    ros_args = ["--ros-args", "-r", f"__ns:={namespace}"]
    if name == "up":
        args = ["-m", "stvg_ros.cli.main", "up", "--namespace", namespace.strip("/"),
                "--camera-topic", f"{namespace}/camera", "--model", str(tiny_vlm.gguf_q8_0),
                "-p", f"grounding_node:mmproj={tiny_vlm.mmproj_f32}", "-p", "grounding_node:n_gpu_layers=0",
                "-p", "grounding_node:n_threads=1", "-p", f"tracker_node:detector={tiny_detector['onnx-int8']}",
                "-p", "tracker_node:threads=1"]  # fmt: skip
        ready = lambda: all(  # noqa: E731
            client.wait_active(f"{namespace}/{n}", 120) for n in ("tracker_node", "overlay_node", "grounding_node")
        )
    elif name == "player_node":
        args = ["-m", "stvg_ros.nodes.player_node", *ros_args, "-p", f"bag:={synth_dataset.bags[0]}",
                "-p", "loop:=true", "-p", "start_delay_s:=0.0"]  # fmt: skip
        ready = lambda: _wait_frames(client, f"{namespace}/image", 60)  # noqa: E731
    else:
        args = ["-m", f"stvg_ros.nodes.{name}", *ros_args]
        if name == "tracker_node":
            args += ["-p", f"detector:={tiny_detector['onnx-int8']}", "-p", "threads:=1"]
        ready = lambda: client.wait_active(f"{namespace}/{name}", 90)  # noqa: E731
    proc = NodeProcess.python(args, tmp_path / f"{name}.log")
    try:
        assert ready(), proc.log()[-3000:]
        _sigterm(proc)
    finally:
        proc.stop()


def test_sigterm_mid_query_ends_the_grounding_node_cleanly(client, serving, node):
    """Last: it ends the module's grounding node, with a query in flight on its worker thread."""
    server = serving
    server.use(server.dripping)
    server.server.client_gone.clear()
    client.ground.call_async(Ground.Request(query="the green square", reasoning=REASONING_OFF))
    assert server.mid_answer.wait(MARGIN_S), "the query never reached the model server"
    _sigterm(node)
    assert wait_until(server.server.client_gone.is_set, 5), "the node's connection to the model server stayed open"
