"""StreamSpinner: a node's high-rate subscriptions on an internal node with an executor of their own.

A node that serves blocking queries needs a MultiThreadedExecutor, and rclpy's re-polls its wait set
as long as a ready subscription waits for its busy callback group: 30 Hz camera and tracks streams
on such an executor keep it spinning, which takes the GIL from every other thread of the process
(measured in one process with the tracker: its p95 latency 0.34 s instead of 55 ms with YOLO11n).
A SingleThreadedExecutor spinning only the streams costs almost nothing.

/clock is such a stream too: with use_sim_time, rclpy subscribes the owner itself to /clock, and
on a MultiThreadedExecutor each clock message kept the executor re-submitting its pending handler
(measured in a replayed bag: 20 000 dispatches for 300 clock messages, the tracker in the same
process slowed ten-fold). So the owner's time source follows /clock through the internal node;
the owner's clock, its `use_sim_time` parameter and that parameter's live changes are unchanged.

Topics must be resolved by the owner (`owner.resolve_topic_name`), whose namespace and remaps
apply: the internal node ignores the process's global arguments, since a launch file's node-name
remap (`__node:=`) would otherwise give it the owner's name.
"""

from __future__ import annotations

import threading

import rclpy
from rclpy.executors import SingleThreadedExecutor

from stvg_ros.nodes.lifecycle import spin_until_shutdown


class StreamSpinner:
    """`node`: an internal node named `<owner>_<suffix>`, spun on its own thread until `destroy()`."""

    def __init__(self, owner, suffix: str = "streams") -> None:
        self.node = rclpy.create_node(
            f"{owner.get_name()}_{suffix}",
            namespace=owner.get_namespace(),
            context=owner.context,
            use_global_arguments=False,
            start_parameter_services=False,
        )
        self._owner = owner
        self._clock_moved = _clock_through(owner, self.node)
        self._executor = SingleThreadedExecutor(context=owner.context)
        self._executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, name=f"{owner.get_name()}-{suffix}", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        spin_until_shutdown(self._executor)  # SIGINT/SIGTERM end it quietly, even mid-wait

    def destroy(self, timeout_s: float = 5.0) -> None:
        self._executor.shutdown(timeout_sec=timeout_s)
        self._thread.join(timeout=timeout_s)
        if self._clock_moved and self._owner.context.ok():  # back to the owner (a reconfigure follows)
            _clock_through(self._owner, self._owner)
        self._clock_moved = False
        self.node.destroy_node()


def _clock_through(owner, node) -> bool:
    """Let `owner`'s time source subscribe to /clock through `node` (the owner itself to give it
    back), keeping whether ROS time is active. False where this rclpy keeps no time source on the
    node (/clock then stays on the owner)."""
    time_source = getattr(owner, "_time_source", None)  # where rclpy's Node keeps its TimeSource
    if time_source is None or not hasattr(time_source, "attach_node"):
        return False
    active = time_source.ros_time_is_active
    if node is owner:  # attach_node adds its use_sim_time callback again: the owner keeps one
        owner.remove_on_set_parameters_callback(time_source._on_parameter_event)
    time_source.ros_time_is_active = False  # drops the /clock subscription, wherever it is
    time_source.attach_node(node)  # (reads `node`'s use_sim_time)
    time_source.ros_time_is_active = active  # subscribes through `node` when ROS time is active
    return True
