"""Read and write video files as RGB uint8 frames (OpenCV; mp4 with the 'mp4v' codec)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np


class VideoError(RuntimeError):
    """A video file that cannot be opened, read or written (says which and why)."""


@dataclass(frozen=True)
class VideoInfo:
    frames: int
    fps: float
    width: int
    height: int
    duration_s: float


class VideoWriter:
    """Writes RGB frames of one size to a video file; use as a context manager.

    >>> with VideoWriter("out.mp4", fps=10, size=(320, 240)) as writer:
    ...     writer.write(rgb_frame)
    """

    def __init__(self, path: str | Path, fps: float, size: tuple[int, int], fourcc: str = "mp4v") -> None:
        self.path = Path(path)
        self.fps = float(fps)
        self.size = (int(size[0]), int(size[1]))  # (width, height), as OpenCV takes it
        if self.fps <= 0 or min(self.size) <= 0:
            raise VideoError(f"invalid video settings for {self.path}: fps={fps}, size={size}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*fourcc), self.fps, self.size)
        if not self._writer.isOpened():
            raise VideoError(f"cannot open {self.path} for writing with codec {fourcc!r}")
        self.frames_written = 0

    def write(self, rgb: np.ndarray) -> None:
        rgb = np.asarray(rgb)
        if rgb.dtype != np.uint8 or rgb.shape != (self.size[1], self.size[0], 3):
            raise VideoError(
                f"frame {self.frames_written} of {self.path} is {rgb.dtype} {rgb.shape}, "
                f"expected uint8 {(self.size[1], self.size[0], 3)}"
            )
        self._writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        self.frames_written += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _open(path: str | Path) -> cv2.VideoCapture:
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"video file not found: {path}")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        capture.release()
        raise VideoError(f"cannot open video {path}: not a video file or unsupported/corrupt container")
    return capture


def video_info(path: str | Path) -> VideoInfo:
    """Frame count, fps and size from the container (the count can be approximate for some codecs)."""
    capture = _open(path)
    try:
        frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        fps = float(capture.get(cv2.CAP_PROP_FPS))
        width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    finally:
        capture.release()
    if frames <= 0 or fps <= 0 or width <= 0 or height <= 0:
        raise VideoError(f"video {path} has no readable frames (frames={frames}, fps={fps}, size={width}x{height})")
    return VideoInfo(frames=frames, fps=fps, width=width, height=height, duration_s=frames / fps)


def iter_video(path: str | Path, max_frames: int | None = None) -> Iterator[tuple[int, float, np.ndarray]]:
    """Yields (index, t_seconds, rgb) for each frame; t = index / fps of the container.

    Raises VideoError when the file is missing or unreadable, or holds no frame at all.
    """
    capture = _open(path)
    try:
        fps = float(capture.get(cv2.CAP_PROP_FPS)) or 0.0
        if fps <= 0:
            raise VideoError(f"video {path} reports no frame rate")
        index = 0
        while max_frames is None or index < max_frames:
            ok, bgr = capture.read()
            if not ok:
                break
            yield index, index / fps, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            index += 1
        if index == 0:
            raise VideoError(f"video {path} has no decodable frames")
    finally:
        capture.release()


def read_video(path: str | Path, max_frames: int | None = None) -> tuple[np.ndarray, float]:
    """All frames as one (T, H, W, 3) RGB array and the fps. For short clips only."""
    fps = video_info(path).fps
    frames = [rgb for _, _, rgb in iter_video(path, max_frames=max_frames)]
    return np.stack(frames), fps
