"""Camera images between processes over Fast DDS: the package's large-image profile
(config/fastdds_large_images.xml) and when the nodes apply it.

640x480 rgb8 frames (900 KB) do not fit Fast DDS's default shared-memory segment; over the UDP
fallback a best-effort subscriber loses most of them, and with ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
(set for every test by conftest.py) FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA does not help either.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from stvg_ros.nodes.dds import DDS_USER_VARIABLES, large_image_dds_settings
from tests.ros_support import run_publisher_and_subscriber

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "stvg_ros" / "config" / "fastdds_large_images.xml"
FRAMES, RATE_HZ = 20, 10.0

# Both ends in their own processes, each applying the package's DDS settings before rclpy.init,
# as the nodes do. The subscription is the tracker's: depth 1, best effort.
PUBLISHER = """
import os, sys, time
import numpy as np, rclpy
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image
from stvg_ros.core.image_codec import encode_image
from stvg_ros.nodes.dds import use_large_image_dds
use_large_image_dds()
rclpy.init()
node = rclpy.create_node("dds_image_publisher")
pub = node.create_publisher(Image, "dds_test_image", qos_profile_sensor_data)
deadline = time.monotonic() + 60
ready = os.environ["SUBSCRIBER_READY_FILE"]  # the reader matched this writer too (discovery is per side)
while not (pub.get_subscription_count() and os.path.exists(ready)) and time.monotonic() < deadline:
    time.sleep(0.05)
rgb = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
for i in range(int(sys.argv[1])):
    msg = Image(**encode_image(rgb))
    msg.header.frame_id = str(i)
    pub.publish(msg)
    time.sleep(1 / float(sys.argv[2]))
time.sleep(1.0)
rclpy.shutdown()
"""
SUBSCRIBER = """
import json, os, time
import rclpy
from sensor_msgs.msg import Image
from stvg_ros.nodes.qos import image_qos
from stvg_ros.nodes.dds import use_large_image_dds
applied = use_large_image_dds()
rclpy.init()
node = rclpy.create_node("dds_image_subscriber")
frames = set()
def on_image(msg):
    assert len(msg.data) == msg.height * msg.step == 640 * 480 * 3
    frames.add(int(msg.header.frame_id))
sub = node.create_subscription(Image, "dds_test_image", on_image, image_qos(1, "best_effort"))
ready = os.environ["SUBSCRIBER_READY_FILE"]
deadline, last = time.monotonic() + 90, None
while time.monotonic() < deadline and not (last and time.monotonic() - last > 3.0):
    if sub.get_publisher_count() and not os.path.exists(ready):
        open(ready, "w").close()
    before = len(frames)
    rclpy.spin_once(node, timeout_sec=0.1)
    last = time.monotonic() if len(frames) > before else last
print(json.dumps({"frames": sorted(frames), "settings": applied,
                  "range": os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE")}))
rclpy.shutdown()
"""


def _clean_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in DDS_USER_VARIABLES}


def test_the_profile_gives_shared_memory_room_for_several_vga_frames_and_keeps_udp():
    root = ET.parse(PROFILE).getroot()
    ns = {"dds": "http://www.eprosima.com"}
    transports = {
        t.findtext("dds:transport_id", namespaces=ns): t for t in root.iterfind(".//dds:transport_descriptor", ns)
    }
    kinds = {t.findtext("dds:type", namespaces=ns) for t in transports.values()}
    assert kinds == {"SHM", "UDPv4"}
    (shm,) = [t for t in transports.values() if t.findtext("dds:type", namespaces=ns) == "SHM"]
    assert int(shm.findtext("dds:segment_size", namespaces=ns)) >= 5 * 640 * 480 * 3  # a depth-5 publisher
    participant = root.find(".//dds:participant", ns)
    assert participant.get("is_default_profile") == "true"
    used = [e.text for e in participant.iterfind("dds:rtps/dds:userTransports/dds:transport_id", ns)]
    assert sorted(used) == sorted(transports)
    assert participant.findtext("dds:rtps/dds:useBuiltinTransports", namespaces=ns) == "false"


def test_settings_point_at_the_profile_unless_the_environment_chooses_the_transports():
    expected = {"FASTDDS_DEFAULT_PROFILES_FILE": str(PROFILE)}  # the Kilted wheels here: Fast DDS 3
    assert large_image_dds_settings({}) == expected
    assert large_image_dds_settings({"FASTDDS_BUILTIN_TRANSPORTS": ""}) == expected  # empty: not chosen
    for name in DDS_USER_VARIABLES:
        assert large_image_dds_settings({name: "chosen"}) == {}, name


def test_a_ros_install_without_the_wheels_gets_the_variable_its_fast_dds_reads(monkeypatch):
    import importlib.metadata

    def no_wheel(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", no_wheel)  # an apt ROS install: ROS_DISTRO says
    assert set(large_image_dds_settings({"ROS_DISTRO": "jazzy"})) == {"FASTRTPS_DEFAULT_PROFILES_FILE"}  # 2.14
    assert set(large_image_dds_settings({"ROS_DISTRO": "humble"})) == {"FASTRTPS_DEFAULT_PROFILES_FILE"}
    assert set(large_image_dds_settings({"ROS_DISTRO": "kilted"})) == {"FASTDDS_DEFAULT_PROFILES_FILE"}  # 3.x
    assert set(large_image_dds_settings({})) == {"FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE"}


def test_nodes_leave_the_process_transports_alone(monkeypatch):
    """Only the user (launch argument, `up --large-image-dds`) or a tool that publishes the camera
    itself applies the profile: a node's main() does not."""
    from stvg_ros.nodes.lifecycle import run_lifecycle_node

    for name in DDS_USER_VARIABLES:
        monkeypatch.delenv(name, raising=False)

    def interrupted():
        raise KeyboardInterrupt  # as Ctrl-C right after start-up

    assert run_lifecycle_node(interrupted, []) == 0
    assert not [name for name in DDS_USER_VARIABLES if name in os.environ]


@pytest.mark.ros
def test_vga_frames_reach_a_best_effort_depth_1_subscriber_in_another_process(tmp_path):
    pytest.importorskip("rclpy", reason="rclpy is not installed (run scripts/setup.sh)")
    env = {**_clean_environment(), "SUBSCRIBER_READY_FILE": str(tmp_path / "subscriber.ready")}
    report = run_publisher_and_subscriber(SUBSCRIBER, PUBLISHER, [str(FRAMES), str(RATE_HZ)], env, tmp_path)
    assert report["settings"] == {"FASTDDS_DEFAULT_PROFILES_FILE": str(PROFILE)}
    assert report["range"] == os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE")  # the tests' discovery range
    # 10 frames/s to a subscriber that does nothing else: every frame should arrive; before the
    # profile, 1-5 % did (64 KB UDP fragments lost); allow a couple for a loaded machine
    assert len(report["frames"]) >= FRAMES - 2, report["frames"]
