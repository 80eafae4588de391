"""ROS messages <-> core types: images, stamps, tracks, detections, grounding results, targets, diagnostics.

Message packages are imported inside the functions, so the module (and the ROS-free callers of
`stamp_to_ns`, e.g. evaluation) imports without a ROS install; cv_bridge is optional.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from stvg_ros.core.image_codec import decode_compressed, decode_image
from stvg_ros.core.types import Tracks

try:  # real ROS systems: cv_bridge knows every encoding; here the core codec is used instead
    from cv_bridge import CvBridge as _CvBridge  # type: ignore[import-not-found]

    _BRIDGE = _CvBridge()
except Exception:  # cv_bridge missing or broken: fall back to core/image_codec
    _BRIDGE = None


def decode_ros_image(msg) -> np.ndarray:
    """A sensor_msgs/Image or CompressedImage as RGB uint8 (H, W, 3); ImageDecodeError when it cannot.

    Uses cv_bridge where importable and the core codec (core/image_codec.py) otherwise or when
    cv_bridge rejects the message.
    """
    compressed = hasattr(msg, "format") and not hasattr(msg, "encoding")
    if _BRIDGE is not None:
        try:
            if compressed:
                return np.ascontiguousarray(_BRIDGE.compressed_imgmsg_to_cv2(msg, desired_encoding="rgb8"))
            if int(msg.height) > 0 and int(msg.width) > 0:
                return np.ascontiguousarray(_BRIDGE.imgmsg_to_cv2(msg, desired_encoding="rgb8"))
        except Exception:  # let the core codec decide and explain
            pass
    return decode_compressed(msg) if compressed else decode_image(msg)


def now_header(node, frame_id: str = ""):
    """A std_msgs/Header stamped with the node's clock now (for messages not tied to a camera frame)."""
    from std_msgs.msg import Header

    return Header(stamp=node.get_clock().now().to_msg(), frame_id=frame_id)


def diagnostic_array(node, component: str, level: int, message: str, values: Mapping[str, Any]):
    """A /diagnostics message with one status, named "<node's full name>: <component>" (hardware: the
    camera), its values as strings."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

    status = DiagnosticStatus(
        level=level, name=f"{node.get_fully_qualified_name()}: {component}", message=message, hardware_id="camera",
        values=[KeyValue(key=k, value=str(v)) for k, v in values.items()],
    )  # fmt: skip
    return DiagnosticArray(header=now_header(node), status=[status])


def stamp_to_ns(stamp) -> int:
    """builtin_interfaces/Time (or anything with sec/nanosec) -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(stamp_ns: int):
    """Integer nanoseconds -> builtin_interfaces/Time."""
    from builtin_interfaces.msg import Time

    stamp_ns = int(stamp_ns)
    return Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000)


def tracks_to_msg(tracks, header, class_names: Sequence[str] = (), camera: str = ""):
    """Tracks -> stvg_ros_msgs/TrackedObjectArray with `header` (the source image's, unchanged)."""
    from stvg_ros_msgs.msg import TrackedObject, TrackedObjectArray

    out = TrackedObjectArray(header=header, camera=camera)
    for i in range(len(tracks)):
        class_id = int(tracks.class_id[i])
        x1, y1, x2, y2 = (float(v) for v in tracks.xyxy[i])
        out.objects.append(
            TrackedObject(
                track_id=int(tracks.track_id[i]),
                label=class_names[class_id] if 0 <= class_id < len(class_names) else str(class_id),
                class_id=class_id,
                score=float(tracks.score[i]),
                x1=x1,
                y1=y1,
                x2=x2,
                y2=y2,
                detected=bool(tracks.detected[i]),
            )
        )
    return out


def tracks_from_msg(msg):
    """stvg_ros_msgs/TrackedObjectArray -> Tracks."""
    objects = msg.objects
    return Tracks(
        xyxy=np.array([[o.x1, o.y1, o.x2, o.y2] for o in objects], np.float32).reshape(-1, 4),
        track_id=np.array([o.track_id for o in objects], np.int64),
        score=np.array([o.score for o in objects], np.float32),
        class_id=np.array([o.class_id for o in objects], np.int32),
        detected=np.array([o.detected for o in objects], bool),
    )


def detection2d_fields(tracks, class_names: Sequence[str] = ()) -> list[dict]:
    """What `detections` carries for each tracked object (ROS-free): `id` (the track ID as a string),
    box `center`/`size`, hypothesis `class_id` (a name when known) and `score`. vision_msgs has no
    "predicted" flag, so a box the tracker predicted without a detection on this frame gets score 0.0:
    a consumer that thresholds scores drops it, and `tracks` (TrackedObject.detected) says it exactly."""
    fields = []
    for i in range(len(tracks)):
        x1, y1, x2, y2 = (float(v) for v in tracks.xyxy[i])
        class_id = int(tracks.class_id[i])
        detected = bool(tracks.detected[i])
        fields.append({
            "id": str(int(tracks.track_id[i])),
            "center": ((x1 + x2) / 2, (y1 + y2) / 2),
            "size": (x2 - x1, y2 - y1),
            "class_id": class_names[class_id] if 0 <= class_id < len(class_names) else str(class_id),
            "score": float(tracks.score[i]) if detected else 0.0,
            "detected": detected,
        })  # fmt: skip
    return fields


def tracks_to_detection2d(tracks, header, class_names: Sequence[str] = ()):
    """Tracks -> vision_msgs/Detection2DArray with `header` (fields: `detection2d_fields`); needs vision_msgs."""
    from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose  # optional package

    out = Detection2DArray(header=header)
    for fields in detection2d_fields(tracks, class_names):
        det = Detection2D(header=header, id=fields["id"])
        det.bbox.center.position.x, det.bbox.center.position.y = fields["center"]
        det.bbox.size_x, det.bbox.size_y = fields["size"]
        hypothesis = ObjectHypothesisWithPose()
        hypothesis.hypothesis.class_id = fields["class_id"]
        hypothesis.hypothesis.score = fields["score"]
        det.results.append(hypothesis)
        out.detections.append(det)
    return out


def image_size(msg) -> tuple[int, int] | None:
    """(width, height) of an Image; None for a CompressedImage (no size without decoding: boxes stay unclipped)."""
    width, height = int(getattr(msg, "width", 0)), int(getattr(msg, "height", 0))
    return (width, height) if width > 0 and height > 0 else None


def result_msg(outcome, query: str, frame_id: str, now, camera: str = ""):
    """GroundingOutcome (pipeline) -> stvg_ros_msgs/GroundingResult; `now` stamps the answer."""
    from std_msgs.msg import Header

    from stvg_ros_msgs.msg import GroundingResult, TubeBox

    msg = GroundingResult(
        camera=camera, query=query, success=bool(outcome.success), message=str(outcome.message or ""), model=str(outcome.model)
    )
    msg.header.stamp, msg.header.frame_id = now, frame_id
    msg.target_id = int(outcome.target_id) if outcome.success and outcome.target_id is not None else -1
    for name in ("start", "end", "clip_start"):
        value = getattr(outcome, f"{name}_ns", None)
        if value is not None:
            setattr(msg, name, ns_to_stamp(value))
    msg.start_offset = float(outcome.start_s or 0.0)
    msg.end_offset = float(outcome.end_s or 0.0)
    msg.confidence = float(outcome.confidence or 0.0)
    msg.reasoning = str(outcome.reasoning or "")
    msg.raw_answer = str(outcome.raw or "")
    msg.tube = [
        TubeBox(
            header=Header(stamp=ns_to_stamp(entry.stamp_ns), frame_id=str(entry.frame_id or frame_id)),
            x1=float(entry.xyxy[0]),
            y1=float(entry.xyxy[1]),
            x2=float(entry.xyxy[2]),
            y2=float(entry.xyxy[3]),
            interpolated=bool(entry.interpolated),
        )
        for entry in (outcome.tube or [])
    ]
    msg.sampled_stamps = [ns_to_stamp(s) for s in (outcome.sampled_stamps_ns or [])]
    return msg


def target_msg(update, header, camera: str = ""):
    """TargetUpdate (grounding/query_queue.py) -> stvg_ros_msgs/Target with `header`."""
    from stvg_ros_msgs.msg import Target

    codes = {"tracking": Target.STATUS_TRACKING, "occluded": Target.STATUS_OCCLUDED, "lost": Target.STATUS_LOST,
             "stopped": Target.STATUS_STOPPED}  # fmt: skip
    box = update.box if update.box is not None else np.zeros(4, np.float32)
    return Target(
        header=header, camera=camera, target_id=int(update.target_id), query=update.query, status=codes[update.status],
        seconds_since_seen=float(update.seconds_since_seen),
        x1=float(box[0]), y1=float(box[1]), x2=float(box[2]), y2=float(box[3]),
    )  # fmt: skip
