"""Frame sampling (what the model sees) and the tube (what the answer returns), on real ClipBuffers."""

from __future__ import annotations

import numpy as np
import pytest

from stvg_ros.core.render import render_ids
from stvg_ros.core.types import TrackedFrame, Tracks
from stvg_ros.grounding import sampling
from stvg_ros.grounding.sampling import SamplingError, sample_clip, smart_resize, uniform_indices
from stvg_ros.grounding.tube import build_tube
from stvg_ros.perception.buffer import ClipBuffer
from tests.fixtures.vlm import synthetic_snapshot

NS = 1_000_000_000


@pytest.fixture(scope="module")
def snapshot():
    return synthetic_snapshot(seconds=8.0, fps=10.0)


def test_smart_resize_matches_qwen_rules():
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as qwen_resize

    for height, width in [(336, 448), (240, 320), (480, 640), (1080, 1920), (50, 60), (28, 2000)]:
        ours = smart_resize(height, width, 16 * 28 * 28, 128 * 28 * 28)
        assert ours == tuple(qwen_resize(height, width, 28, 16 * 28 * 28, 128 * 28 * 28))
        assert ours[0] % 28 == 0 and ours[1] % 28 == 0 and ours[0] * ours[1] <= 128 * 28 * 28


def test_uniform_indices_cover_first_and_last():
    assert uniform_indices(5, 16) == [0, 1, 2, 3, 4]
    picked = uniform_indices(100, 16)
    assert len(picked) == 16 and picked[0] == 0 and picked[-1] == 99
    assert uniform_indices(10, 1) == [9]


def test_sixteen_frames_over_the_window_at_the_pixel_budget(snapshot):
    clip = sample_clip(snapshot, window_s=0.0, num_frames=16)
    assert len(clip.frames_rgb_with_ids) == len(clip.timestamps_s) == len(clip.stamps_ns) == 16
    height, width = clip.frames_rgb_with_ids[0].shape[:2]
    assert (width, height) == clip.size and width % 28 == 0 and height % 28 == 0
    assert width * height <= sampling.DEFAULT_MAX_PIXELS
    assert clip.clip_start_ns == snapshot.start_ns and clip.timestamps_s[0] == 0.0
    assert clip.timestamps_s == sorted(clip.timestamps_s) and clip.timestamps_s[-1] <= clip.duration_s
    assert all(clip.stamp_ns_at(t) == s for t, s in zip(clip.timestamps_s, clip.stamps_ns, strict=True))
    assert set(clip.stamps_ns) <= {f.stamp_ns for f in snapshot.frames}  # real camera stamps
    assert clip.track_ids == [1, 2, 3] and not clip.clamped


def test_window_selects_the_recent_past_and_is_clamped_to_the_buffer(snapshot):
    recent = sample_clip(snapshot, window_s=2.0, num_frames=16)
    assert recent.window_s == pytest.approx(2.0) and len(recent.stamps_ns) <= 5
    assert min(recent.stamps_ns) >= snapshot.end_ns - 2 * NS
    longer = sample_clip(snapshot, window_s=60.0, num_frames=4)
    assert longer.clamped and longer.window_s == pytest.approx(snapshot.duration_s)
    assert len(longer.stamps_ns) == 4


def test_ids_are_drawn_with_render_ids_on_scaled_tracks(snapshot):
    clip = sample_clip(snapshot, num_frames=4)
    frame = next(f for f in snapshot.frames if f.stamp_ns == clip.stamps_ns[1])
    width, height = clip.size
    resized = __import__("cv2").resize(frame.rgb_small, (width, height), interpolation=__import__("cv2").INTER_AREA)
    tracks = snapshot.tracks_at(clip.stamps_ns[1]).tracks
    scaled = Tracks(xyxy=tracks.xyxy * np.array([width / 640, height / 480] * 2, np.float32), track_id=tracks.track_id)
    np.testing.assert_array_equal(clip.frames_rgb_with_ids[1], render_ids(resized, scaled))
    red = (clip.frames_rgb_with_ids[1] == [255, 0, 0]).all(axis=2)
    assert red.any() and not (resized == [255, 0, 0]).all(axis=2).any()  # IDs only on the sampled copies
    assert not (frame.rgb_small == [255, 0, 0]).all(axis=2).any()  # the buffer itself stays clean


def test_sampling_calls_the_one_renderer(snapshot, monkeypatch):
    calls = []
    monkeypatch.setattr(sampling, "render_ids", lambda frame, tracks, style=None: calls.append(len(tracks)) or frame)
    sample_clip(snapshot, num_frames=3)
    assert calls == [3, 3, 3]


def test_nothing_to_sample_is_a_clear_error():
    with pytest.raises(SamplingError, match="no camera frames"):
        sample_clip(ClipBuffer().snapshot())
    with pytest.raises(ValueError, match="window_s"):
        sample_clip(synthetic_snapshot(seconds=1.0), window_s=float("nan"))
    with pytest.raises(ValueError, match="num_frames"):
        sample_clip(synthetic_snapshot(seconds=1.0), num_frames=0)


# ---------------------------------------------------------------- tube


def test_tube_has_the_trackers_box_on_every_frame_of_the_span(snapshot):
    start, end = snapshot.start_ns + 1 * NS, snapshot.start_ns + 2 * NS
    tube = build_tube(snapshot, 1, start, end)
    frames = [f for f in snapshot.track_frames if start <= f.stamp_ns <= end]
    assert [e.stamp_ns for e in tube] == [f.stamp_ns for f in frames] and len(tube) == 11
    for entry, frame in zip(tube, frames, strict=True):
        np.testing.assert_allclose(entry.xyxy, frame.tracks.box_of(1))
        assert entry.frame_id == "camera" and not entry.interpolated


def test_tube_flags_predicted_boxes_and_interpolates_gaps(snapshot):
    t0 = snapshot.start_ns
    tube = build_tube(snapshot, 2, t0 + int(2.5 * NS), t0 + int(4.0 * NS))
    by_stamp = {e.stamp_ns: e for e in tube}
    assert len(tube) == 16  # 2.5 s .. 4.0 s at 10 fps, the 3.0-3.5 s gap filled in
    gap = [e for e in tube if t0 + 3 * NS <= e.stamp_ns < t0 + int(3.5 * NS)]
    assert len(gap) == 5 and all(e.interpolated for e in gap)
    # linear between the last box before (t=2.9: y1 = 98) and the first after (t=3.5: y1 = 110)
    middle = by_stamp[t0 + int(3.2 * NS)]
    assert middle.xyxy[1] == pytest.approx(98 + (110 - 98) * 0.3 / 0.6, abs=0.01)
    predicted = [e for e in tube if e not in gap]
    frame_index = {f.stamp_ns: i for i, f in enumerate(snapshot.track_frames)}
    assert all(e.interpolated == (frame_index[e.stamp_ns] % 3 == 1) for e in predicted)


def test_tube_edges():
    frames = [TrackedFrame(s * NS, Tracks(xyxy=[[0, 0, 10, 10]], track_id=[5]) if 3 <= s <= 5 else Tracks())
              for s in range(10)]

    class Snap:
        track_frames = frames

    assert [e.stamp_ns // NS for e in build_tube(Snap, 5, 0, 9 * NS)] == [3, 4, 5]
    held = build_tube(Snap, 5, 0, 9 * NS, hold_ends=True)
    assert len(held) == 10 and [e.interpolated for e in held].count(False) == 3
    assert build_tube(Snap, 6, 0, 9 * NS) == []  # an ID that never appears
    assert [e.stamp_ns for e in build_tube(Snap, 5, int(4.2 * NS), int(4.3 * NS))] == [4 * NS]  # sub-frame span
    assert [e.stamp_ns for e in build_tube(Snap, 5, 5 * NS, 3 * NS)] == [3 * NS, 4 * NS, 5 * NS]  # reversed
    assert build_tube(Snap, 5, 4 * NS, 4 * NS)[0].to_json(clip_start_ns=0) == {
        "stamp": 4.0, "stamp_ns": 4 * NS, "box": [0.0, 0.0, 10.0, 10.0], "interpolated": False, "t": 4.0}


def test_clip_numbering_draws_one_to_k_in_order_of_first_appearance_and_maps_back():
    # the robot's tracker has counted far: objects 1, 2, 3 carry IDs 152, 9, 1041
    snapshot = synthetic_snapshot(seconds=8.0, fps=10.0, track_ids=(152, 9, 1041))
    by_track = sample_clip(snapshot, num_frames=4)
    clip = sample_clip(snapshot, num_frames=4, id_numbering="clip")
    assert by_track.track_ids == clip.track_ids == [9, 152, 1041]  # what is tracked does not change
    assert by_track.prompt_ids == [9, 152, 1041] and by_track.drawn_numbers == {}
    assert clip.drawn_numbers == {9: 1, 152: 2, 1041: 3}  # all on frame 0: oldest (smallest) ID first
    assert clip.prompt_ids == [1, 2, 3]
    assert [clip.track_id_of(n) for n in (1, 2, 3, 4)] == [9, 152, 1041, None]
    assert by_track.track_id_of(152) == 152 and by_track.track_id_of(2) is None
    # the frames carry the numbers, drawn by the one renderer at the same places
    width, height = clip.size
    tracks = snapshot.tracks_at(clip.stamps_ns[1]).tracks
    frame = next(f for f in snapshot.frames if f.stamp_ns == clip.stamps_ns[1])
    resized = __import__("cv2").resize(frame.rgb_small, (width, height), interpolation=__import__("cv2").INTER_AREA)
    numbered = Tracks(xyxy=tracks.xyxy * np.array([width / 640, height / 480] * 2, np.float32),
                      track_id=np.array([clip.drawn_numbers[int(t)] for t in tracks.track_id]))
    np.testing.assert_array_equal(clip.frames_rgb_with_ids[1], render_ids(resized, numbered))
    assert not np.array_equal(clip.frames_rgb_with_ids[1], by_track.frames_rgb_with_ids[1])


def test_clip_numbers_follow_first_appearance_over_frames():
    assert sampling.clip_numbers([[], [300, 12], [12], [7, 300]]) == {12: 1, 300: 2, 7: 3}
    assert sampling.clip_numbers([]) == {}


def test_unknown_id_numbering_is_refused(snapshot):
    with pytest.raises(ValueError, match="id_numbering"):
        sample_clip(snapshot, num_frames=2, id_numbering="random")
