"""Keep-up pipeline (every camera frame gets tracks), its settings, the ClipBuffer's bounds and
camera input in every common encoding (or a clear rejection)."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from stvg_ros.core.image_codec import ImageDecodeError
from stvg_ros.core.types import Tracks
from stvg_ros.perception.buffer import ClipBuffer
from stvg_ros.perception.detector import DetectorError
from stvg_ros.perception.pipeline import (
    PerceptionConfig,
    PerceptionPipeline,
    build_detector,
    build_perception,
)
from stvg_ros.perception.tracker import Tracker
from stvg_ros.synthetic.scenes import SceneSpec, generate_scene

NS = 1_000_000_000
CONFIG_DIR = Path(__file__).resolve().parents[1] / "stvg_ros" / "config"


@pytest.fixture(scope="module")
def scene():
    return generate_scene(21, SceneSpec(seconds=5.0, fps=30.0, width=320, height=240, n_objects=4, difficulty="easy"))


def make_pipeline(tiny_detector, **settings) -> PerceptionPipeline:
    return build_perception(PerceptionConfig(model=str(tiny_detector["onnx-int8"]), threads=2, **settings))


class SlowDetector:
    """The real detector, made slower, as on a loaded machine."""

    def __init__(self, detector, delay_s: float) -> None:
        self.detector, self.delay_s = detector, delay_s
        self.class_names, self.imgsz = detector.class_names, detector.imgsz

    def detect(self, rgb):
        time.sleep(self.delay_s)
        return self.detector.detect(rgb)


def test_every_frame_gets_tracks_when_the_detector_runs_every_third_frame(tiny_detector, scene):
    pipeline = make_pipeline(tiny_detector, detect_every=3)
    outputs = [pipeline.process(scene.stamp_ns(f), scene.render_frame(f)) for f in range(scene.num_frames)]
    assert pipeline.stats.detector_runs == -(-scene.num_frames // 3)
    visible = [(scene.gt.visible[f] > 0.5).sum() for f in range(scene.num_frames)]
    with_tracks = [len(o) > 0 for o, v in zip(outputs, visible, strict=True) if v][5:]
    assert np.mean(with_tracks) >= 0.95
    predicted = outputs[10::3][0], outputs[11::3][0]
    assert all(len(p) and not p.detected.any() for p in predicted)  # Kalman frames
    assert all(o.detected.any() for o in outputs[9:60:3] if len(o))  # detector frames


def test_detect_every_adapts_to_a_slow_detector(tiny_detector, scene):
    detector = build_detector(PerceptionConfig(model=str(tiny_detector["onnx-int8"]), threads=2))
    slow = PerceptionPipeline(SlowDetector(detector, 0.05), Tracker(), PerceptionConfig(max_detect_every=6))
    slow_camera = PerceptionPipeline(detector, Tracker(), PerceptionConfig())
    for f in range(40):
        slow.process(scene.stamp_ns(f), scene.render_frame(f))
        slow_camera.process(scene.stamp_ns(0) + f * NS // 2, scene.render_frame(f))  # a 2 FPS camera
    # 50 ms per detection at 30 FPS with a 60 % budget (20 ms): every 3rd frame at least
    assert 3 <= slow.stats.detect_every <= 6 and slow.stats.detector_runs < 20
    # at 2 FPS there is time to detect on every frame
    assert slow_camera.stats.detect_every == 1 and slow_camera.stats.detector_runs >= 38  # after the first frames


def test_lost_frames_reported_by_the_caller_keep_the_schedule_on_the_camera_rate(tiny_detector, scene):
    detector = build_detector(PerceptionConfig(model=str(tiny_detector["onnx-int8"]), threads=2))
    hinted = PerceptionPipeline(SlowDetector(detector, 0.03), Tracker(), PerceptionConfig())
    unhinted = PerceptionPipeline(SlowDetector(detector, 0.03), Tracker(), PerceptionConfig())
    for f in range(0, 120, 3):  # only every third camera frame gets through (DDS / a busy node)
        hinted.process(scene.stamp_ns(f), scene.render_frame(f), skipped=2)
        unhinted.process(scene.stamp_ns(f), scene.render_frame(f))
    assert hinted.tracker.frame_interval_s == pytest.approx(1 / 30, rel=0.02)
    assert unhinted.tracker.frame_interval_s == pytest.approx(0.1, rel=0.02)
    # 30+ ms per detection does not fit 60 % of a 33 ms frame: the detector must skip frames
    assert hinted.stats.detect_every >= 2 and hinted.stats.detect_every > unhinted.stats.detect_every


def test_a_failing_detector_falls_back_to_predictions(tiny_detector, scene):
    pipeline = make_pipeline(tiny_detector, detect_every=1)
    for f in range(10):
        pipeline.process(scene.stamp_ns(f), scene.render_frame(f))

    def broken(rgb):
        raise DetectorError("runtime fell over")

    pipeline.detector.detect = broken
    out = pipeline.process(scene.stamp_ns(10), scene.render_frame(10))
    assert len(out) > 0 and not out.detected.any() and pipeline.stats.detector_errors == 1


@pytest.mark.parametrize("frame", [np.zeros((0, 0, 3), np.uint8), np.zeros((240, 320), np.uint8), None])
def test_bad_frames_are_value_errors(tiny_detector, frame):
    pipeline = make_pipeline(tiny_detector)
    with pytest.raises(ValueError):
        pipeline.process(1, frame)
    assert pipeline.stats.frames == 0


def test_out_of_order_and_jumping_stamps(tiny_detector, scene):
    pipeline = make_pipeline(tiny_detector, detect_every=1)
    for f in range(15):
        last = pipeline.process(scene.stamp_ns(f), scene.render_frame(f))
    stale = pipeline.process(scene.stamp_ns(3), scene.render_frame(3))
    np.testing.assert_array_equal(stale.track_id, last.track_id)
    assert pipeline.stats.skipped_stale == 1
    jumped = pipeline.process(scene.stamp_ns(14) + 3600 * NS, scene.render_frame(14))  # an hour later
    assert pipeline.tracker.stats["resets"] == 1 and pipeline.stats.detector_runs == 16
    assert len(jumped) == 0 or jumped.track_id.min() > last.track_id.max()  # IDs are never reused


def test_config_from_node_parameters_and_files():
    import yaml

    from stvg_ros.nodes.params import TrackerParams, from_values, perception_config_from

    node_file = yaml.safe_load((CONFIG_DIR / "tracker.yaml").read_text())
    config = perception_config_from(node_file)
    assert config.model == "yolo11n" and config.precision == "int8" and config.tracker.reid_max_gap_s == 3.0
    assert config == TrackerParams().perception_config()
    assert perception_config_from({**node_file, "model": "other.onnx"}).model == "other.onnx"  # CLI override
    config = perception_config_from({"model": "x.onnx", "reid_max_gap_s": 2.5, "detect_every": 2})
    assert (config.model, config.tracker.reid_max_gap_s, config.detect_every) == ("x.onnx", 2.5, 2)
    with pytest.raises(ValueError, match=r"unknown perception settings.*modle"):
        PerceptionConfig.from_dict({"modle": "x.onnx"})
    with pytest.raises(ValueError, match="backend"):
        from_values(TrackerParams, {"detector": "x", "backend": "tensorrt", "image_depth": 1})
    config = from_values(TrackerParams, {"detector": "x", "conf": 1, "classes": ["car"], "use_sim_time": True})
    assert config.perception_config().model == "x" and config.conf == 1.0 and isinstance(config.conf, float)
    with pytest.raises(ValueError, match=r"unknown TrackerParams parameters.*modle"):
        from_values(TrackerParams, {"modle": "x"})


def test_a_missing_model_file_names_it(tmp_path):
    from stvg_ros.core.model_registry import ModelFileMissing

    with pytest.raises(ModelFileMissing, match=r"nothing\.onnx"):
        build_perception(PerceptionConfig(model=str(tmp_path / "nothing.onnx")))
    with pytest.raises(DetectorError, match=r"needs an \.onnx file"):
        (tmp_path / "model.pt").write_bytes(b"")
        build_perception(PerceptionConfig(model=str(tmp_path / "model.pt"), backend="onnx"))


# --------------------------------------------------------------------------------------------
# Camera input: every common encoding decodes to the frame the pipeline expects, or is refused


def image_msg(pixels: np.ndarray, encoding: str, step: int | None = None, big_endian: bool = False, width: int = 0):
    height, width = pixels.shape[0], width or pixels.shape[1]
    data = pixels.tobytes()
    row = len(data) // max(height, 1)
    return SimpleNamespace(
        height=height, width=width, encoding=encoding, is_bigendian=big_endian, step=step or row, data=data
    )


def encodings_of(rgb: np.ndarray) -> dict[str, object]:
    uyvy = cv2.cvtColor(cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV), cv2.COLOR_YUV2RGB)  # same content, 4:2:2 below
    yuv = cv2.cvtColor(uyvy, cv2.COLOR_RGB2YUV)
    packed = np.empty((rgb.shape[0], rgb.shape[1] * 2), np.uint8)  # UYVY: U Y0 V Y1
    packed[:, 0::4] = yuv[:, 0::2, 1]
    packed[:, 1::2] = yuv[:, :, 0]
    packed[:, 2::4] = yuv[:, 0::2, 2]
    return {
        "rgb8": image_msg(rgb, "rgb8"),
        "bgr8": image_msg(np.ascontiguousarray(rgb[:, :, ::-1]), "bgr8"),
        "rgb16": image_msg(rgb.astype(np.uint16) * 257, "rgb16"),
        "bgr16 big-endian": image_msg((rgb[:, :, ::-1].astype(np.uint16) * 257).astype(">u2"), "bgr16", big_endian=True),
        "yuv422": image_msg(packed, "yuv422", width=rgb.shape[1]),
        "rgb8 padded rows": image_msg(
            np.pad(rgb, ((0, 0), (0, 8), (0, 0))), "rgb8", step=(rgb.shape[1] + 8) * 3, width=rgb.shape[1]
        ),
    }


def test_every_colour_encoding_gives_the_same_detections(tiny_detector, scene):
    from stvg_ros.nodes.messages import decode_ros_image
    from stvg_ros.perception.mot import iou_distance

    rgb = scene.render_frame(30)
    detector = build_detector(PerceptionConfig(model=str(tiny_detector["onnx-int8"]), conf=0.25))
    reference = detector.detect(rgb)
    assert len(reference) >= 2
    for name, msg in encodings_of(rgb).items():
        decoded = decode_ros_image(msg)
        assert decoded.shape == rgb.shape and decoded.dtype == np.uint8, name
        found = detector.detect(decoded)
        matched = ~np.isnan(iou_distance(reference.xyxy, found.xyxy, 0.7))
        assert matched.any(axis=1).all(), f"{name}: {len(found)} boxes vs {len(reference)}"


def test_grey_images_decode_and_track(tiny_detector, scene):
    from stvg_ros.nodes.messages import decode_ros_image

    grey = cv2.cvtColor(scene.render_frame(0), cv2.COLOR_RGB2GRAY)
    pipeline = make_pipeline(tiny_detector)
    messages = {"mono8": image_msg(grey, "mono8"), "mono16": image_msg(grey.astype(np.uint16) * 257, "mono16")}
    for name, msg in messages.items():
        decoded = decode_ros_image(msg)
        assert decoded.shape == (240, 320, 3) and (decoded[:, :, 0] == decoded[:, :, 2]).all(), name
        assert isinstance(pipeline.process(pipeline.stats.frames + 1, decoded), Tracks)


@pytest.mark.parametrize(
    "msg, needle",
    [
        (image_msg(np.zeros((4, 4), np.float32), "32FC1"), "unsupported image encoding '32FC1'"),
        (SimpleNamespace(height=0, width=0, encoding="rgb8", step=0, data=b"", is_bigendian=0), "zero size"),
        (image_msg(np.zeros((4, 4, 3), np.uint8), "rgb8", step=6), "step 6 is smaller"),
        (SimpleNamespace(height=4, width=4, encoding="rgb8", step=12, data=b"\0" * 20, is_bigendian=0), "20 bytes"),
    ],
)
def test_undecodable_images_are_refused_with_the_reason(msg, needle):
    from stvg_ros.nodes.messages import decode_ros_image

    with pytest.raises(ImageDecodeError, match=needle):
        decode_ros_image(msg)


# --------------------------------------------------------------------------------------------
# ClipBuffer


def tracks_of(n: int, frame: int) -> Tracks:
    x = np.arange(n, dtype=np.float32)[:, None] * 20 + frame % 50
    return Tracks(xyxy=np.concatenate([x, x, x + 10, x + 10], axis=1), track_id=np.arange(1, n + 1))


def test_clip_buffer_stays_under_its_memory_cap_for_a_minute_of_vga():
    buffer = ClipBuffer(max_seconds=60.0, sample_fps=2.0, frame_long_side=448, max_bytes=64 * 2**20)
    rgb = np.full((480, 640, 3), 100, np.uint8)
    start = 1_000 * NS
    for f in range(75 * 30):  # 75 s at 30 FPS: the first 15 s must be gone
        stamp = start + f * NS // 30
        buffer.add_frame(stamp, rgb, "camera")
        buffer.add_tracks(stamp, tracks_of(10, f), "camera", 640, 480)
    stats = buffer.stats()
    assert stats["nbytes"] <= 64 * 2**20 and stats["dropped_for_memory"] == 0
    snapshot = buffer.snapshot()
    assert 59.0 <= snapshot.duration_s <= 60.0
    assert 119 <= stats["frames"] <= 121 and 1795 <= stats["track_frames"] <= 1801
    assert snapshot.frames[0].rgb_small.shape == (336, 448, 3)


def test_clip_buffer_evicts_oldest_first_at_a_small_cap():
    buffer = ClipBuffer(max_seconds=60.0, sample_fps=10.0, frame_long_side=448, max_bytes=2 * 2**20)
    rgb = np.zeros((480, 640, 3), np.uint8)
    for f in range(300):
        buffer.add_frame(f * NS // 10, rgb)
        buffer.add_tracks(f * NS // 10, tracks_of(1000, f))  # 1000 boxes per frame
        assert buffer.nbytes <= 2 * 2**20
    snapshot = buffer.snapshot()
    assert buffer.dropped_for_memory > 0 and snapshot.end_ns == 299 * NS // 10
    assert snapshot.tracks_at(snapshot.end_ns).stamp_ns == snapshot.end_ns


def test_clip_buffer_drops_late_messages_and_clears_on_a_loop():
    buffer = ClipBuffer(max_seconds=10.0)
    rgb = np.zeros((48, 64, 3), np.uint8)
    for f in range(20):
        buffer.add_frame(100 * NS + f * NS // 10, rgb)
        assert buffer.add_tracks(100 * NS + f * NS // 10, tracks_of(2, f))
    assert not buffer.add_tracks(100 * NS + 15 * NS // 10, tracks_of(2, 15))  # late (reordered)
    assert buffer.dropped_out_of_order == 1
    assert buffer.add_tracks(50 * NS, tracks_of(2, 0))  # the bag started again
    assert buffer.resets == 1 and buffer.stats()["track_frames"] == 1 and len(buffer) == 0
    with pytest.raises(ValueError, match="RGB uint8"):
        buffer.add_frame(60 * NS, np.zeros((0, 64, 3), np.uint8))


def test_clip_buffer_keeps_frames_that_lag_the_tracks_and_counts_missed_samples():
    """A busy input thread may deliver frames seconds after their tracks: that is no new timeline."""
    buffer = ClipBuffer(max_seconds=30.0, sample_fps=2.0)
    rgb = np.zeros((48, 64, 3), np.uint8)
    for f in range(60):  # 6 s of tracks at 10 fps first, then the frames of the same 6 s
        buffer.add_tracks(100 * NS + f * NS // 10, tracks_of(2, f))
    kept = [f for f in range(60) if buffer.wants_frame(100 * NS + f * NS // 10)
            and buffer.add_frame(100 * NS + f * NS // 10, rgb)]  # fmt: skip
    assert kept == list(range(0, 60, 5)) and buffer.resets == 0 and buffer.missed_samples == 0
    assert not buffer.wants_frame(100 * NS + 56 * NS // 10)  # within the sampling period of the last kept
    buffer.add_frame(100 * NS + 80 * NS // 10, rgb)  # 2.5 s after the last kept frame: 4 slots were empty
    assert buffer.missed_samples == 4 and buffer.stats()["missed_samples"] == 4


# --------------------------------------------------------------------------------------------
# SAM2 refinement hook


def test_sam2_refinement_is_off_by_default_and_explains_what_is_missing(monkeypatch, tmp_path):
    import sys

    from stvg_ros.perception.sam2_refine import Sam2Config, Sam2Unavailable, build_mask_anchors

    assert build_mask_anchors() is None and build_mask_anchors(Sam2Config()) is None
    monkeypatch.setitem(sys.modules, "sam2", None)  # as on a machine without the package
    with pytest.raises(Sam2Unavailable, match=r"`sam2` package is not importable.*pip install sam2.*sam2_refine: false"):
        build_mask_anchors(Sam2Config(enabled=True, checkpoint=str(tmp_path / "sam2.1_hiera_tiny.pt")))
