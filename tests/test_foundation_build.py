"""The colcon build: both packages, generated interfaces that import and carry source headers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_colcon_lists_both_packages_with_their_build_types():
    out = subprocess.run(
        [str(Path(sys.prefix) / "bin" / "colcon"), "list", "--base-paths", "stvg_ros_msgs", "stvg_ros"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    assert "stvg_ros\tstvg_ros\t(ros.ament_python)" in out
    assert "stvg_ros_msgs\tstvg_ros_msgs\t(ros.ament_cmake)" in out


def test_install_tree_has_both_packages_registered():
    index = ROOT / "install" / "stvg_ros" / "share" / "ament_index" / "resource_index" / "packages"
    assert (index / "stvg_ros").exists()
    assert (ROOT / "install" / "stvg_ros_msgs" / "share" / "stvg_ros_msgs" / "msg" / "GroundingResult.msg").exists()
    from ament_index_python.packages import get_package_share_directory

    assert Path(get_package_share_directory("stvg_ros_msgs")).is_dir()


def test_package_manifests_are_valid_format_3():
    from catkin_pkg.package import parse_package

    for name in ("stvg_ros", "stvg_ros_msgs"):
        package = parse_package(str(ROOT / name / "package.xml"))
        package.validate()
        assert package.package_format == 3 and package.name == name
    msgs = parse_package(str(ROOT / "stvg_ros_msgs" / "package.xml"))
    assert "rosidl_interface_packages" in [g.name for g in msgs.member_of_groups]


def test_generated_interfaces_import_and_frame_messages_carry_a_header():
    from std_msgs.msg import Header

    from stvg_ros_msgs.action import Ground as GroundAction
    from stvg_ros_msgs.msg import GroundingResult, Target, TrackedObject, TrackedObjectArray, TubeBox
    from stvg_ros_msgs.srv import Ground

    for frame_message in (TrackedObjectArray, TubeBox, GroundingResult, Target):
        assert isinstance(frame_message().header, Header)
    obj = TrackedObject(track_id=3, label="person", score=0.9, x1=1.0, y1=2.0, x2=3.0, y2=4.0)
    assert (obj.track_id, obj.label) == (3, "person")
    result = GroundingResult()
    for field in ("query", "success", "message", "target_id", "start", "end", "start_offset", "end_offset",
                  "confidence", "reasoning", "raw_answer", "tube", "sampled_stamps", "clip_start", "model"):
        assert hasattr(result, field), field
    request = Ground.Request(query="the red ball", window_seconds=0.0, reasoning=Ground.Request.REASONING_OFF)
    assert request.reasoning == 2
    goal = GroundAction.Goal(query="q", window_seconds=5.0, reasoning=GroundAction.Goal.REASONING_ON)
    assert goal.window_seconds == 5.0
    assert hasattr(GroundAction.Feedback(), "stage") and hasattr(GroundAction.Feedback(), "progress")


@pytest.mark.ros
def test_custom_types_cross_a_real_dds_publisher_in_this_process():
    import rclpy

    from stvg_ros_msgs.msg import TrackedObject, TrackedObjectArray

    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        node = rclpy.create_node("foundation_probe", context=context)
        received = []
        node.create_subscription(TrackedObjectArray, "probe", received.append, 10)
        pub = node.create_publisher(TrackedObjectArray, "probe", 10)
        executor = rclpy.executors.SingleThreadedExecutor(context=context)
        executor.add_node(node)
        msg = TrackedObjectArray(objects=[TrackedObject(track_id=7)])
        msg.header.frame_id = "camera"
        for _ in range(50):
            pub.publish(msg)
            executor.spin_once(timeout_sec=0.1)
            if received:
                break
        assert received and received[0].objects[0].track_id == 7 and received[0].header.frame_id == "camera"
    finally:
        rclpy.shutdown(context=context)
