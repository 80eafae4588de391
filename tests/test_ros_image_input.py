"""ImageInput (nodes/image_input.py) says where lost camera frames went, by cause.

Two OS processes over Fast DDS, both WITHOUT the large-image profile: 640x480 frames then go over
UDP in 64 KB fragments and most are lost on the way, which DDS reports to the reader (its
message-lost event) and ImageInput counts as `lost_in_transport`, not as frames the node itself
lost (reader queue, backlog).
"""

from __future__ import annotations

import os

import pytest

from stvg_ros.nodes.dds import DDS_USER_VARIABLES
from tests.ros_support import run_publisher_and_subscriber

pytestmark = pytest.mark.ros
pytest.importorskip("rclpy", reason="rclpy is not installed (run scripts/setup.sh)")

FRAMES = 60

PUBLISHER = """
import sys, time
import numpy as np, rclpy
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image
from stvg_ros.core.image_codec import encode_image
rclpy.init()
node = rclpy.create_node("lossy_camera", namespace="/image_input_test")
pub = node.create_publisher(Image, "image", qos_profile_sensor_data)
deadline = time.monotonic() + 60
while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
    time.sleep(0.05)
time.sleep(1.0)
rgb = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
for i in range(int(sys.argv[1])):
    pub.publish(Image(**encode_image(rgb)))
    time.sleep(1 / 30)
time.sleep(1.0)
rclpy.shutdown()
"""

SUBSCRIBER = """
import json, time
import rclpy
from rclpy.executors import SingleThreadedExecutor
from stvg_ros.nodes.image_input import ImageInput
rclpy.init()
node = rclpy.create_node("image_input_test_node", namespace="/image_input_test")
handled = []
images = ImageInput(node, lambda frames: handled.extend(frames), depth=10)
executor = SingleThreadedExecutor()
executor.add_node(node)
deadline, last = time.monotonic() + 90, None
while time.monotonic() < deadline and not (last and time.monotonic() - last > 4.0):
    before = images.counts()["frames_received"] + images.counts()["lost_in_transport"]
    executor.spin_once(timeout_sec=0.1)
    after = images.counts()["frames_received"] + images.counts()["lost_in_transport"]
    last = time.monotonic() if after > before else last
time.sleep(0.5)
print(json.dumps({**images.counts(), "handled": len(handled)}))
images.destroy()
rclpy.shutdown()
"""


def test_frames_lost_on_the_wire_are_counted_as_transport_losses(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in DDS_USER_VARIABLES}  # default transports: UDP fallback
    counts = run_publisher_and_subscriber(SUBSCRIBER, PUBLISHER, [str(FRAMES)], env, tmp_path)
    # every frame the reader got reached the handler; the losses are the transport's, and say so
    assert counts["handled"] == counts["frames_received"] < FRAMES
    assert counts["lost_in_transport"] > 0 and counts["dropped_backlog"] == counts["decode_errors"] == 0
    parts = ("lost_in_transport", "lost_in_reader_queue", "dropped_backlog", "decode_errors")
    assert counts["frames_lost"] == sum(counts[key] for key in parts)
    assert counts["frames_received"] + counts["lost_in_transport"] <= FRAMES + 1
