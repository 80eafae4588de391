"""Frame sampling: N frames over the query window, at the model's pixel budget, IDs drawn on them.

This is what the model sees, for the robot (grounding pipeline) and for training data prep
(`stvg-train prep` calls `sample_clip` on the same clip buffer). Times given to the model are
seconds from the clip start (`clip_start_ns`); results convert back with `stamp_ns_at`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import cv2
import numpy as np

from stvg_ros.core.render import IdStyle, render_ids
from stvg_ros.core.types import Tracks

#: Qwen2.5-VL's resize unit: 14-px patches merged 2x2.
PATCH_FACTOR = 28
#: Per-frame pixel budget (128 visual tokens). Training uses the same (training/configs: max_pixels).
DEFAULT_MAX_PIXELS = 128 * PATCH_FACTOR * PATCH_FACTOR
#: The official minimum per frame (METHOD_DETAILS §1.9: min_pixels = 16·28·28).
DEFAULT_MIN_PIXELS = 16 * PATCH_FACTOR * PATCH_FACTOR
DEFAULT_NUM_FRAMES = 16
NS = 1_000_000_000
#: How the IDs drawn on a clip are numbered. "track": the tracker's persistent IDs, which keep counting
#: on a robot (after an hour: 1042, with more ink over small objects). "clip": 1..K in order of first
#: appearance on the sampled frames, as the official offline pipeline's per-video counter (METHOD.md
#: §2); the model answers with the number drawn and `SampledClip.track_id_of` maps it back.
ID_NUMBERINGS = ("track", "clip")

#: (rgb frame, its tracked objects in that frame's pixels) -> {track_id: (x, y) text origin in those
#: pixels}; e.g. `perception.sam2_refine.MaskAnchors` (SAM2 mask centres). IDs left out: box centre.
AnchorProvider = Callable[[np.ndarray, Tracks], Mapping[int, tuple[int, int]]]


class SamplingError(ValueError):
    """No clip can be sampled (no frames in the buffer or in the window)."""


@dataclass
class SampledClip:
    """The frames the model sees, with the IDs drawn, and where they are in time."""

    frames_rgb_with_ids: list[np.ndarray]
    timestamps_s: list[float]  # of each frame, seconds from clip_start_ns
    stamps_ns: list[int]  # ROS stamps of the sampled camera frames
    clip_start_ns: int  # time 0.00 for the model: the window start
    clip_end_ns: int = 0  # the newest camera frame in the window
    track_ids: list[int] = field(default_factory=list)  # IDs drawn on at least one frame (sorted)
    frame_track_ids: list[list[int]] = field(default_factory=list)  # IDs drawn, per frame
    window_s: float = 0.0  # the window actually used (after clamping to the buffer)
    requested_window_s: float = 0.0
    size: tuple[int, int] = (0, 0)  # (width, height) of the frames sent
    #: track ID -> the number drawn for it ("clip" numbering); empty: the track IDs themselves are drawn
    drawn_numbers: dict[int, int] = field(default_factory=dict)

    @property
    def prompt_ids(self) -> list[int]:
        """The numbers drawn on the frames, i.e. the IDs the model can answer with (sorted)."""
        return sorted(self.drawn_numbers.get(t, t) for t in self.track_ids)

    def track_id_of(self, drawn: int) -> int | None:
        """The track ID whose number `drawn` is on the frames (None: no track has that number)."""
        if not self.drawn_numbers:
            return int(drawn) if int(drawn) in self.track_ids else None
        return next((t for t, n in self.drawn_numbers.items() if n == int(drawn)), None)

    @property
    def duration_s(self) -> float:
        """Length of the clip the model answers about (window start to newest frame)."""
        return (self.clip_end_ns - self.clip_start_ns) / NS

    @property
    def clamped(self) -> bool:
        """True when the requested window was longer than the buffered history."""
        return self.requested_window_s > self.window_s + 1e-3

    def stamp_ns_at(self, seconds: float) -> int:
        """The ROS stamp (ns) of `seconds` from the clip start."""
        return self.clip_start_ns + round(float(seconds) * NS)


def smart_resize(height: int, width: int, min_pixels: int = DEFAULT_MIN_PIXELS,
                 max_pixels: int = DEFAULT_MAX_PIXELS, factor: int = PATCH_FACTOR) -> tuple[int, int]:
    """(height, width) rounded to multiples of `factor` with min_pixels <= h*w <= max_pixels,
    keeping the aspect ratio - the Qwen2.5-VL processor's rule, so it leaves our frames unchanged."""
    if min(height, width) <= 0:
        raise ValueError(f"frame has no pixels: {width}x{height}")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def uniform_indices(count: int, num_frames: int) -> list[int]:
    """`num_frames` indices spread evenly over `count` items, first and last included (as the
    official sampler's round(linspace(0, count - 1, n))); all of them when count <= num_frames."""
    if count <= num_frames:
        return list(range(count))
    if num_frames == 1:
        return [count - 1]
    return sorted({round(i * (count - 1) / (num_frames - 1)) for i in range(num_frames)})


def _tracks_at(snapshot, stamp_ns: int) -> tuple[Tracks, int, int]:
    """Tracks of the camera frame at `stamp_ns` (nearest) with that frame's source (width, height)."""
    track_frames = snapshot.track_frames
    if not track_frames:
        return Tracks.empty(), 0, 0
    stamps = np.fromiter((f.stamp_ns for f in track_frames), dtype=np.int64, count=len(track_frames))
    i = int(np.searchsorted(stamps, stamp_ns))
    candidates = [j for j in (i - 1, i) if 0 <= j < len(stamps)]
    j = min(candidates, key=lambda k: abs(int(stamps[k]) - stamp_ns))
    frame = track_frames[j]
    return frame.tracks, int(frame.width), int(frame.height)


def scale_tracks(tracks: Tracks, sx: float, sy: float) -> Tracks:
    """Tracks with boxes scaled from source pixels to a resized frame."""
    scaled = tracks[np.arange(len(tracks))]
    scaled.xyxy = (tracks.xyxy * np.array([sx, sy, sx, sy], np.float32)).astype(np.float32)
    return scaled


def _scaled_anchors(provider: AnchorProvider, small: np.ndarray, tracked: Tracks, src_w: float, src_h: float,
                    size: tuple[int, int]) -> dict[int, tuple[int, int]]:
    """Text origins from `provider` on the buffered frame, scaled to the resized frame (width, height)."""
    small_h, small_w = small.shape[:2]
    found = provider(np.array(small), scale_tracks(tracked, small_w / src_w, small_h / src_h))
    sx, sy = size[0] / small_w, size[1] / small_h
    return {int(tid): (round(x * sx), round(y * sy)) for tid, (x, y) in found.items()}


def clip_numbers(frame_track_ids: list[list[int]]) -> dict[int, int]:
    """track ID -> 1..K in order of first appearance over the frames (within a frame: oldest ID first)."""
    numbers: dict[int, int] = {}
    for ids in frame_track_ids:
        for track_id in sorted(int(t) for t in ids):
            numbers.setdefault(track_id, len(numbers) + 1)
    return numbers


def window_bounds(snapshot, window_s: float) -> tuple[int, int, float]:
    """(start_ns, end_ns, used_window_s) of the last `window_s` seconds of the snapshot (0: all)."""
    stamps = [f.stamp_ns for f in snapshot.track_frames] + [f.stamp_ns for f in snapshot.frames]
    if not stamps:
        raise SamplingError("the clip buffer holds no camera frames yet; nothing to ground")
    first, end = min(stamps), max(stamps)
    start = first if not window_s or window_s <= 0 else max(first, end - round(window_s * NS))
    return int(start), int(end), (end - start) / NS


def sample_clip(
    snapshot,
    window_s: float = 0.0,
    num_frames: int = DEFAULT_NUM_FRAMES,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_pixels: int = DEFAULT_MIN_PIXELS,
    style: IdStyle = IdStyle(),
    anchors: AnchorProvider | None = None,
    id_numbering: str = "track",
) -> SampledClip:
    """Sample `num_frames` frames of the last `window_s` seconds of a ClipSnapshot (0: all of it).

    Frames come from the snapshot's model-rate frames (`snapshot.frames`), spread evenly over the
    window, resized to the pixel budget with Qwen's rule; each frame gets the tracks of its camera
    frame (`snapshot.track_frames`), scaled to the resized frame, drawn by `render_ids`.
    A window longer than the buffer is clamped (`SampledClip.clamped` says so).
    `anchors` (optional, e.g. SAM2 refinement) is called once per sampled frame with the buffered
    frame and its tracks in that frame's pixels; its text origins are scaled to the resized frame.
    Without it (the default) IDs are drawn at their box centres. `id_numbering` (`ID_NUMBERINGS`):
    "clip" draws 1..K instead of the track IDs (`SampledClip.drawn_numbers` holds the mapping).
    Raises SamplingError when there is no frame to sample.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if id_numbering not in ID_NUMBERINGS:
        raise ValueError(f"id_numbering must be one of {ID_NUMBERINGS}, got {id_numbering!r}")
    if window_s is None or not math.isfinite(float(window_s)) or window_s < 0:
        raise ValueError(f"window_s must be a finite number >= 0 (0: the whole buffer), got {window_s}")
    start_ns, end_ns, used_s = window_bounds(snapshot, window_s)
    candidates = [f for f in snapshot.frames if start_ns <= f.stamp_ns <= end_ns]
    if not candidates:
        raise SamplingError(f"no buffered model frames between the window start and the newest frame "
                            f"({used_s:.2f} s); wait for more camera frames")
    chosen = [candidates[i] for i in uniform_indices(len(candidates), num_frames)]
    frames, stamps, per_frame_ids, drawn_frames = [], [], [], []
    size = (0, 0)
    for sampled in chosen:
        small = sampled.rgb_small
        height, width = smart_resize(small.shape[0], small.shape[1], min_pixels, max_pixels)
        if (height, width) != small.shape[:2]:
            interpolation = cv2.INTER_AREA if height * width < small.shape[0] * small.shape[1] else cv2.INTER_LINEAR
            resized = cv2.resize(small, (width, height), interpolation=interpolation)
        else:
            resized = np.ascontiguousarray(small)
        tracks, src_w, src_h = _tracks_at(snapshot, sampled.stamp_ns)
        if src_w <= 0 or src_h <= 0:  # fall back to the buffer's downscale factor
            scale = float(getattr(sampled, "scale", 1.0) or 1.0)
            src_w, src_h = small.shape[1] / scale, small.shape[0] / scale
        tracked = tracks[tracks.track_id >= 0]
        drawn = scale_tracks(tracked, width / src_w, height / src_h)
        sides = np.minimum(drawn.xyxy[:, 2] - drawn.xyxy[:, 0], drawn.xyxy[:, 3] - drawn.xyxy[:, 1])
        per_frame_ids.append(sorted(int(t) for t, s in zip(drawn.track_id, sides, strict=True)
                                    if s >= style.min_box_side_px))
        drawn_frames.append((small, resized, tracked, drawn, src_w, src_h))
        stamps.append(int(sampled.stamp_ns))
        size = (width, height)
    numbers = clip_numbers(per_frame_ids) if id_numbering == "clip" else {}
    for small, resized, tracked, drawn, src_w, src_h in drawn_frames:
        origins = None
        if anchors is not None and len(tracked):
            origins = _scaled_anchors(anchors, small, tracked, src_w, src_h, (resized.shape[1], resized.shape[0]))
        if numbers:
            drawn = drawn[np.arange(len(drawn))]
            drawn.track_id = np.asarray([numbers.get(int(t), -1) for t in drawn.track_id], drawn.track_id.dtype)
            origins = {numbers[t]: xy for t, xy in origins.items() if t in numbers} if origins is not None else None
        frames.append(render_ids(resized, drawn, style, anchors=origins) if origins is not None
                      else render_ids(resized, drawn, style))
    return SampledClip(
        frames_rgb_with_ids=frames,
        timestamps_s=[(s - start_ns) / NS for s in stamps],
        stamps_ns=stamps,
        clip_start_ns=start_ns,
        clip_end_ns=end_ns,
        track_ids=sorted({t for ids in per_frame_ids for t in ids}),
        frame_track_ids=per_frame_ids,
        window_s=used_s,
        requested_window_s=float(window_s) if window_s else used_s,
        size=size,
        drawn_numbers=numbers,
    )
