"""The grounding node on simulated time (use_sim_time, as `eval replay` and a replayed bag run it).

Its clock follows /clock, but the /clock subscription lives on the node's stream executor, not on
its MultiThreadedExecutor: there, each clock message kept the executor re-dispatching its pending
handler, which took the GIL from the tracker in the same process (a lock-step replay ran ten times
slower). The subscription returns to the node itself while it is unconfigured, and comes back to the
streams on the next configure.
"""

from __future__ import annotations

import time

import pytest

from tests.ros_support import NodeProcess, RosClient, wait_until

pytestmark = pytest.mark.ros
rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed (run scripts/setup.sh)")
from builtin_interfaces.msg import Time  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState  # noqa: E402
from rosgraph_msgs.msg import Clock  # noqa: E402

NAMESPACE = "/sim_time_test"
T0_S = 1_000_000  # simulated seconds: far from the wall clock, so a wall-time stamp cannot pass
TICK_S = 0.1


def _clock_subscribers(client: RosClient) -> set[str]:
    return {
        info.node_name
        for info in client.node.get_subscriptions_info_by_topic("/clock")
        if info.node_namespace == NAMESPACE
    }


def _sim_stamps(diagnostics, since: int) -> list[float]:
    """Header stamps (s) of the node's /diagnostics messages received after the first `since`."""
    ours = [m for m in list(diagnostics)[since:] if any(s.name.startswith(f"{NAMESPACE}/grounding_node") for s in m.status)]
    return [m.header.stamp.sec + m.header.stamp.nanosec / 1e9 for m in ours]


def test_grounding_node_follows_clock_through_its_stream_executor(tiny_vlm, tmp_path):
    node = NodeProcess.python(
        ["-m", "stvg_ros.nodes.grounding_node", "--ros-args", "-r", f"__ns:={NAMESPACE}",
         "-p", "use_sim_time:=true", "-p", f"model:={tiny_vlm.gguf_q8_0}", "-p", f"mmproj:={tiny_vlm.mmproj_f32}",
         "-p", "n_gpu_layers:=0", "-p", "n_threads:=1", "-p", "diagnostics_period_s:=0.5"],
        tmp_path / "node.log",
    )  # fmt: skip
    client = RosClient(namespace=NAMESPACE)
    ticks = 0

    def publish_clock(seconds: float) -> float:
        """Publish /clock for `seconds` of wall time at 20 Hz (simulated time runs 2x); the last time."""
        nonlocal ticks
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            ticks += 1
            total_ns = int((T0_S + ticks * TICK_S) * 1e9)
            clock_pub.publish(Clock(clock=Time(sec=total_ns // 10**9, nanosec=total_ns % 10**9)))
            time.sleep(0.05)
        return T0_S + ticks * TICK_S

    try:
        diagnostics = client.collect(DiagnosticArray, "/diagnostics")
        clock_pub = client.node.create_publisher(Clock, "/clock", 10)
        assert client.wait_active("grounding_node", 90), node.log()
        assert wait_until(lambda: _clock_subscribers(client) == {"grounding_node_streams"}, 20), (
            _clock_subscribers(client), node.log())  # fmt: skip
        seen = len(diagnostics)
        last = publish_clock(4.0)
        stamps = _sim_stamps(diagnostics, seen)
        assert stamps, node.log()  # the 0.5-s diagnostics timer runs on simulated time
        assert all(T0_S <= s <= last for s in stamps), (stamps, last)

        # Unconfigured, the node has no streams: it follows /clock itself, then the streams again.
        change = client.service(ChangeState, "grounding_node/change_state", timeout_s=10)
        for transition in (Transition.TRANSITION_DEACTIVATE, Transition.TRANSITION_CLEANUP):
            assert client.call(change, ChangeState.Request(transition=Transition(id=transition)), 30).success
        assert wait_until(lambda: _clock_subscribers(client) == {"grounding_node"}, 20), _clock_subscribers(client)
        for transition in (Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_ACTIVATE):
            assert client.call(change, ChangeState.Request(transition=Transition(id=transition)), 60).success
        assert wait_until(lambda: _clock_subscribers(client) == {"grounding_node_streams"}, 20), (
            _clock_subscribers(client))  # fmt: skip
        seen = len(diagnostics)
        first = T0_S + ticks * TICK_S
        last = publish_clock(3.0)
        stamps = _sim_stamps(diagnostics, seen)
        assert stamps and all(first <= s <= last for s in stamps), (stamps, first, last)
        assert node.alive() and "Traceback" not in node.log(), node.log()
    finally:
        client.close()
        node.stop()
