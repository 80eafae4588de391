"""Detector backends on synthetic scenes: the trained tiny YOLO really finds the shapes with every
backend (ultralytics .pt, ONNX fp32, ONNX static int8), and bad frames or files fail clearly."""

from __future__ import annotations

import numpy as np
import pytest

from stvg_ros.perception.detector import (
    DetectorError,
    DetectorSettings,
    OnnxDetector,
    UltralyticsDetector,
    class_ids_from,
    letterbox,
)
from stvg_ros.perception.mot import iou_distance
from stvg_ros.synthetic.detector import visible_box
from stvg_ros.synthetic.scenes import SceneSpec, generate_scene

#: Scenes the detector never saw in training (training uses seeds 0..11 and 1000+).
EVAL_SEEDS = (501, 502, 503, 504)


@pytest.fixture(scope="module")
def eval_frames():
    """(frame, boxes of clearly visible objects, visible parts of all objects) from unseen scenes."""
    samples = []
    for i, seed in enumerate(EVAL_SEEDS):
        big = i % 2 == 1
        spec = SceneSpec(
            seconds=6.0, fps=5.0, width=640 if big else 320, height=480 if big else 240, n_objects=4, difficulty="easy"
        )
        scene = generate_scene(seed, spec)
        for frame in range(0, scene.num_frames, 6):
            clear = scene.gt.boxes[frame][scene.gt.visible[frame] >= 0.95]
            seen = scene.gt.visible[frame] > 0
            parts = [p for b in scene.gt.boxes[frame][seen] if (p := visible_box(b, scene.occluders)) is not None]
            parts = np.array(parts, np.float32).reshape(-1, 4)
            samples.append((scene.render_frame(frame), clear, parts))
    return samples


def recall_precision(detector, samples) -> tuple[float, float]:
    """Recall of clearly visible objects (IoU >= 0.5); precision: detections that lie on an object."""
    hits = truth = found = true_boxes = 0
    for rgb, clear, parts in samples:
        detections = detector.detect(rgb)
        found += len(detections)
        truth += len(clear)
        if len(clear) and len(detections):
            hits += int((~np.isnan(iou_distance(clear, detections.xyxy, 0.5))).any(axis=1).sum())
        if len(parts) and len(detections):
            true_boxes += int((~np.isnan(iou_distance(detections.xyxy, parts, 0.3))).any(axis=1).sum())
    return hits / max(truth, 1), true_boxes / max(found, 1)


@pytest.mark.parametrize("backend", ["pt", "onnx", "onnx-int8"])
def test_every_backend_detects_the_synthetic_shapes(tiny_detector, eval_frames, backend):
    settings = DetectorSettings(conf=0.25)
    if backend == "pt":
        detector = UltralyticsDetector(tiny_detector["pt"], settings)
    else:
        detector = OnnxDetector(tiny_detector[backend], settings, threads=2)
    assert detector.class_names == ["shape"] and detector.imgsz == 256
    recall, precision = recall_precision(detector, eval_frames)
    assert recall >= 0.8, f"{backend}: recall {recall:.2f}"
    assert precision >= 0.8, f"{backend}: precision {precision:.2f}"
    tracks = detector.detect(eval_frames[1][0])
    assert (tracks.track_id == -1).all() and tracks.detected.all()
    assert (tracks.xyxy[:, 2] > tracks.xyxy[:, 0]).all() and tracks.xyxy.max() <= 640


def test_int8_agrees_with_fp32(tiny_detector, eval_frames):
    fp32 = OnnxDetector(tiny_detector["onnx"], DetectorSettings(conf=0.25))
    int8 = OnnxDetector(tiny_detector["onnx-int8"], DetectorSettings(conf=0.25))
    agreed = total = 0
    for rgb, *_ in eval_frames[::3]:
        a, b = fp32.detect(rgb), int8.detect(rgb)
        total += len(a)
        if len(a) and len(b):
            agreed += int((~np.isnan(iou_distance(a.xyxy, b.xyxy, 0.7))).any(axis=1).sum())
    assert total > 10 and agreed / total >= 0.9


def test_class_filter_and_names(tiny_detector, eval_frames):
    rgb = eval_frames[0][0]
    assert len(OnnxDetector(tiny_detector["onnx-int8"], DetectorSettings(conf=0.25, classes=(0,))).detect(rgb)) > 0
    assert len(OnnxDetector(tiny_detector["onnx-int8"], DetectorSettings(conf=0.25, classes=(5,))).detect(rgb)) == 0
    assert class_ids_from(["shape", "0", 0], ["shape"]) == (0,)
    with pytest.raises(DetectorError, match="'person' is not one of the model's classes"):
        class_ids_from(["person"], ["shape"])


def test_max_det_bounds_the_output(tiny_detector, eval_frames):
    detector = OnnxDetector(tiny_detector["onnx-int8"], DetectorSettings(conf=0.01, max_det=2))
    assert len(detector.detect(eval_frames[1][0])) <= 2


@pytest.mark.parametrize(
    "frame, needle",
    [
        (np.zeros((0, 10, 3), np.uint8), "zero-size"),
        (np.zeros((10, 10), np.uint8), "RGB uint8 (H, W, 3)"),
        (np.zeros((10, 10, 3), np.float32), "RGB uint8 (H, W, 3)"),
        (np.zeros((10, 10, 4), np.uint8), "RGB uint8 (H, W, 3)"),
    ],
)
def test_bad_frames_raise_value_errors(tiny_detector, frame, needle):
    detector = OnnxDetector(tiny_detector["onnx-int8"])
    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        detector.detect(frame)


def test_tiny_and_odd_frames_do_not_crash(tiny_detector):
    detector = OnnxDetector(tiny_detector["onnx-int8"])
    for shape in [(1, 1, 3), (3, 1000, 3), (700, 5, 3)]:
        tracks = detector.detect(np.full(shape, 90, np.uint8))
        assert (tracks.xyxy[:, [0, 2]] <= shape[1]).all() and (tracks.xyxy[:, [1, 3]] <= shape[0]).all()


def test_unloadable_model_files_are_detector_errors(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(DetectorError, match=r"junk\.onnx"):
        OnnxDetector(junk)


def test_letterbox_maps_boxes_back_to_the_frame():
    rgb = np.zeros((480, 640, 3), np.uint8)
    square, box = letterbox(rgb, 256)
    assert square.shape == (256, 256, 3) and box.scale == pytest.approx(0.4)
    # a box drawn in network-input pixels maps back to frame pixels
    frame_box = np.array([[100.0, 50.0, 300.0, 250.0]])
    net_box = frame_box * box.scale + [box.pad_x, box.pad_y, box.pad_x, box.pad_y]
    np.testing.assert_allclose(box.to_frame(net_box, 640, 480), frame_box, atol=1e-4)
