"""Optional SAM2 refinement (issue 3): IDs at mask centres on the sampled frames only.

The SAM2.1 tiny model here is built with random weights and saved in the checkpoint format `sam2`
loads ({"model": state_dict}); its masks are meaningless, so these tests check the API path (the
checkpoint loads at a non-1024 input size, all boxes of a frame go through one batched predict,
one anchor per tracked object inside the frame) and the wiring into sampling, the pipeline and the
grounding node's settings, not mask quality.
"""

from __future__ import annotations

import numpy as np
import pytest

from stvg_ros.core.types import Tracks
from stvg_ros.grounding import sampling
from stvg_ros.grounding.backends.base import GenerationError
from stvg_ros.grounding.pipeline import GroundingConfig, GroundingPipeline, GroundingRequest
from stvg_ros.grounding.sampling import sample_clip
from stvg_ros.perception.sam2_refine import MaskAnchors, Sam2Config, Sam2Unavailable, build_mask_anchors
from tests.fixtures.vlm import synthetic_snapshot

IMAGE_SIZE = 256  # a non-1024 size (the predictor's feature sizes must follow it); fast on a CPU


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import torch
    from sam2.build_sam import build_sam2

    torch.manual_seed(0)
    model = build_sam2(Sam2Config().model_config, ckpt_path=None, device="cpu")  # random weights, 1024 config
    path = tmp_path_factory.mktemp("sam2") / "sam2.1_hiera_tiny_random.pt"
    torch.save({"model": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def mask_anchors(checkpoint):
    return MaskAnchors(Sam2Config(enabled=True, checkpoint=str(checkpoint), image_size=IMAGE_SIZE))


@pytest.fixture(scope="module")
def snapshot():
    return synthetic_snapshot(seconds=4.0, fps=10.0, gap=None)


def test_mask_anchors_give_one_origin_per_tracked_object_inside_the_frame(mask_anchors):
    rgb = np.full((240, 320, 3), 90, np.uint8)
    rgb[40:200, 30:130] = (200, 40, 40)
    rgb[60:150, 180:300] = (40, 200, 40)
    tracks = Tracks(xyxy=np.array([[30, 40, 130, 200], [180, 60, 300, 150], [0, 0, 20, 20]], np.float32),
                    track_id=np.array([4, 9, -1]))
    anchors = mask_anchors.anchors(rgb, tracks)  # both boxes in one batched predict call
    assert set(anchors) == {4, 9}  # the untracked row gets none
    for x, y in anchors.values():
        assert 0 <= x < 320 and 0 <= y < 240
    assert set(mask_anchors(rgb, tracks[[1]])) == {9}  # one box (the predictor squeezes that case)
    assert mask_anchors(rgb, Tracks.empty()) == {}
    with pytest.raises(ValueError, match="RGB uint8"):
        mask_anchors(rgb.astype(np.float32), tracks)


def test_enabling_without_checkpoint_or_with_a_bad_one_says_what_to_set(tmp_path):
    assert build_mask_anchors(Sam2Config()) is None  # off by default: nothing is built
    with pytest.raises(Sam2Unavailable, match=r"needs a checkpoint file \(sam2_checkpoint\).*\(none set\)"):
        build_mask_anchors(Sam2Config(enabled=True))
    with pytest.raises(Sam2Unavailable, match=r"missing\.pt is not a file"):
        MaskAnchors(Sam2Config(enabled=True, checkpoint=str(tmp_path / "missing.pt")))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(Sam2Unavailable, match="could not load SAM2 checkpoint"):
        MaskAnchors(Sam2Config(enabled=True, checkpoint=str(junk)))
    with pytest.raises(Sam2Unavailable, match="multiple of 32"):
        MaskAnchors(Sam2Config(enabled=True, checkpoint=str(junk), image_size=500))


def test_sample_clip_draws_ids_at_the_provider_anchors(snapshot, monkeypatch):
    seen, drawn = [], []

    def corner_anchors(rgb, tracks):  # known origins: inside each box near its bottom-left corner
        seen.append((rgb.shape, tracks.xyxy.copy()))
        return {int(t): (int(b[0]) + 4, int(b[3]) - 4) for t, b in zip(tracks.track_id, tracks.xyxy, strict=True)}

    real_render = sampling.render_ids

    def spy_render(frame, tracks, style, anchors=None):
        drawn.append((frame.shape, tracks.xyxy.copy(), tracks.track_id.copy(), anchors))
        return real_render(frame, tracks, style, anchors=anchors)

    plain = sample_clip(snapshot, num_frames=3)
    monkeypatch.setattr(sampling, "render_ids", spy_render)
    refined = sample_clip(snapshot, num_frames=3, anchors=corner_anchors)

    assert len(seen) == len(drawn) == 3
    small = snapshot.frames[0].rgb_small.shape
    for (shape, boxes), (frame_shape, xyxy, ids, anchors) in zip(seen, drawn, strict=True):
        assert shape == small  # the provider sees the buffered frame, boxes in its pixels
        sx, sy = frame_shape[1] / small[1], frame_shape[0] / small[0]
        expected = {int(t): (round((int(b[0]) + 4) * sx), round((int(b[3]) - 4) * sy))
                    for t, b in zip(ids, boxes, strict=True)}
        assert anchors == expected
        centres = {int(t): (int((b[0] + b[2]) / 2), int((b[1] + b[3]) / 2)) for t, b in zip(ids, xyxy, strict=True)}
        assert all(anchors[t] != centres[t] for t in anchors)
    assert refined.track_ids == plain.track_ids and refined.stamps_ns == plain.stamps_ns
    assert any(not np.array_equal(a, b) for a, b in zip(refined.frames_rgb_with_ids, plain.frames_rgb_with_ids,
                                                        strict=True))


def test_sample_clip_with_sam2_end_to_end(snapshot, mask_anchors):
    found = []

    def recording(rgb, tracks):
        anchors = mask_anchors(rgb, tracks)
        found.append((rgb.shape, set(tracks.track_id.tolist()), anchors))
        return anchors

    clip = sample_clip(snapshot, num_frames=2, anchors=recording)
    assert len(found) == 2 and len(clip.frames_rgb_with_ids) == 2
    for (height, width, _), ids, anchors in found:
        assert set(anchors) == ids
        assert all(0 <= x < width and 0 <= y < height for x, y in anchors.values())


class RecordingBackend:
    """Test double for the VLM: keeps the frames it is sent, then fails (no answer is made up)."""

    model_name = "recording"

    def __init__(self) -> None:
        self.frames: list[np.ndarray] = []

    def generate(self, frames, timestamps_s, question, **kwargs):
        self.frames = list(frames)
        raise GenerationError("recorded the frames")


def test_pipeline_uses_the_provider_and_survives_its_failure(snapshot):
    request = GroundingRequest("the red box")
    plain, refined, failing = RecordingBackend(), RecordingBackend(), RecordingBackend()
    GroundingPipeline(plain, GroundingConfig(num_frames=2)).ground(snapshot, request)
    outcome = GroundingPipeline(refined, GroundingConfig(num_frames=2, anchors=lambda rgb, tracks: {
        int(t): (2, 2) for t in tracks.track_id})).ground(snapshot, request)
    assert "anchors_ms" in outcome.timings
    assert any(not np.array_equal(a, b) for a, b in zip(plain.frames, refined.frames, strict=True))

    def broken(rgb, tracks):
        raise RuntimeError("out of memory")

    outcome = GroundingPipeline(failing, GroundingConfig(num_frames=2, anchors=broken)).ground(snapshot, request)
    assert "ID placement failed on 2 of 2 frames (RuntimeError: out of memory)" in outcome.message
    assert all(np.array_equal(a, b) for a, b in zip(plain.frames, failing.frames, strict=True))  # box centres


def test_node_settings_fail_clearly_when_enabled_without_checkpoint(checkpoint):
    from stvg_ros.nodes.params import GroundingParams, from_values

    config = GroundingParams().grounding_config()
    assert config.sam2 == Sam2Config() and not config.sam2.enabled  # off by default
    with pytest.raises(Sam2Unavailable, match=r"sam2_checkpoint.*sam2_refine: false"):
        from_values(GroundingParams, {"sam2_refine": True, "sam2_checkpoint": ""}).grounding_config()
    config = from_values(GroundingParams, {"sam2_refine": True, "sam2_checkpoint": str(checkpoint),
                                           "sam2_image_size": IMAGE_SIZE, "num_frames": 2}).grounding_config()
    pipeline = GroundingPipeline(RecordingBackend(), config)  # the node's activate builds SAM2 here
    assert isinstance(pipeline.anchors, MaskAnchors)
