"""Helpers for the ROS tests (tests/test_ros_*.py): node processes and a DDS client in the test process.

Every wait has a timeout; processes are started in their own process group and killed in `stop`.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np

from stvg_ros.nodes.lifecycle import die_with_parent_hook

REPO = Path(__file__).resolve().parents[1]
DISCOVERY_SETTLE_S = 0.5


# --------------------------------------------------------------------------------------------
# Processes


class NodeProcess:
    """A child process (a node, `stvg-ros up`, a player) whose output goes to a log file."""

    def __init__(
        self, args: list[str], log_path: Path, env: dict | None = None, cwd: Path = REPO, *, inherit_env: bool = True
    ) -> None:
        """`env` is added to this process's environment, or with `inherit_env=False` is the whole of it."""
        self.args = args
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        child_env = {
            **(os.environ if inherit_env else {}),
            "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": "1",
            **(env or {}),
        }
        self.proc = subprocess.Popen(
            args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=child_env,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=die_with_parent_hook(),  # no node outlives the test process
        )

    @classmethod
    def python(cls, module_args: list[str], log_path: Path, env: dict | None = None) -> NodeProcess:
        return cls([sys.executable, *module_args], log_path, env)

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout_s: float) -> bool:
        return wait_until(lambda: text in self.log() or self.proc.poll() is not None, timeout_s) and text in self.log()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGINT (a clean rclpy shutdown), then SIGKILL of the whole group after `timeout_s`."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGINT)
                self.proc.wait(timeout=timeout_s)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                pass
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=5)
        self._log.close()
        return self.proc.returncode


def wait_until(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())


def wait_for_line(process: subprocess.Popen, text: str, timeout_s: float) -> bool:
    """True once `process` (stdout a pipe) prints the line `text`; False when it ends or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        line = process.stdout.readline()
        if not line:
            return False  # the process ended
        if line.strip() == text:
            return True
    return False


# --------------------------------------------------------------------------------------------
# A DDS client in the test process (own rclpy context, spun in a background thread)


class RosClient:
    """Publishers, subscriptions, service and action clients for one test module."""

    def __init__(self, namespace: str = "", name: str = "stvg_test_client") -> None:
        import rclpy
        from rclpy.executors import MultiThreadedExecutor

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, namespace=namespace or None, context=self.context)
        self.executor = MultiThreadedExecutor(num_threads=4, context=self.context)
        self.executor.add_node(self.node)
        self._action_nodes: list = []  # one node per action client (see `action`)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        try:
            self.executor.spin()
        except ExternalShutdownException:
            pass

    def close(self) -> None:
        import rclpy

        self.executor.shutdown(timeout_sec=5)
        for node in self._action_nodes:
            node.destroy_node()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)
        self._thread.join(timeout=5)

    # ------------------------------------------------------------- topics

    def collect(self, msg_type, topic: str, qos=10, maxlen: int = 2000) -> deque:
        """Messages received on `topic`, newest last (bounded)."""
        received: deque = deque(maxlen=maxlen)
        self.node.create_subscription(msg_type, topic, lambda msg: received.append(msg), qos)
        return received

    # ------------------------------------------------------------- services and actions

    def service(self, srv_type, name: str, timeout_s: float):
        """A client of `name` once the server is discovered, plus DISCOVERY_SETTLE_S: a reply sent
        before the server matched the client's reply reader is dropped (ros2/rmw_fastrtps#842; a
        `get_state` right after discovery went unanswered in CI)."""
        client = self.node.create_client(srv_type, name)
        if not client.wait_for_service(timeout_sec=timeout_s):
            raise TimeoutError(f"service {name} did not appear within {timeout_s} s")
        time.sleep(DISCOVERY_SETTLE_S)
        return client

    @staticmethod
    def result_of(future, timeout_s: float):
        if not wait_until(future.done, timeout_s):
            raise TimeoutError(f"no answer within {timeout_s} s")
        return future.result()

    def call(self, client, request, timeout_s: float, *, idempotent: bool = False):
        """The response within `timeout_s`. An `idempotent` request (a state or parameter read, a
        parameter set) is sent again every third of `timeout_s` while unanswered: see `service`."""
        if not idempotent:
            return self.result_of(client.call_async(request), timeout_s)
        futures = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            futures.append(client.call_async(request))
            if wait_until(lambda: any(f.done() for f in futures), min(timeout_s / 3, deadline - time.monotonic())):
                return next(f for f in futures if f.done()).result()
        raise TimeoutError(f"no answer within {timeout_s} s ({len(futures)} requests sent)")

    def wait_active(self, node_name: str, timeout_s: float) -> bool:
        """True once the lifecycle node `node_name` (relative to the namespace) reports ACTIVE."""
        from lifecycle_msgs.msg import State
        from lifecycle_msgs.srv import GetState

        deadline = time.monotonic() + timeout_s
        client = self.node.create_client(GetState, f"{node_name}/get_state")
        try:
            while time.monotonic() < deadline:
                if client.wait_for_service(timeout_sec=min(1.0, max(0.01, deadline - time.monotonic()))):
                    future = client.call_async(GetState.Request())
                    answered = wait_until(future.done, min(5.0, max(0.01, deadline - time.monotonic())))
                    if answered and future.result().current_state.id == State.PRIMARY_STATE_ACTIVE:
                        return True
                time.sleep(0.2)
            return False
        finally:
            self.node.destroy_client(client)

    def action(self, action_type, name: str, timeout_s: float):
        """An action client on a node of its own, added to the spinning executor once the client is
        built: rclpy's ActionClient registers with its node before it has its lock, and an executor
        spinning that node meanwhile dies of an AttributeError (seen under load)."""
        import rclpy
        from rclpy.action import ActionClient

        node = rclpy.create_node(f"{self.node.get_name()}_action_{len(self._action_nodes)}",
                                 namespace=self.node.get_namespace(), context=self.context)  # fmt: skip
        client = ActionClient(node, action_type, name)
        self._action_nodes.append(node)
        self.executor.add_node(node)
        if not client.wait_for_server(timeout_sec=timeout_s):
            raise TimeoutError(f"action server {name} did not appear within {timeout_s} s")
        return client


# --------------------------------------------------------------------------------------------
# Synthetic camera input published by the test


def stamp(stamp_ns: int):
    from builtin_interfaces.msg import Time

    return Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000)


def image_msg(rgb: np.ndarray, stamp_ns: int, frame_id: str = "camera"):
    from sensor_msgs.msg import Image

    msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8", step=rgb.shape[1] * 3)
    msg.data = rgb.tobytes()
    msg.header.stamp, msg.header.frame_id = stamp(stamp_ns), frame_id
    return msg


def compressed_msg(rgb: np.ndarray, stamp_ns: int, frame_id: str = "camera"):
    from sensor_msgs.msg import CompressedImage

    from stvg_ros.core.image_codec import encode_compressed

    fields = encode_compressed(rgb, "jpeg")
    msg = CompressedImage(format=fields["format"])
    msg.data = fields["data"]
    msg.header.stamp, msg.header.frame_id = stamp(stamp_ns), frame_id
    return msg


def tracks_msg(boxes: dict[int, tuple[float, float, float, float]], stamp_ns: int, frame_id: str = "camera"):
    from stvg_ros_msgs.msg import TrackedObject, TrackedObjectArray

    msg = TrackedObjectArray()
    msg.header.stamp, msg.header.frame_id = stamp(stamp_ns), frame_id
    msg.objects = [
        TrackedObject(
            track_id=tid,
            label="shape",
            class_id=0,
            score=0.9,
            x1=float(b[0]),
            y1=float(b[1]),
            x2=float(b[2]),
            y2=float(b[3]),
            detected=True,
        )
        for tid, b in boxes.items()
    ]
    return msg


def run_publisher_and_subscriber(
    subscriber: str, publisher: str, publisher_args: list[str], env: dict[str, str], logs: Path
) -> dict:
    """Run two Python scripts (`python -c`) as separate processes in `env`: the subscriber prints one
    JSON line last, which is returned; both must exit 0 (their logs in `logs`), within timeouts."""
    import json

    run = {"cwd": REPO, "env": {**env, "PYTHONUNBUFFERED": "1"}, "start_new_session": True}
    with open(logs / "subscriber.log", "wb") as sub_err, open(logs / "publisher.log", "wb") as pub_log:
        sub = subprocess.Popen([sys.executable, "-c", subscriber], stdout=subprocess.PIPE, stderr=sub_err, **run)
        pub = subprocess.Popen([sys.executable, "-c", publisher, *publisher_args], stdout=pub_log, stderr=pub_log,
                               **run)  # fmt: skip
        try:
            out, _ = sub.communicate(timeout=150)
            assert pub.wait(timeout=30) == 0, (logs / "publisher.log").read_text()
        finally:
            for process in (sub, pub):
                if process.poll() is None:
                    process.kill()
                    process.wait(timeout=10)
    assert sub.returncode == 0, (logs / "subscriber.log").read_text()[-3000:]
    return json.loads(out.decode().strip().splitlines()[-1])
