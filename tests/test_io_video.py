"""core/video_io.py: mp4 round trip of RGB frames, info, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from stvg_ros.core.video_io import VideoError, VideoWriter, iter_video, read_video, video_info


def _frames(n=12, width=96, height=64):
    """Smooth frames (codec friendly) that differ from each other and are not grey (RGB order matters)."""
    yy, xx = np.mgrid[0:height, 0:width]
    for i in range(n):
        frame = np.zeros((height, width, 3), np.uint8)
        frame[..., 0] = 200  # red channel high, blue low: a BGR/RGB mix-up shows
        frame[..., 1] = (xx * 2 + i * 10) % 256
        frame[..., 2] = 30 + (yy // 8) * 4
        yield frame


def test_round_trip_is_close_and_in_order(tmp_path):
    path = tmp_path / "clip.mp4"
    frames = list(_frames())
    with VideoWriter(path, fps=10, size=(96, 64)) as writer:
        for frame in frames:
            writer.write(frame)
    assert writer.frames_written == 12
    info = video_info(path)
    assert (info.frames, info.fps, info.width, info.height) == (12, 10.0, 96, 64)
    assert info.duration_s == pytest.approx(1.2)
    decoded = list(iter_video(path))
    assert [i for i, _, _ in decoded] == list(range(12))
    assert [t for _, t, _ in decoded] == pytest.approx([i / 10 for i in range(12)])
    for (_, _, rgb), original in zip(decoded, frames, strict=True):
        assert rgb.shape == (64, 96, 3) and rgb.dtype == np.uint8
        assert np.abs(rgb.astype(int) - original).mean() < 6
    assert rgb[..., 0].mean() > 150 and rgb[..., 2].mean() < 100  # still RGB, not BGR
    stacked, fps = read_video(path, max_frames=5)
    assert stacked.shape == (5, 64, 96, 3) and fps == 10.0


def test_writer_rejects_wrong_frames_and_settings(tmp_path):
    with VideoWriter(tmp_path / "a.mp4", fps=5, size=(32, 16)) as writer:
        with pytest.raises(VideoError, match=r"expected uint8 \(16, 32, 3\)"):
            writer.write(np.zeros((32, 16, 3), np.uint8))
        with pytest.raises(VideoError, match="expected uint8"):
            writer.write(np.zeros((16, 32, 3), np.float32))
    with pytest.raises(VideoError, match="invalid video settings"):
        VideoWriter(tmp_path / "b.mp4", fps=0, size=(32, 16))


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(VideoError, match="not found"):
        video_info(tmp_path / "nope.mp4")
    with pytest.raises(VideoError, match="not found"):
        next(iter_video(tmp_path / "nope.mp4"))
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(VideoError, match=r"garbage\.mp4"):
        video_info(garbage)
    with pytest.raises(VideoError, match=r"garbage\.mp4"):
        list(iter_video(garbage))
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(VideoError):
        list(iter_video(empty))


def test_truncated_video_yields_what_it_can_or_fails_clearly(tmp_path):
    path = tmp_path / "clip.mp4"
    with VideoWriter(path, fps=10, size=(96, 64)) as writer:
        for frame in _frames(30):
            writer.write(frame)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    try:
        frames = list(iter_video(cut))
    except VideoError as exc:
        assert "cut.mp4" in str(exc)
    else:
        assert len(frames) < 30
