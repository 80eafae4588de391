"""overlay node: the camera image with the track IDs drawn as the model sees them, for RViz/Foxglove.

Subscribes `image` (or `image/compressed`) and `tracks`; publishes `image_annotated`
(sensor_msgs/Image, rgb8) with the source image's header unchanged. IDs are drawn by
core/render.render_ids, the same function that prepares the model's frames. Images and tracks are
paired by header stamp through a small bounded cache (no message_filters): an image waits for its
tracks at most `max_wait_s` of source time, then it is dropped (or published without IDs when
`publish_unmatched` is set). With `lazy` (default) the node draws only while `image_annotated` has
a subscriber (RViz, Foxglove, a recorder): decoding, drawing and re-encoding every camera frame
costs CPU that the tracker and the VLM need when nobody looks.

    python -m stvg_ros.nodes.overlay_node --ros-args -r image:=/camera/image_raw
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import cv2
import numpy as np
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import QoSProfile
from sensor_msgs.msg import Image

from stvg_ros.core.image_codec import ImageDecodeError, encode_image
from stvg_ros.core.render import IdStyle, render_ids
from stvg_ros.core.types import Tracks
from stvg_ros.nodes.common import (
    RELIABILITIES,
    KeyedThrottle,
    NoPublisherWatchdog,
    declare_parameters,
    decode_ros_image,
    image_subscription,
    param,
    parameters_markdown,
    read_parameters,
    run_lifecycle_node,
    stamp_to_ns,
    tracks_from_msg,
)
from stvg_ros_msgs.msg import TrackedObjectArray


@dataclass
class OverlayParams:
    """Parameters of the overlay node (config/overlay.yaml; table in docs/perception.md)."""

    autostart: bool = param(True, "configure and activate on start (false: wait for a lifecycle manager)")
    image_transport: str = param(
        "raw", "camera input: Image on `image` or CompressedImage on `image/compressed`", choices=("raw", "compressed")
    )
    image_reliability: str = param("best_effort", "QoS reliability of the image subscription", choices=RELIABILITIES)
    cache_size: int = param(30, "images and track messages kept while waiting for their partner (each)")
    max_wait_s: float = param(1.0, "longest an image waits for its tracks, in source time")
    publish_unmatched: bool = param(False, "publish images whose tracks never came, without IDs")
    draw_boxes: bool = param(False, "also draw thin boxes (debug; the model itself sees only IDs)")
    min_box_side_px: float = param(0.0, "skip IDs of objects smaller than this (0: draw all, the trained drawing)")
    no_image_warning_s: float = param(5.0, "warn when no image publisher has matched for this long (0: never)")
    lazy: bool = param(True, "draw and publish only while `image_annotated` has a subscriber")


def parameters_table() -> str:
    return parameters_markdown(OverlayParams)


class StampMatcher:
    """Pairs items of two streams by stamp; bounded, oldest evicted first. ROS-free, thread-safe."""

    def __init__(self, size: int = 30, max_wait_ns: int = 1_000_000_000) -> None:
        self.size, self.max_wait_ns = max(1, int(size)), int(max_wait_ns)
        self._images: OrderedDict[int, object] = OrderedDict()
        self._tracks: OrderedDict[int, object] = OrderedDict()
        self._lock = threading.Lock()
        self.expired: list[tuple[int, object]] = []  # images that waited too long (drained by the caller)

    def _put(self, own: OrderedDict, other: OrderedDict, stamp_ns: int, item) -> object | None:
        with self._lock:
            if stamp_ns in other:
                return other.pop(stamp_ns)
            own[stamp_ns] = item
            own.move_to_end(stamp_ns)
            while len(own) > self.size:
                evicted = own.popitem(last=False)
                if own is self._images:
                    self.expired.append(evicted)
            if own is self._tracks:  # images older than the newest tracks by max_wait will not be matched
                for stamp in [s for s in self._images if s < stamp_ns - self.max_wait_ns]:
                    self.expired.append((stamp, self._images.pop(stamp)))
            return None

    def add_image(self, stamp_ns: int, image) -> object | None:
        """Returns the tracks of this stamp when they arrived first, else None (the image waits)."""
        return self._put(self._images, self._tracks, stamp_ns, image)

    def add_tracks(self, stamp_ns: int, tracks) -> object | None:
        """Returns the image of this stamp when it arrived first, else None (the tracks wait)."""
        return self._put(self._tracks, self._images, stamp_ns, tracks)

    def drain_expired(self) -> list[tuple[int, object]]:
        with self._lock:
            out, self.expired = self.expired, []
        return out


def annotate(rgb: np.ndarray, tracks: Tracks, draw_boxes: bool = False, style: IdStyle = IdStyle()) -> np.ndarray:
    """The overlay image: optional thin boxes, then the IDs exactly as the model sees them."""
    if draw_boxes and len(tracks):
        rgb = rgb.copy()
        thickness = max(1, round(max(rgb.shape[:2]) / 640))
        for x1, y1, x2, y2 in tracks.xyxy.astype(int):
            cv2.rectangle(rgb, (x1, y1), (x2, y2), (0, 255, 0), thickness)
    return render_ids(rgb, tracks, style)


class OverlayNode(LifecycleNode):
    def __init__(self, **kwargs) -> None:
        super().__init__("overlay_node", **kwargs)
        self.params: OverlayParams = declare_parameters(self, OverlayParams)
        self._subs: list = []
        self._pub = self._watchdog = None
        self.published = 0
        self._drop_log = KeyedThrottle(self.get_logger())

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.params = p = read_parameters(self, OverlayParams)
        except ValueError as exc:
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        self._matcher = StampMatcher(p.cache_size, int(p.max_wait_s * 1e9))
        self._style = IdStyle(min_box_side_px=p.min_box_side_px)
        self._pub = self.create_lifecycle_publisher(Image, "image_annotated", QoSProfile(depth=2))
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        p = self.params
        image_sub = image_subscription(self, self._on_image, p.image_transport, 2, p.image_reliability)
        tracks_sub = self.create_subscription(TrackedObjectArray, "tracks", self._on_tracks, 10)
        self._subs = [image_sub, tracks_sub]
        self._watchdog = NoPublisherWatchdog(self, [image_sub], after_s=p.no_image_warning_s)
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        if self._pub is not None:
            self.destroy_lifecycle_publisher(self._pub)
            self._pub = None
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _release(self) -> None:
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs = []
        if self._watchdog is not None:
            self._watchdog.destroy()
            self._watchdog = None

    def _idle(self) -> bool:
        """True when nobody listens and the node is lazy: the frame is not worth drawing."""
        return self.params.lazy and self._pub.get_subscription_count() == 0

    def _on_image(self, msg) -> None:
        if self._idle():
            return
        tracks = self._matcher.add_image(stamp_to_ns(msg.header.stamp), msg)
        if tracks is not None:
            self._publish(msg, tracks)
        self._flush_expired()

    def _on_tracks(self, msg: TrackedObjectArray) -> None:
        if self._idle():
            return
        tracks = tracks_from_msg(msg)
        image = self._matcher.add_tracks(stamp_to_ns(msg.header.stamp), tracks)
        if image is not None:
            self._publish(image, tracks)
        self._flush_expired()

    def _flush_expired(self) -> None:
        for _, image in self._matcher.drain_expired():
            if self.params.publish_unmatched:
                self._publish(image, Tracks.empty())

    def _publish(self, image_msg, tracks: Tracks) -> None:
        try:
            rgb = decode_ros_image(image_msg)
        except ImageDecodeError as exc:
            self._drop_log.warning(str(exc).split(":")[0], f"dropping image: {exc}")
            return
        out = Image(header=image_msg.header, **encode_image(annotate(rgb, tracks, self.params.draw_boxes, self._style)))
        self._pub.publish(out)
        self.published += 1


def main(args: list[str] | None = None) -> int:
    return run_lifecycle_node(OverlayNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
