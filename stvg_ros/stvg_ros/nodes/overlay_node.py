"""overlay node: the camera image with the track IDs drawn as the model sees them, for RViz/Foxglove.

Subscribes `image` (or `image/compressed`) and `tracks`; publishes `image_annotated`
(sensor_msgs/Image, rgb8) with the source image's header unchanged. IDs are drawn by
core/render.render_ids, the same function that prepares the model's frames. Images and tracks are
paired by header stamp through a small bounded cache (no message_filters): an image waits for its
tracks at most `max_wait_s` of source time, then it is dropped (or published without IDs when
`publish_unmatched` is set). With `lazy` (default) the node draws only while `image_annotated` has
a subscriber (RViz, Foxglove, a recorder): decoding, drawing and re-encoding every camera frame
costs CPU that the tracker and the VLM need when nobody looks.

Parameters (params.OverlayParams): the drawing options (draw_boxes, min_box_side_px,
publish_unmatched, lazy) are live: set on the running node they apply to the next image; the others
are refused while configured, with the reason (ros_params.ParameterChanges).

    python -m stvg_ros.nodes.overlay_node --ros-args -r image:=/camera/image_raw
"""

from __future__ import annotations

import dataclasses

from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import QoSProfile
from sensor_msgs.msg import Image

from stvg_ros.core.image_codec import ImageDecodeError, encode_image
from stvg_ros.core.render import IdStyle, annotate
from stvg_ros.core.stamp_matcher import StampMatcher
from stvg_ros.core.types import Tracks
from stvg_ros.nodes.lifecycle import run_lifecycle_node
from stvg_ros.nodes.messages import decode_ros_image, stamp_to_ns, tracks_from_msg
from stvg_ros.nodes.params import OverlayParams
from stvg_ros.nodes.qos import KeyedThrottle, NoPublisherWatchdog, image_subscription
from stvg_ros.nodes.ros_params import ParameterChanges, declare_parameters, read_parameters
from stvg_ros_msgs.msg import TrackedObjectArray


class OverlayNode(LifecycleNode):
    def __init__(self, **kwargs) -> None:
        super().__init__("overlay_node", **kwargs)
        self.params: OverlayParams = declare_parameters(self, OverlayParams)
        self._subs: list = []
        self._pub = self._watchdog = None
        self.published = 0
        self._drop_log = KeyedThrottle(self.get_logger())
        self._parameter_changes = ParameterChanges(self, OverlayParams, self._apply_parameters)

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

    def _apply_parameters(self, changes: dict) -> None:
        """Live parameter changes (ParameterChanges, configured node): used from the next image on."""
        self.params = p = dataclasses.replace(self.params, **changes)
        self._style = IdStyle(min_box_side_px=p.min_box_side_px)

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
