"""Camera image subscriptions: topic name, QoS, the no-publisher watchdog, and a keyed log throttle."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from stvg_ros.nodes.params import RELIABILITIES

__all__ = ["RELIABILITIES", "KeyedThrottle", "NoPublisherWatchdog", "image_qos", "image_subscription", "image_topic"]


def image_topic(transport: str) -> str:
    """The relative camera topic a node subscribes to: `image`, or `image/compressed`."""
    return "image/compressed" if transport == "compressed" else "image"


def image_subscription(
    node, callback: Callable, transport: str, depth: int, reliability: str, topic: str = "", **kwargs: Any
):
    """Subscribe the camera: `image` (sensor_msgs/Image) or, with transport "compressed",
    `image/compressed` (sensor_msgs/CompressedImage), with `image_qos(depth, reliability)`.
    `topic` replaces the relative name (e.g. a name already resolved by another node)."""
    from sensor_msgs.msg import CompressedImage, Image

    msg_type = CompressedImage if transport == "compressed" else Image
    return node.create_subscription(
        msg_type, topic or image_topic(transport), callback, image_qos(depth, reliability), **kwargs
    )


def image_qos(depth: int = 1, reliability: str = "best_effort"):
    """QoS for image subscriptions: KEEP_LAST `depth`, VOLATILE, the given reliability.

    BEST_EFFORT (the sensor-data default) receives from both best-effort and reliable
    publishers; RELIABLE receives nothing from a best-effort camera (a classic silent failure).
    """
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    policies = {
        "best_effort": ReliabilityPolicy.BEST_EFFORT,
        "reliable": ReliabilityPolicy.RELIABLE,
        "system_default": ReliabilityPolicy.SYSTEM_DEFAULT,
    }
    if reliability not in policies:
        raise ValueError(f"image reliability {reliability!r} is not one of {list(policies)}")
    if depth < 1:
        raise ValueError(f"QoS depth must be at least 1, got {depth}")
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=int(depth),
        reliability=policies[reliability],
        durability=DurabilityPolicy.VOLATILE,
    )


class NoPublisherWatchdog:
    """Logs a warning when subscriptions have matched no publisher for `after_s` seconds.

    When publishers exist on the topic but none matched (QoS mismatch), the warning says so and
    names their reliability. It warns again every `after_s` while nothing matches, and logs once
    when a publisher matches.
    """

    def __init__(self, node, subscriptions: Sequence, after_s: float = 5.0) -> None:
        self._node = node
        self._subscriptions = list(subscriptions)
        self._matched = False
        self.warnings = 0
        self._timer = node.create_timer(max(float(after_s), 0.1), self.check) if after_s > 0 else None

    def matched_publishers(self) -> int:
        return sum(s.get_publisher_count() for s in self._subscriptions)

    def check(self) -> bool:
        """True when some subscription has a matched publisher; warns otherwise."""
        if self.matched_publishers() > 0:
            if not self._matched:
                self._node.get_logger().info("image publisher matched")
            self._matched = True
            return True
        self._matched = False
        self.warnings += 1
        for sub in self._subscriptions:
            topic = sub.topic_name
            offered = [
                str(getattr(info.qos_profile.reliability, "name", info.qos_profile.reliability)).lower()
                for info in self._node.get_publishers_info_by_topic(topic)
            ]
            if offered:
                self._node.get_logger().warning(
                    f"{len(offered)} publisher(s) on {topic!r} but none matched: QoS mismatch? they offer "
                    f"reliability {offered}; set the image reliability parameter to match (best_effort receives both)"
                )
            else:
                self._node.get_logger().warning(f"no publisher on {topic!r} yet (check the topic name / remapping)")
        return False

    def destroy(self) -> None:
        if self._timer is not None:
            self._node.destroy_timer(self._timer)
            self._timer = None


class KeyedThrottle:
    """Log a warning at most once per `period_s` for each distinct key (e.g. the reason an image was
    dropped), so a new kind of problem is always reported at once while a flood of one kind is not.
    Remembers at most `max_keys` keys (oldest forgotten first)."""

    def __init__(self, logger, period_s: float = 5.0, max_keys: int = 64) -> None:
        self._logger, self.period_s, self.max_keys = logger, float(period_s), int(max_keys)
        self._last: dict[str, float] = {}

    def warning(self, key: str, text: str) -> bool:
        """Log `text` unless `key` was logged less than period_s ago; True when logged."""
        now = time.monotonic()
        last = self._last.pop(key, None)
        if last is not None and now - last < self.period_s:
            self._last[key] = last
            return False
        self._last[key] = now
        while len(self._last) > self.max_keys:
            del self._last[next(iter(self._last))]
        self._logger.warning(text)
        return True
