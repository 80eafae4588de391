"""transformers backend with the tiny HF Qwen2.5-VL: native video input (and images), constrained output."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from stvg_ros.core.answer import parse_answer
from stvg_ros.core.prompt import build_question
from stvg_ros.grounding.backends import ModelLoadError, make_backend
from stvg_ros.grounding.backends.transformers_backend import TransformersBackend, clip_fps
from stvg_ros.grounding.pipeline import GroundingConfig, GroundingPipeline, GroundingRequest
from tests.fixtures.vlm import synthetic_snapshot

QUESTION = build_question("the box that stands still")


@pytest.fixture(scope="module")
def video_backend(tiny_vlm):
    import torch

    torch.set_num_threads(1)
    return make_backend("transformers", model=str(tiny_vlm.hf_dir))


@pytest.fixture(scope="module")
def clip():
    rng = np.random.default_rng(1)
    return [rng.integers(0, 255, (224, 308, 3), dtype=np.uint8) for _ in range(4)], [0.0, 0.5, 1.0, 1.5]


def test_clip_fps_from_timestamps():
    assert clip_fps([0.0, 0.5, 1.0, 1.5]) == pytest.approx(2.0)
    assert clip_fps([3.0]) == 1.0 and clip_fps([2.0, 2.0]) == 1.0


def test_video_input_carries_the_sampling_rate(video_backend, clip):
    inputs = video_backend._inputs(*clip, QUESTION)
    # 4 frames of 224x308 -> 2 temporal x 16 x 22 patches; 2 s per temporal patch at 2 fps... / 2 = 1 s
    assert inputs["video_grid_thw"].tolist() == [[2, 16, 22]]
    assert inputs["second_per_grid_ts"].tolist() == pytest.approx([1.0])
    assert "pixel_values" not in inputs  # not sent as images


@pytest.mark.parametrize("reasoning", [True, False])
def test_constrained_answer_parses(video_backend, clip, reasoning):
    tokens = []
    result = video_backend.generate(*clip, QUESTION, reasoning=reasoning, max_new_tokens=120, track_ids=[4, 9],
                                    duration_s=1.5, on_token=tokens.append)
    parsed = parse_answer(result.text, strict=False, duration=1.5, track_ids=[4, 9])
    assert parsed.ok, result.text
    assert result.text.startswith("<think>") == reasoning and result.finish_reason == "stop"
    assert len(tokens) == result.completion_tokens and result.prompt_tokens > 176


def test_images_mode_and_unconstrained_garbage(tiny_vlm, clip):
    images = TransformersBackend(tiny_vlm.hf_dir, use_video=False)
    images.load()
    inputs = images._inputs(*clip, QUESTION)
    assert inputs["image_grid_thw"].shape[0] == 4 and "pixel_values_videos" not in inputs
    result = images.generate(*clip, QUESTION, reasoning=False, max_new_tokens=60, track_ids=[4], duration_s=1.5)
    assert parse_answer(result.text, strict=True, duration=1.5, track_ids=[4]).ok, result.text
    free = TransformersBackend(tiny_vlm.hf_dir, constrained=False)
    result = free.generate(*clip, QUESTION, max_new_tokens=16)
    assert not parse_answer(result.text, strict=False).ok and result.finish_reason == "length"


def test_cancel_and_missing_model(video_backend, clip, tmp_path):
    cancel = threading.Event()
    cancel.set()
    result = video_backend.generate(*clip, QUESTION, max_new_tokens=100, cancel=cancel)
    assert result.finish_reason == "cancelled"
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        make_backend("transformers", model=str(tmp_path))


def test_pipeline_with_the_transformers_backend(video_backend):
    snapshot = synthetic_snapshot(seconds=4.0)
    outcome = GroundingPipeline(video_backend, GroundingConfig(num_frames=4, max_new_tokens=100)).ground(
        snapshot, GroundingRequest("the yellow box", reasoning=False))
    assert outcome.success, outcome.message
    assert outcome.target_id in (1, 2, 3) and outcome.tube and outcome.model == "hf"
