"""The player node in its own OS process, heard over DDS by a subscriber in this process."""

from __future__ import annotations

import subprocess
import sys
import time
from contextlib import contextmanager

import numpy as np
import pytest

from stvg_ros.core.bag_io import iter_image_bag
from stvg_ros.core.image_codec import decode_image
from stvg_ros.core.types import EPOCH_NS
from stvg_ros.core.video_io import VideoWriter
from stvg_ros.synthetic.scenes import SceneSpec, generate_scene

pytestmark = pytest.mark.ros
rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed (run scripts/setup.sh)")


@contextmanager
def probe(name: str):
    """A node in a private rclpy context with a spin helper; shut down on exit."""
    from rclpy.executors import SingleThreadedExecutor

    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        node = rclpy.create_node(name, context=context)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)

        def spin_until(done, timeout_s: float) -> bool:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if done():
                    return True
                executor.spin_once(timeout_sec=0.05)
            return done()

        yield node, spin_until
    finally:
        rclpy.shutdown(context=context)


def _qos(depth=500, latched=False):
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    durability = DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE
    return QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE, durability=durability)


def _start_player(*params: str, remap: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "stvg_ros.nodes.player_node", "--ros-args"]
    for p in params:
        args += ["-p", p]
    args += ["-r", remap]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(process: subprocess.Popen, timeout_s: float = 30.0) -> tuple[int, str]:
    try:
        output, _ = process.communicate(timeout=timeout_s)
        return process.returncode, output
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_player_publishes_every_frame_of_a_bag_with_its_stamps(synth_dataset):
    from sensor_msgs.msg import Image
    from std_msgs.msg import Bool

    bag = synth_dataset.bags[0]
    expected = list(iter_image_bag(bag))
    with probe("player_bag_probe") as (node, spin_until):
        images, finished = [], []
        node.create_subscription(Image, "/player_test/bag/image", images.append, _qos())
        node.create_subscription(Bool, "/player_node/finished", finished.append, _qos(1, latched=True))
        player = _start_player(
            # depth >= the bag's 80 frames: a reliable KEEP_LAST writer overwrites samples a slow reader has
            # not acknowledged yet, so only a history that holds the whole bag makes "every frame" a guarantee.
            f"bag:={bag}", "rate:=5.0", "start_delay_s:=0.0", "wait_for_subscribers:=1", "wait_timeout_s:=20.0",
            "depth:=100", remap="image:=/player_test/bag/image",
        )  # fmt: skip
        try:
            spin_until(lambda: finished and len(images) >= len(expected), 60.0)
        finally:
            code, output = _finish(player)
    assert code == 0, output
    assert finished and finished[-1].data is True, output
    assert len(images) == len(expected) == 80
    for msg, frame in zip(images, expected, strict=True):
        assert msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec == frame.stamp_ns
        assert msg.header.frame_id == "camera" and msg.encoding == "rgb8"
        np.testing.assert_array_equal(decode_image(msg), frame.rgb)
    assert expected[0].stamp_ns == EPOCH_NS and "played 80 frames" in output


def test_player_plays_a_video_with_sim_stamps_and_clock(tmp_path):
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import Image
    from std_msgs.msg import Bool

    scene = generate_scene(4, SceneSpec(seconds=4.0, fps=10.0, width=160, height=120, difficulty="easy"))
    video = tmp_path / "clip.mp4"
    with VideoWriter(video, scene.fps, scene.size) as writer:
        for rgb in scene.frames():
            writer.write(rgb)
    with probe("player_video_probe") as (node, spin_until):
        images, clocks, finished = [], [], []
        node.create_subscription(Image, "/player_test/video/image", images.append, _qos())
        node.create_subscription(Clock, "/clock", clocks.append, _qos())
        node.create_subscription(Bool, "/player_node/finished", finished.append, _qos(1, latched=True))
        player = _start_player(
            f"video:={video}", "rate:=4.0", "publish_clock:=true", "frame_id:=cam_optical", "start_delay_s:=0.0",
            "wait_for_subscribers:=1", remap="image:=/player_test/video/image",
        )  # fmt: skip
        try:
            spin_until(lambda: finished and len(images) >= 40, 60.0)
        finally:
            code, output = _finish(player)
    assert code == 0, output
    stamps = [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in images]
    assert stamps == [EPOCH_NS + i * 100_000_000 for i in range(40)]
    assert [c.clock.sec * 10**9 + c.clock.nanosec for c in clocks] == stamps
    assert {m.header.frame_id for m in images} == {"cam_optical"}
    assert np.abs(decode_image(images[20]).astype(int) - scene.render_frame(20)).mean() < 6


def test_player_refuses_a_missing_bag_with_a_clear_message(tmp_path):
    player = _start_player(f"bag:={tmp_path / 'nothing'}", remap="image:=/player_test/none")
    code, output = _finish(player)
    assert code == 2
    assert "bag not found" in output and "nothing" in output and "Traceback" not in output


def test_player_loops_a_compressed_bag_forward_in_time_and_stops_on_sigint(tmp_path):
    import signal

    from sensor_msgs.msg import CompressedImage

    from stvg_ros.core.bag_io import iter_image_messages, write_image_bag

    bag = tmp_path / "jpeg"
    frames = [(EPOCH_NS + i * 50_000_000, np.full((48, 64, 3), 20 * i, np.uint8)) for i in range(10)]
    write_image_bag(bag, frames, storage="mcap", compressed=True)
    jpeg_bytes = [bytes(msg.data) for _, _, msg in iter_image_messages(bag)]
    with probe("player_loop_probe") as (node, spin_until):
        received = []
        node.create_subscription(CompressedImage, "/player_test/loop/image/compressed", received.append, _qos())
        player = _start_player(
            f"bag:={bag}", "loop:=true", "rate:=2.0", "start_delay_s:=0.0", "wait_for_subscribers:=1",
            remap="image:=/player_test/loop/image",
        )  # fmt: skip
        try:
            assert spin_until(lambda: len(received) >= 25, 60.0)
            player.send_signal(signal.SIGINT)
            code, output = _finish(player, timeout_s=15.0)
        finally:
            if player.poll() is None:
                player.kill()
                player.communicate()
    assert code == 0, output
    stamps = [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in received[:25]]
    # The second pass continues one frame period after the first: time never goes backwards.
    assert stamps == [EPOCH_NS + i * 50_000_000 for i in range(25)]
    assert [bytes(m.data) for m in received[:25]] == (jpeg_bytes * 3)[:25]
    assert {m.format for m in received} == {"rgb8; jpeg compressed bgr8"}


def test_docs_show_the_current_parameter_table():
    from pathlib import Path

    from stvg_ros.nodes.params import PlayerParams, parameters_markdown

    docs = (Path(__file__).resolve().parents[1] / "docs" / "synth.md").read_text()
    assert parameters_markdown(PlayerParams) in docs, "docs/synth.md: paste parameters_markdown(PlayerParams)"
