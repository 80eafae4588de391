"""OfflinePipeline: perception -> ClipBuffer -> GroundingPipeline fed frame by frame, with or without
each part (a scripted backend stands in for the VLM; the detector is the tiny one)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from stvg_ros.core.types import EPOCH_NS, frame_stamp_ns
from stvg_ros.core.video_io import iter_video
from stvg_ros.grounding.backends.base import GenerationResult
from stvg_ros.grounding.offline import OfflinePipeline
from stvg_ros.grounding.pipeline import GroundingConfig, GroundingRequest
from stvg_ros.perception.buffer import BufferConfig
from stvg_ros.perception.pipeline import PerceptionConfig
from stvg_ros.synthetic.scenes import SceneSpec, generate_scene

FPS = 10.0


class ScriptedBackend:
    """Answers every question with `answer`; records what it was shown; counts closes."""

    name = model_name = "scripted"

    def __init__(self, answer: str) -> None:
        self.answer, self.calls, self.closed = answer, [], 0

    def generate(self, frames, timestamps_s, question, **kwargs) -> GenerationResult:
        self.calls.append((len(frames), list(timestamps_s), kwargs.get("track_ids")))
        return GenerationResult(self.answer)

    def close(self) -> None:
        self.closed += 1


@pytest.fixture(scope="module")
def scene():
    return generate_scene(3, SceneSpec(seconds=4.0, fps=FPS, width=320, height=240, n_objects=3, difficulty="easy"))


def feed_scene(pipeline: OfflinePipeline, scene) -> None:
    for index in range(scene.num_frames):
        pipeline.feed_tracks(frame_stamp_ns(index, FPS), scene.render_frame(index), scene.gt.tracks(index))


def test_given_tracks_are_grounded_over_the_whole_buffer(scene):
    target = int(scene.gt.tracks(0).track_id[0])
    backend = ScriptedBackend(f"<answer>Target ID: {target}, Time range: 1.0 to 2.0</answer>")
    with OfflinePipeline(grounding=GroundingConfig(num_frames=4), backend=backend) as pipeline:
        assert pipeline.perception is None and pipeline.buffer_config == BufferConfig()
        feed_scene(pipeline, scene)
        snapshot = pipeline.snapshot()
        assert snapshot.start_ns == EPOCH_NS and len(snapshot) == 8  # 4 s kept at 2 fps
        assert len(snapshot.track_frames) == scene.num_frames
        outcome = pipeline.ground(GroundingRequest("the shape that stops"))
    assert backend.closed == 1 and backend.calls[0][0] == 4
    assert outcome.success and outcome.target_id == target, outcome.message
    assert outcome.clip_start_ns == EPOCH_NS and outcome.start_ns == EPOCH_NS + 10**9
    assert outcome.tube and all(EPOCH_NS + 10**9 <= e.stamp_ns <= EPOCH_NS + 2 * 10**9 for e in outcome.tube)
    assert pipeline.model_name == "scripted"


def test_reset_starts_a_fresh_buffer_with_a_new_config(scene):
    pipeline = OfflinePipeline()
    feed_scene(pipeline, scene)
    longer = replace(BufferConfig(), max_seconds=120.0, max_mb=256.0)
    pipeline.reset(longer)
    assert len(pipeline.snapshot()) == 0 and pipeline.buffer.max_seconds == 120.0
    assert pipeline.buffer.max_bytes == 256 * 2**20 and pipeline.buffer_config is longer
    pipeline.reset()  # keeps the config
    assert pipeline.buffer_config is longer


def test_missing_parts_say_so(scene):
    pipeline = OfflinePipeline()
    with pytest.raises(RuntimeError, match="without perception"):
        pipeline.feed(EPOCH_NS, np.zeros((240, 320, 3), np.uint8))
    with pytest.raises(RuntimeError, match="without a backend"):
        pipeline.ground(GroundingRequest("the box"))
    pipeline.close()  # nothing to close


def test_detector_and_tracker_feed_the_buffer_and_ids_continue(synth_dataset, tiny_detector):
    made = []

    def make_backend():
        made.append(ScriptedBackend("<answer>Target ID: 1, Time range: 0.0 to 1.0</answer>"))
        return made[-1]

    config = PerceptionConfig(model=str(tiny_detector["onnx-int8"]), detect_every=1)
    pipeline = OfflinePipeline(config, backend=make_backend)  # the backend is made after the detector
    assert len(made) == 1 and pipeline.backend is made[0]
    video = synth_dataset.videos[0]

    def run() -> set[int]:
        ids: set[int] = set()
        for index, _, rgb in iter_video(video, max_frames=20):
            tracks = pipeline.feed(frame_stamp_ns(index, FPS), rgb)
            ids.update(int(i) for i in tracks.track_id if i >= 0)
        return ids

    first = run()
    assert first and len(pipeline.snapshot().track_frames) == 20 and pipeline.perception_s > 0
    pipeline.reset()
    second = run()
    assert second and min(second) > max(first)  # fresh tracks, IDs never reused
    assert len(pipeline.snapshot().track_frames) == 20  # a fresh buffer: this video's frames only
    pipeline.close()
    assert made[0].closed == 1
