"""`yolo11n-random` (models/yolo11n-random.yaml): YOLO11n with random weights, built with no download
by stvg_ros.perception.export:build_random_yolo into a cache of this module's own (STVG_CACHE), as
`stvg-ros models pull yolo11n-random` does. A cost stand-in for benchmarks: the test checks its size,
its files and that the pipeline gets a realistic number of (meaningless) boxes, not what they are.
"""

from __future__ import annotations

import time

import numpy as np
import onnx
import pytest

from stvg_ros.core import model_registry as registry
from stvg_ros.perception.detector import UltralyticsDetector
from stvg_ros.perception.pipeline import PerceptionConfig, build_perception
from stvg_ros.synthetic.scenes import SceneSpec, generate_scene

pytestmark = pytest.mark.slow

NAME = "yolo11n-random"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """{format: path} of a fresh build in a temporary cache (about 15 s on 2 cores)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STVG_CACHE", str(tmp_path_factory.mktemp("cache")))
        started = time.monotonic()
        int8 = registry.resolve(NAME, "onnx-int8", build=True)
        seconds = time.monotonic() - started
        paths = {fmt: registry.resolve(NAME, fmt) for fmt in ("onnx-int8", "onnx", "pt")}
        assert paths["onnx-int8"] == int8 and int8.parent == registry.model_cache_dir(NAME)
        yield {**paths, "seconds": seconds}


@pytest.fixture(scope="module")
def frames():
    scene = generate_scene(3, SceneSpec(width=640, height=480, fps=30, seconds=4))
    return scene, [scene.render_frame(i) for i in range(0, scene.num_frames, 10)]


def test_manifest_says_the_weights_are_random():
    manifest = registry.get_manifest(NAME)
    assert manifest.kind == "detector" and manifest.extra["meaningful"] is False
    assert "random" in manifest.description and "meaningless" in manifest.description
    assert {f.format for f in manifest.files} == {"onnx-int8", "onnx", "pt"}
    assert all(f.source_kind == "build" for f in manifest.files)


def test_build_writes_int8_and_fp32_onnx_and_the_checkpoint(built):
    assert built["seconds"] < 60
    for fmt in ("onnx-int8", "onnx", "pt"):
        assert built[fmt].is_file() and built[fmt].stat().st_size > 1_000_000
    int8 = onnx.load(str(built["onnx-int8"]))
    assert any(n.op_type == "QuantizeLinear" for n in int8.graph.node)  # static QDQ
    for fmt in ("onnx-int8", "onnx"):
        model = onnx.load(str(built[fmt]), load_external_data=False)
        assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 640, 640]
        assert [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim] == [1, 84, 8400]


def test_checkpoint_is_yolo11n_with_the_coco_names(built):
    detector = UltralyticsDetector(built["pt"])
    assert detector.imgsz == 640 and len(detector.class_names) == 80
    assert detector.class_names[0] == "person" and detector.class_names[-1] == "toothbrush"
    assert 2_500_000 < sum(p.numel() for p in detector.model.model.parameters()) < 2_700_000


@pytest.mark.parametrize("precision", ["int8", "fp32"])
def test_pipeline_gets_a_realistic_number_of_boxes(built, frames, precision):
    scene, images = frames
    pipeline = build_perception(
        PerceptionConfig(model=NAME, backend="onnx", precision=precision, threads=1, detect_every=1)
    )
    assert pipeline.detector.path == built["onnx-int8" if precision == "int8" else "onnx"]
    assert pipeline.detector.imgsz == 640 and len(pipeline.class_names) == 80
    detections = [len(pipeline.detector.detect(image)) for image in images]
    # The class bias makes a trained model's load: some boxes per frame, far from max_det (300).
    assert all(n > 0 for n in detections) and 5 <= np.median(detections) <= 40, detections
    tracks = [len(pipeline.process(scene.stamp_ns(10 * i), image)) for i, image in enumerate(images)]
    assert pipeline.stats.detector_runs == len(images) and max(tracks) > 0, tracks


def test_random_weights_are_deterministic_for_a_seed():
    from stvg_ros.perception.export import random_yolo, synthetic_calibration_frames

    images = synthetic_calibration_frames(2)
    first, again = (random_yolo(seed=0, frames=images).model.state_dict() for _ in range(2))
    other = random_yolo(seed=1, frames=images).model.state_dict()
    assert all(np.array_equal(first[k].numpy(), again[k].numpy()) for k in first)
    assert not all(np.array_equal(first[k].numpy(), other[k].numpy()) for k in first)
