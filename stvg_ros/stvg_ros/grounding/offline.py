"""OfflinePipeline: frames -> perception -> ClipBuffer -> GroundingPipeline in one process, without ROS.

The parts the graph runs, in the graph's order: the tracker node's `build_perception`, the grounding
node's ClipBuffer and GroundingPipeline (over a `make_backend` backend). `stvg-ros ground`,
`stvg-ros eval run`, `stvg-train prep` and the benchmarks feed it frame by frame:

    pipeline = OfflinePipeline(PerceptionConfig(), BufferConfig(), GroundingConfig(), make_backend(...))
    for index, _, rgb in iter_video(path):
        pipeline.feed(frame_stamp_ns(index, fps), rgb)
    outcome = pipeline.ground(GroundingRequest("the red circle that stops"))

Parts may be left out: without a PerceptionConfig, frames come with given tracks (`feed_tracks`:
ground-truth tracks); without a backend, nothing is grounded (perception and buffer only).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from stvg_ros.core.types import Tracks
from stvg_ros.grounding.backends.base import VlmBackend
from stvg_ros.grounding.pipeline import GroundingConfig, GroundingOutcome, GroundingPipeline, GroundingRequest
from stvg_ros.perception.buffer import BufferConfig, ClipBuffer, ClipSnapshot
from stvg_ros.perception.pipeline import PerceptionConfig, PerceptionPipeline, build_perception

#: frame_id of frames without a header (a video file)
VIDEO_FRAME_ID = "video"


class OfflinePipeline:
    """Perception + clip buffer + grounding, fed one frame at a time (not thread-safe: one caller).

    `backend` is a `make_backend` backend, or a function that makes one: it is then called after the
    detector is built (the detector is the quicker to find missing). The pipeline owns the backend:
    `close()` closes it."""

    def __init__(
        self,
        perception: PerceptionConfig | None = None,
        buffer: BufferConfig | None = None,
        grounding: GroundingConfig | None = None,
        backend: VlmBackend | Callable[[], VlmBackend] | None = None,
    ) -> None:
        self.buffer_config = buffer or BufferConfig()
        self.buffer = ClipBuffer.from_config(self.buffer_config)
        self.perception: PerceptionPipeline | None = build_perception(perception) if perception is not None else None
        self.perception_s = 0.0  # time spent in the detector + tracker, over all videos
        self.backend = backend() if callable(backend) and not hasattr(backend, "generate") else backend
        self.grounding: GroundingPipeline | None = None
        if self.backend is not None:
            try:
                self.grounding = GroundingPipeline(self.backend, grounding)
            except Exception:  # e.g. Sam2Unavailable: do not leave the loaded model behind
                self.close()
                raise

    def feed(self, stamp_ns: int, rgb: np.ndarray, frame_id: str = VIDEO_FRAME_ID) -> Tracks:
        """Run one camera frame through perception and into the buffer (frame and tracks); its tracks."""
        if self.perception is None:
            raise RuntimeError("OfflinePipeline was built without perception; use feed_tracks")
        started = time.perf_counter()
        tracks = self.perception.process(stamp_ns, rgb)
        self.perception_s += time.perf_counter() - started
        self.feed_tracks(stamp_ns, rgb, tracks, frame_id)
        return tracks

    def feed_tracks(self, stamp_ns: int, rgb: np.ndarray, tracks: Tracks, frame_id: str = VIDEO_FRAME_ID) -> None:
        """Put one camera frame and its given tracks into the buffer."""
        self.buffer.add_frame(stamp_ns, rgb, frame_id=frame_id)
        self.buffer.add_tracks(stamp_ns, tracks, frame_id=frame_id, width=rgb.shape[1], height=rgb.shape[0])

    def snapshot(self, window_s: float = 0.0) -> ClipSnapshot:
        """The buffer's last `window_s` seconds (everything when 0)."""
        return self.buffer.snapshot(window_s)

    def ground(
        self,
        request: GroundingRequest,
        snapshot: ClipSnapshot | None = None,
        progress: Callable[[str, float], None] | None = None,
        cancel=None,
    ) -> GroundingOutcome:
        """Answer a request over `snapshot` (default: the buffer's request window); never raises for
        bad input or bad model output (GroundingPipeline.ground)."""
        if self.grounding is None:
            raise RuntimeError("OfflinePipeline was built without a backend; nothing can be grounded")
        if snapshot is None:
            snapshot = self.snapshot(0.0)  # the pipeline cuts the request's window itself
        return self.grounding.ground(snapshot, request, progress=progress, cancel=cancel)

    def reset(self, buffer: BufferConfig | None = None) -> None:
        """A new video: fresh tracks (IDs continue, never reused, as in the tracker node when a replay
        moves on to the next bag) and a fresh buffer (`buffer`, else the current BufferConfig)."""
        if self.perception is not None:
            self.perception.reset()
        self.buffer_config = buffer or self.buffer_config
        self.buffer = ClipBuffer.from_config(self.buffer_config)

    @property
    def model_name(self) -> str:
        return self.grounding.model_name if self.grounding is not None else ""

    def close(self) -> None:
        """Close the backend (frees the model)."""
        close = getattr(self.backend, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> OfflinePipeline:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
