"""The tracker's `detections` topic (vision_msgs/Detection2DArray): track IDs, boxes, classes, and
predicted boxes marked (score 0.0) — the fields ROS-free, the message where vision_msgs is installed."""

from __future__ import annotations

import numpy as np
import pytest

from stvg_ros.core.types import Tracks
from stvg_ros.nodes.messages import detection2d_fields


def _tracks() -> Tracks:
    return Tracks(
        xyxy=np.array([[10, 20, 50, 80], [100, 100, 120, 140]], np.float32),
        track_id=np.array([7, 12], np.int64),
        score=np.array([0.9, 0.6], np.float32),
        class_id=np.array([0, 5], np.int32),
        detected=np.array([True, False]),
    )


def test_fields_carry_track_ids_boxes_classes_and_mark_predicted_boxes():
    detected, predicted = detection2d_fields(_tracks(), class_names=["person"])
    assert detected == {"id": "7", "center": (30.0, 50.0), "size": (40.0, 60.0), "class_id": "person",
                        "score": pytest.approx(0.9), "detected": True}  # fmt: skip
    assert predicted["id"] == "12" and predicted["class_id"] == "5"  # no name for class 5: its number
    assert predicted["score"] == 0.0 and predicted["detected"] is False  # predicted, not detected
    assert detection2d_fields(Tracks.empty()) == []


def test_the_message_holds_the_same_fields():
    pytest.importorskip(
        "vision_msgs.msg",
        reason="vision_msgs is not installed (no PyPI wheel; on a ROS install: apt install ros-$ROS_DISTRO-vision-msgs)",
    )
    from std_msgs.msg import Header

    from stvg_ros.nodes.messages import tracks_to_detection2d

    header = Header(frame_id="camera")
    msg = tracks_to_detection2d(_tracks(), header, class_names=["person"])
    assert msg.header.frame_id == "camera" and [d.id for d in msg.detections] == ["7", "12"]
    first, second = msg.detections
    assert (first.bbox.center.position.x, first.bbox.center.position.y) == (30.0, 50.0)
    assert (first.bbox.size_x, first.bbox.size_y) == (40.0, 60.0)
    assert first.results[0].hypothesis.class_id == "person"
    assert first.results[0].hypothesis.score == pytest.approx(0.9)
    assert second.results[0].hypothesis.score == 0.0
