"""Plays a rosbag2 or a video file as a camera: sensor_msgs/Image on `image` (remappable).

Bags keep their header stamps and frame ids; a bag of CompressedImage is published as is on
`<image topic>/compressed` (image_transport's naming; it follows a remap of `image`) unless
`decompress` is set. Videos get stamps
EPOCH + t (`stamp_mode: sim`, the synthetic scenes' convention) or the wall clock (`now`).
Frames are paced at `rate` x real time from their stamps; `publish_clock` also publishes /clock
for `use_sim_time` replay. At the end `~/finished` (std_msgs/Bool, transient local) becomes true
(false when the source broke mid-way); standalone, the process then exits if `exit_on_end`.

    python -m stvg_ros.nodes.player_node --ros-args -p bag:=DIR -r image:=/camera/image_raw
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.impl.implementation_singleton import rclpy_implementation
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Bool

from stvg_ros.core.bag_io import COMPRESSED_TYPE, BagError, bag_info, iter_image_messages, stamp_ns_of
from stvg_ros.core.image_codec import ImageDecodeError, decode_compressed, encode_image
from stvg_ros.core.types import EPOCH_NS
from stvg_ros.core.video_io import VideoError, iter_video, video_info
from stvg_ros.nodes.messages import ns_to_stamp
from stvg_ros.nodes.params import PlayerParams
from stvg_ros.nodes.ros_params import declare_parameters


@dataclass
class _Frame:
    stamp_ns: int
    message: Image | CompressedImage


class PlayerNode(Node):
    """Publishes the frames of a bag or video from a background thread, paced by their stamps."""

    def __init__(self, **kwargs) -> None:
        super().__init__("player_node", **kwargs)
        self.params = p = declare_parameters(self, PlayerParams)
        if problems := p.problems():
            raise ValueError("; ".join(problems))
        self.compressed = False
        if p.bag:
            info = bag_info(p.bag)  # BagError names what is wrong before anything is published
            topic = p.topic or (info.image_topics[0] if len(info.image_topics) == 1 else "")
            if topic not in info.image_topics:
                raise BagError(f"bag {p.bag}: pick an image topic with `topic`; image topics: {info.image_topics}")
            self.compressed = info.topics[topic][0] == COMPRESSED_TYPE and not p.decompress
            self._topic = topic
        else:
            video_info(p.video)  # VideoError when missing or unreadable
        qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=p.depth,
            reliability=ReliabilityPolicy.RELIABLE if p.reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT,
            durability=DurabilityPolicy.VOLATILE,
        )
        if self.compressed:
            # Like image_transport: the compressed topic follows the (remapped) image topic.
            compressed_topic = self.resolve_topic_name("image").rstrip("/") + "/compressed"
            self.image_pub = self.create_publisher(CompressedImage, compressed_topic, qos)
        else:
            self.image_pub = self.create_publisher(Image, "image", qos)
        self.clock_pub = self.create_publisher(Clock, "/clock", 10) if p.publish_clock else None
        latched = QoSProfile(
            depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL, reliability=ReliabilityPolicy.RELIABLE
        )
        self.finished_pub = self.create_publisher(Bool, "~/finished", latched)
        self.frames_published = 0
        self.error: str | None = None
        self.done = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._play, name="player", daemon=True)
        self._thread.start()

    # ---- sources

    def _bag_frames(self) -> Iterator[_Frame]:
        for _, msgtype, msg in iter_image_messages(self.params.bag, self._topic):
            stamp_ns = stamp_ns_of(msg)
            if msgtype == COMPRESSED_TYPE and self.compressed:
                out = CompressedImage(format=str(msg.format))
                out.data = bytes(msg.data)
            elif msgtype == COMPRESSED_TYPE:
                out = self._image(decode_compressed(msg))
            else:
                out = Image(
                    height=int(msg.height), width=int(msg.width), encoding=str(msg.encoding),
                    is_bigendian=int(msg.is_bigendian), step=int(msg.step),
                )  # fmt: skip
                out.data = msg.data.tobytes()
            out.header.frame_id = str(msg.header.frame_id)
            out.header.stamp = ns_to_stamp(stamp_ns)
            yield _Frame(stamp_ns, out)

    def _video_frames(self) -> Iterator[_Frame]:
        for _, t, rgb in iter_video(self.params.video):
            out = self._image(rgb)
            out.header.frame_id = self.params.frame_id
            stamp_ns = EPOCH_NS + round(t * 1e9)
            out.header.stamp = ns_to_stamp(stamp_ns)
            yield _Frame(stamp_ns, out)

    @staticmethod
    def _image(rgb) -> Image:
        fields = encode_image(rgb, "rgb8")
        out = Image(
            height=fields["height"], width=fields["width"], encoding="rgb8", is_bigendian=0, step=fields["step"]
        )
        out.data = fields["data"]
        return out

    # ---- playback

    def _wait_for_subscribers(self) -> None:
        deadline = time.monotonic() + max(0.0, self.params.wait_timeout_s)
        while self.image_pub.get_subscription_count() < self.params.wait_for_subscribers:
            if time.monotonic() > deadline:
                self.get_logger().warning(
                    f"{self.image_pub.get_subscription_count()} of {self.params.wait_for_subscribers} subscribers "
                    f"matched after {self.params.wait_timeout_s} s; playing anyway"
                )
                return
            if self._stop.wait(0.05):
                return

    def _play(self) -> None:
        p = self.params
        source = p.bag or p.video
        try:
            # Writers see a new subscription before its reader has matched them, and a best-effort
            # reader drops samples from writers it has not matched yet: wait, then give it time.
            self._wait_for_subscribers()
            if self._stop.wait(max(0.0, p.start_delay_s)):
                return
            offset_ns = 0
            while not self._stop.is_set():
                first = last = None
                count = 0
                started = time.monotonic()
                for frame in self._bag_frames() if p.bag else self._video_frames():
                    first = frame.stamp_ns if first is None else first
                    due = started + (frame.stamp_ns - first) / 1e9 / p.rate - time.monotonic() if p.rate > 0 else 0.0
                    if self._stop.wait(max(0.0, due)):
                        return
                    self._publish(frame, offset_ns)
                    last, count = frame.stamp_ns, count + 1
                if not p.loop or count == 0:
                    break
                # Keep time moving forward: the next pass starts one mean frame period after this one.
                offset_ns += (last - first) + ((last - first) // (count - 1) if count > 1 else 0)
            self.get_logger().info(f"played {self.frames_published} frames from {source}")
        except (BagError, VideoError, ImageDecodeError) as exc:
            self.error = str(exc)
            self.get_logger().error(f"playback of {source} stopped after {self.frames_published} frames: {exc}")
        finally:
            if not self._stop.is_set():
                self.finished_pub.publish(Bool(data=self.error is None))
            self.done.set()

    def _publish(self, frame: _Frame, offset_ns: int) -> None:
        stamp_ns = frame.stamp_ns + offset_ns
        if self.params.video and self.params.stamp_mode == "now":
            frame.message.header.stamp = self.get_clock().now().to_msg()
        elif offset_ns:
            frame.message.header.stamp = ns_to_stamp(stamp_ns)
        if self.clock_pub is not None:
            self.clock_pub.publish(Clock(clock=frame.message.header.stamp))
        self.image_pub.publish(frame.message)
        self.frames_published += 1

    def wait_until_delivered(self, timeout_s: float = 5.0) -> bool:
        """Wait until reliable subscribers acknowledged every frame (best effort: returns at once)."""
        from rclpy.duration import Duration

        if self.params.reliability != "reliable":
            return True
        return bool(self.image_pub.wait_for_all_acked(Duration(seconds=timeout_s)))

    def destroy_node(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5.0)
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    rclpy.init(args=args)
    node = None
    try:
        try:
            node = PlayerNode()
        except (ValueError, BagError, VideoError) as exc:
            print(f"player_node: error: {exc}", file=sys.stderr)
            return 2
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while rclpy.ok() and not (node.params.exit_on_end and node.done.is_set()):
            executor.spin_once(timeout_sec=0.1)
        if node.done.is_set():
            node.wait_until_delivered()
            # Late subscribers of ~/finished (transient local) get it while the node still exists.
            end = time.monotonic() + 0.5
            while time.monotonic() < end:
                executor.spin_once(timeout_sec=0.05)
        return 1 if node.error else 0
    except (KeyboardInterrupt, ExternalShutdownException):  # Ctrl-C / SIGINT: a normal way to stop
        return 0
    except rclpy_implementation.RCLError:  # SIGTERM landing between spin_once's context check and its wait: a normal stop too
        if rclpy.ok():
            raise
        return 0
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
