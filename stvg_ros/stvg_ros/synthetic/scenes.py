"""Deterministic synthetic scenes with ground truth, captions and HC-STVG v2 annotations.

A scene is a few flat-coloured shapes (circle, square, triangle, diamond, hexagon) of three sizes
that move over a lightly textured background: they move in the four screen directions, stop, start,
turn, cross and pass behind each other (fixed z-order) and behind static full-height pillars.
Everything is derived from one seed: same seed and spec -> identical frames and annotations.

Motion is piecewise linear with segment boundaries on frames, so every event (a stop, a turn, a
pass) has an exact frame span. Captions name one target and one event; the span is when the
described event or state holds, and the caption is checked to pick out exactly one object.
Queries are only written about events a camera could follow: the target is at least half
visible on at least half of the span's frames (`mostly_visible`; in the occlusion preset this
holds for clips of at least 2 * occlusion_s + 4 s, which have room for visible leads around the gap).

Difficulty presets:
- easy: distinct colours and shapes, one thin pillar that never hides an object fully;
- occlusion: the target moves behind a wide pillar and is FULLY hidden for `occlusion_s`;
- distractors: look-alikes of the target (same colour and shape, same colour, same shape);
- crossing: the target's path crosses another object's, caption "... after it passes the ...";
- mixed: one of the four above, chosen by the seed (`write_dataset` cycles through them).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from stvg_ros.core.types import Tracks, frame_stamp_ns

#: Bump when generated content changes, so cached datasets (tests, benchmarks) are rebuilt.
SYNTH_VERSION = "2"

DIFFICULTIES = ("easy", "occlusion", "distractors", "crossing", "mixed")
MIXED_ORDER = ("occlusion", "distractors", "crossing", "easy")

#: Colour name -> RGB. Not pure red: IDs are drawn in pure red on top of the frames.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (200, 40, 45),
    "green": (45, 160, 65),
    "blue": (45, 80, 215),
    "yellow": (235, 205, 45),
    "purple": (135, 60, 175),
    "orange": (240, 135, 35),
    "cyan": (40, 190, 205),
}
SHAPES = ("circle", "square", "triangle", "diamond", "hexagon")
#: Size name -> side in pixels at a 240-pixel short image side (scaled with the image).
SIZES = {"small": 18, "medium": 26, "large": 36}
DIRECTIONS: dict[str, tuple[int, int]] = {"right": (1, 0), "left": (-1, 0), "up": (0, -1), "down": (0, 1)}
OPPOSITE = {"right": "left", "left": "right", "up": "down", "down": "up"}
PILLAR_RGB = (92, 84, 80)

#: Shortest span (seconds) a caption may describe.
MIN_SPAN_S = 1.0
_MAX_ATTEMPTS = 300


class _Retry(Exception):
    """This random draw cannot satisfy the scenario; draw again."""


# --------------------------------------------------------------------------------------------
# Public data types


@dataclass
class SceneSpec:
    """What to generate. Defaults: 20 s at 10 fps, 320x240 (the HC-STVG evaluator assumes 20 s clips)."""

    seconds: float = 20.0
    fps: float = 10.0
    width: int = 320
    height: int = 240
    n_objects: int = 4
    difficulty: str = "mixed"
    #: how long the occlusion target is fully hidden ('occlusion' preset)
    occlusion_s: float = 1.5
    #: queries per scene (the first is the scene's annotation; all go to queries.json)
    max_queries: int = 4

    @property
    def num_frames(self) -> int:
        return round(self.seconds * self.fps)

    def validate(self) -> SceneSpec:
        if self.difficulty not in DIFFICULTIES:
            raise ValueError(f"unknown difficulty {self.difficulty!r}; use one of {', '.join(DIFFICULTIES)}")
        if not 1.0 <= self.fps <= 60.0:
            raise ValueError(f"fps must be in [1, 60], got {self.fps}")
        if self.seconds < 4.0 or self.num_frames < 20:
            raise ValueError(f"scenes need at least 4 s and 20 frames, got {self.seconds} s at {self.fps} fps")
        if self.width < 160 or self.height < 120:
            raise ValueError(f"image must be at least 160x120, got {self.width}x{self.height}")
        if not 2 <= self.n_objects <= 8:
            raise ValueError(f"n_objects must be in [2, 8], got {self.n_objects}")
        if self.difficulty in ("distractors", "mixed") and self.n_objects < 3:
            raise ValueError(f"difficulty {self.difficulty!r} needs at least 3 objects")
        if self.difficulty in ("occlusion", "mixed") and not 0.1 <= self.occlusion_s <= self.seconds - 2.5:
            raise ValueError(
                f"occlusion_s must be in [0.1, seconds - 2.5] for the occlusion preset (also in mixed), "
                f"got {self.occlusion_s} for {self.seconds} s clips"
            )
        if self.max_queries < 1:
            raise ValueError("max_queries must be at least 1")
        return self


@dataclass(frozen=True)
class SceneObject:
    id: int  # 1..N, stable for the whole scene
    colour: str
    rgb: tuple[int, int, int]
    shape: str
    size: str  # small | medium | large
    size_px: int
    z: int  # drawing order: higher is in front
    speed_px_s: float

    @property
    def class_id(self) -> int:
        return SHAPES.index(self.shape)

    def description(self, with_size: bool = False) -> str:
        return f"{self.size} {self.colour} {self.shape}" if with_size else f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Event:
    """Something an object does over frames [start_frame, end_frame] (inclusive)."""

    object_id: int
    kind: str  # move | stop | start | turn | reverse | pass
    start_frame: int
    end_frame: int
    direction: str = ""  # move, pass: right|left|up|down; turn: left|right
    other_id: int = 0  # pass: the object passed
    #: long enough on both sides to be described (a turn 1 frame before the clip ends is not);
    #: unclear events still count when checking that a caption is unique
    clear: bool = True

    @property
    def key(self) -> tuple:
        """What a caption says about the event (not when): equal keys are indistinguishable."""
        return (self.kind, self.direction, self.other_id)


@dataclass(frozen=True)
class Query:
    text: str
    target_id: int
    start_s: float
    end_s: float
    start_frame: int  # 0-based, inclusive
    end_frame: int  # 0-based, inclusive
    event: str = ""


@dataclass(frozen=True)
class GtObject:
    id: int
    xyxy: tuple[float, float, float, float]
    visible: float  # visible share of the object's pixels, 0 when fully occluded


@dataclass(frozen=True)
class OcclusionGap:
    """Frames [start_frame, end_frame] in which the target is fully hidden behind `occluder`."""

    target_id: int
    start_frame: int
    end_frame: int
    occluder: tuple[int, int]  # pillar columns [x0, x1)


class SceneGroundTruth:
    """Per-frame boxes and visibility of every object. `gt[i]` is the list of GtObject of frame i."""

    def __init__(self, ids: np.ndarray, class_ids: np.ndarray, boxes: np.ndarray, visible: np.ndarray) -> None:
        self.ids = ids  # (N,) int64
        self.class_ids = class_ids  # (N,) int32
        self.boxes = boxes  # (F, N, 4) float32 xyxy, clipped to the image
        self.visible = visible  # (F, N) float32 in [0, 1]

    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, frame: int) -> list[GtObject]:
        return [
            GtObject(int(obj_id), tuple(float(v) for v in self.boxes[frame, k]), float(self.visible[frame, k]))
            for k, obj_id in enumerate(self.ids)
        ]

    def __iter__(self) -> Iterator[list[GtObject]]:
        return (self[i] for i in range(len(self)))

    def box(self, frame: int, object_id: int) -> np.ndarray:
        return self.boxes[frame, self._column(object_id)].copy()

    def _column(self, object_id: int) -> int:
        columns = np.flatnonzero(self.ids == object_id)
        if not len(columns):
            raise KeyError(f"no object {object_id} in this scene (ids {self.ids.tolist()})")
        return int(columns[0])

    def tracks(self, frame: int, min_visible: float = 0.0) -> Tracks:
        """Perfect tracks of a frame: objects with visible share > min_visible (>= 0 keeps all)."""
        keep = self.visible[frame] > min_visible if min_visible > 0 else np.ones(len(self.ids), bool)
        return Tracks(
            xyxy=self.boxes[frame][keep],
            track_id=self.ids[keep],
            score=np.ones(int(keep.sum()), np.float32),
            class_id=self.class_ids[keep],
            detected=self.visible[frame][keep] > 0,
        )


# --------------------------------------------------------------------------------------------
# Frame/time conventions


#: Header stamp of frame `frame`: the package's one convention (core.types.frame_stamp_ns).
stamp_ns = frame_stamp_ns


def frame_time(frame: int, fps: float) -> float:
    """Seconds of a frame such that floor(t * fps) == frame (the HC-STVG convention)."""
    t = frame / fps
    while math.floor(t * fps) < frame:
        t = math.nextafter(t, math.inf)
    return t


def mostly_visible(shares: np.ndarray | list[float]) -> bool:
    """Whether an object is at least half visible on at least half of the frames (`shares`: its
    visible share per frame): what a camera needs to follow it through an event. Generated queries
    are only about events that pass this; training prep uses it to tell hidden targets apart."""
    shares = np.asarray(shares, np.float64)
    return shares.size > 0 and int((shares >= 0.5).sum()) >= 0.5 * shares.size


# --------------------------------------------------------------------------------------------
# Motion: piecewise-linear paths made of (frames, direction or None = standing still) steps


def turn_side(before: str, after: str) -> str:
    """'left', 'right', 'around' or 'straight' for a change of screen direction (y grows down)."""
    (ax, ay), (bx, by) = DIRECTIONS[before], DIRECTIONS[after]
    cross = ax * by - ay * bx
    if cross:
        return "left" if cross < 0 else "right"
    return "straight" if (ax, ay) == (bx, by) else "around"


@dataclass(frozen=True)
class _Rules:
    """What a filler walk may not do, so that the target's scripted event stays unique."""

    allow_stop: bool = True
    forbid_dirs: frozenset = frozenset()
    forbid_turn: str = ""  # left | right | around

    def reversed(self) -> _Rules:
        # Played backwards, a path moves in the opposite directions and its turns change side.
        swap = {"left": "right", "right": "left"}
        return _Rules(
            self.allow_stop,
            frozenset(OPPOSITE[d] for d in self.forbid_dirs),
            swap.get(self.forbid_turn, self.forbid_turn),
        )


@dataclass
class _Mover:
    pos: tuple[float, float]
    speed: float  # pixels per frame
    bounds: tuple[float, float, float, float]  # centre x_min, x_max, y_min, y_max

    def room(self, pos, direction: str) -> float:
        dx, dy = DIRECTIONS[direction]
        x_min, x_max, y_min, y_max = self.bounds
        return {(1, 0): x_max - pos[0], (-1, 0): pos[0] - x_min, (0, 1): y_max - pos[1], (0, -1): pos[1] - y_min}[
            (dx, dy)
        ]


def _walk(rng, mover: _Mover, prev_dir, n_frames: int, fps: float, rules: _Rules, may_start_still=False) -> list:
    """Random steps filling n_frames from mover.pos: moves of 1.2-3.5 s that stay in bounds,
    occasional stops, no move in the direction just taken (no merged segments)."""
    steps: list[tuple[int, str | None]] = []
    pos = mover.pos
    min_seg, max_seg = max(2, round(1.2 * fps)), max(3, round(3.5 * fps))
    remaining = n_frames
    if may_start_still and rules.allow_stop and rng.random() < 0.25:
        n = min(remaining, int(rng.integers(round(1.0 * fps), round(3.0 * fps) + 1)))
        steps.append((n, None))
        remaining -= n
    while remaining > 0:
        options, weights = [], []
        for direction in DIRECTIONS:
            if direction in rules.forbid_dirs or direction == prev_dir:
                continue
            side = turn_side(prev_dir, direction) if prev_dir else ""
            if side and side == rules.forbid_turn:
                continue
            room_frames = int(mover.room(pos, direction) / mover.speed + 1e-9)
            if room_frames >= min(min_seg, remaining):
                options.append((direction, room_frames))
                weights.append(0.3 if side == "around" else 1.0)
        may_stop = rules.allow_stop and prev_dir is not None
        if options and not (may_stop and rng.random() < 0.2):
            choice = int(rng.choice(len(options), p=np.asarray(weights) / sum(weights)))
            direction, room_frames = options[choice]
            n = min(int(rng.integers(min_seg, max_seg + 1)), room_frames, remaining)
            dx, dy = DIRECTIONS[direction]
            pos = (pos[0] + dx * mover.speed * n, pos[1] + dy * mover.speed * n)
            steps.append((n, direction))
            prev_dir = direction
        elif may_stop or prev_dir is None:
            n = min(remaining, int(rng.integers(round(1.5 * fps), round(3.0 * fps) + 1)))
            steps.append((n, None))
            prev_dir = None
        else:
            raise _Retry("walk is stuck")
        remaining -= steps[-1][0]
    return steps


def _integrate(start, steps, speed: float) -> np.ndarray:
    """Centre positions at every frame (sum(steps)+1 rows) of a path of steps."""
    points = [np.asarray(start, np.float64)]
    for n, direction in steps:
        d = np.asarray(DIRECTIONS[direction] if direction else (0, 0), np.float64)
        frames = np.arange(1, n + 1)[:, None]
        points.extend(points[-1] + d * speed * frames)
    return np.stack(points)


def _segments(steps) -> list[tuple[int, int, str | None]]:
    """Merged (first_frame, last_frame, direction) segments of a path (boundaries shared)."""
    segments: list[list] = []
    frame = 0
    for n, direction in steps:
        if segments and segments[-1][2] == direction:
            segments[-1][1] += n
        else:
            segments.append([frame, frame + n, direction])
        frame += n
    return [tuple(s) for s in segments]


def _core_offsets(core, speed: float) -> np.ndarray:
    return _integrate((0.0, 0.0), core, speed)


def _anchored_path(rng, mover: _Mover, core, anchor_frame: int, last_frame: int, fps: float, rules: _Rules):
    """A whole-clip path that runs the scripted `core` steps from `anchor_frame` at mover.pos,
    with random filler walks before (generated backwards) and after it."""
    core_frames = sum(n for n, _ in core)
    first_dir = next((d for _, d in core if d), None)
    before = _walk(rng, mover, OPPOSITE[first_dir] if first_dir else None, anchor_frame, fps, rules.reversed())
    before_positions = _integrate(mover.pos, before, mover.speed)
    pre = [(n, OPPOSITE[d] if d else None) for n, d in reversed(before)]
    core_end = _integrate(mover.pos, core, mover.speed)[-1]
    last_dir = core[-1][1]
    after_mover = replace(mover, pos=(float(core_end[0]), float(core_end[1])))
    post = _walk(rng, after_mover, last_dir, last_frame - anchor_frame - core_frames, fps, rules)
    steps = pre + list(core) + post
    return tuple(before_positions[-1]), steps


def _place_core(rng, mover: _Mover, core, n_frames: int, fps: float, margin_s: float = 1.0):
    """A random anchor (frame, centre) from which the core stays in bounds, or _Retry."""
    offsets = _core_offsets(core, mover.speed)
    x_min, x_max, y_min, y_max = mover.bounds
    lo = (x_min - offsets[:, 0].min(), y_min - offsets[:, 1].min())
    hi = (x_max - offsets[:, 0].max(), y_max - offsets[:, 1].max())
    if lo[0] > hi[0] or lo[1] > hi[1]:
        raise _Retry("core does not fit in the image")
    core_frames = sum(n for n, _ in core)
    slack = n_frames - 1 - core_frames
    if slack < 0:
        raise _Retry("core longer than the clip")
    margin = min(round(margin_s * fps), slack // 2)
    anchor_frame = int(rng.integers(margin, slack - margin + 1))
    return anchor_frame, (float(rng.uniform(lo[0], hi[0])), float(rng.uniform(lo[1], hi[1])))


# --------------------------------------------------------------------------------------------
# Drawing


def _shape_mask(shape: str, side: int) -> np.ndarray:
    """Tight boolean mask of a shape whose box side is about `side` pixels."""
    canvas = np.zeros((side, side), np.uint8)
    c, r = (side - 1) / 2.0, side / 2.0
    if shape == "circle":
        yy, xx = np.mgrid[0:side, 0:side]
        canvas[(xx - c) ** 2 + (yy - c) ** 2 <= r * r] = 1
    elif shape == "square":
        canvas[:, :] = 1
    elif shape == "diamond":
        yy, xx = np.mgrid[0:side, 0:side]
        canvas[np.abs(xx - c) + np.abs(yy - c) <= r] = 1
    else:
        if shape == "triangle":
            points = [(c, 0), (side - 1, side - 1), (0, side - 1)]
        else:  # hexagon, flat top
            points = [(c + r * math.cos(a), c + r * math.sin(a)) for a in np.linspace(0, 2 * math.pi, 7)[:-1]]
        cv2.fillPoly(canvas, [np.round(np.asarray(points)).astype(np.int32)], 1)
    ys, xs = np.nonzero(canvas)
    return canvas[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].astype(bool)


def _shape_patch(rgb, mask: np.ndarray) -> np.ndarray:
    """Flat colour with a darker rim and a slight top-to-bottom shading."""
    h, w = mask.shape
    shade = np.linspace(1.08, 0.9, h)[:, None, None]
    patch = np.asarray(rgb, np.float32)[None, None, :] * shade * np.ones((h, w, 1), np.float32)
    inner = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    patch[mask & ~inner] *= 0.7
    return np.clip(patch, 0, 255).astype(np.uint8)


def _background(rng, width: int, height: int) -> np.ndarray:
    base = rng.uniform(125, 175) + rng.uniform(-12, 12, size=3)
    # Soft blobs, mostly brightness with a little colour.
    coarse = rng.normal(0, 1, size=(6, 8, 1)) * 9.0 + rng.normal(0, 1, size=(6, 8, 3)) * 3.0
    blobs = cv2.resize(coarse.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    gradient = np.linspace(-10, 10, height, dtype=np.float32)[:, None, None]
    grain = rng.integers(-4, 5, size=(height, width, 1)).astype(np.float32)
    return np.clip(base + blobs + gradient + grain, 0, 255).astype(np.uint8)


def _pillar_strip(height: int, width: int) -> np.ndarray:
    x = np.arange(width, dtype=np.float32)
    ribs = 8.0 * np.sin(x * 2 * math.pi / 6.0)
    edge = -18.0 * (np.minimum(x, width - 1 - x) < 2)
    rows = np.asarray(PILLAR_RGB, np.float32)[None, :] + (ribs + edge)[:, None]
    return np.broadcast_to(np.clip(rows, 0, 255).astype(np.uint8)[None], (height, width, 3)).copy()


# --------------------------------------------------------------------------------------------
# The scene


@dataclass
class _Build:
    objects: list[SceneObject]
    starts: dict[int, tuple[float, float]]
    steps: dict[int, list]
    occluders: list[tuple[int, int]]
    target_id: int
    core_event: tuple  # (kind, direction, a frame inside it, other_id) of the target's scripted event
    difficulty: str
    primary_visible: bool  # whether the scripted event's query must pass `mostly_visible`


@dataclass
class Scene:
    """A generated scene. Frames are rendered on demand; ground truth and queries are precomputed."""

    seed: int
    spec: SceneSpec
    name: str
    difficulty: str  # the preset actually used (mixed resolves to one of the others)
    objects: list[SceneObject]
    occluders: list[tuple[int, int]]
    centres: np.ndarray  # (F, N, 2) float centre of each object
    events: list[Event]
    queries: list[Query]
    gt: SceneGroundTruth
    target_id: int
    occlusion: OcclusionGap | None
    _background: np.ndarray = field(repr=False, default=None)
    _masks: list = field(repr=False, default_factory=list)
    _patches: list = field(repr=False, default_factory=list)
    _pillars: list = field(repr=False, default_factory=list)

    @property
    def fps(self) -> float:
        return self.spec.fps

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return self.spec.width, self.spec.height

    @property
    def num_frames(self) -> int:
        return len(self.centres)

    def stamp_ns(self, frame: int) -> int:
        return stamp_ns(frame, self.fps)

    def _top_left(self, frame: int, k: int) -> tuple[int, int]:
        h, w = self._masks[k].shape
        cx, cy = self.centres[frame, k]
        return math.floor(cx - w / 2 + 0.5), math.floor(cy - h / 2 + 0.5)

    def _paste(self, canvas: np.ndarray, k: int, frame: int, value) -> None:
        """Write `value` (array patch or scalar) into canvas where object k's mask is, clipped."""
        mask = self._masks[k]
        x0, y0 = self._top_left(frame, k)
        H, W = canvas.shape[:2]
        ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x0 + mask.shape[1], W), min(y0 + mask.shape[0], H)
        if ix0 >= ix1 or iy0 >= iy1:
            return
        sub = mask[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]
        region = canvas[iy0:iy1, ix0:ix1]
        if isinstance(value, np.ndarray):
            region[sub] = value[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0][sub]
        else:
            region[sub] = value

    def _z_order(self) -> list[int]:
        return sorted(range(len(self.objects)), key=lambda k: self.objects[k].z)

    def render_frame(self, frame: int) -> np.ndarray:
        """RGB uint8 (H, W, 3) of one frame."""
        if not 0 <= frame < self.num_frames:
            raise IndexError(f"frame {frame} outside 0..{self.num_frames - 1}")
        image = self._background.copy()
        for k in self._z_order():
            self._paste(image, k, frame, self._patches[k])
        for (x0, x1), strip in zip(self.occluders, self._pillars, strict=True):
            image[:, x0:x1] = strip
        return image

    def background(self) -> np.ndarray:
        """The empty scene (textured background, no objects, no pillars)."""
        return self._background.copy()

    def frames(self) -> Iterator[np.ndarray]:
        """All frames, rendered one at a time."""
        return (self.render_frame(i) for i in range(self.num_frames))

    def _compute_gt(self) -> SceneGroundTruth:
        n_frames, n = self.centres.shape[:2]
        W, H = self.size
        boxes = np.zeros((n_frames, n, 4), np.float32)
        visible = np.zeros((n_frames, n), np.float32)
        areas = np.asarray([m.sum() for m in self._masks], np.float64)
        labels = np.empty((H, W), np.int16)
        order = self._z_order()
        for f in range(n_frames):
            labels.fill(-1)
            for k in order:
                self._paste(labels, k, f, k)
                x0, y0 = self._top_left(f, k)
                h, w = self._masks[k].shape
                boxes[f, k] = (max(x0, 0), max(y0, 0), min(x0 + w, W), min(y0 + h, H))
            for x0, x1 in self.occluders:
                labels[:, x0:x1] = -1
            counts = np.bincount(labels.ravel() + 1, minlength=n + 1)[1:]
            visible[f] = counts / areas
        ids = np.asarray([o.id for o in self.objects], np.int64)
        class_ids = np.asarray([o.class_id for o in self.objects], np.int32)
        return SceneGroundTruth(ids, class_ids, boxes, visible)

    # ---- exports

    def query_annotation(self, query: Query) -> dict:
        """HC-STVG v2 entry for one query (plus fps and target_id)."""
        boxes = self.gt.boxes[query.start_frame : query.end_frame + 1, self.gt._column(query.target_id)]
        return {
            "img_num": self.num_frames,
            "img_size": [self.spec.height, self.spec.width],
            "st_frame": query.start_frame + 1,
            "bbox": [[int(x0), int(y0), int(x1 - x0), int(y1 - y0)] for x0, y0, x1, y1 in boxes.tolist()],
            "st_time": query.start_s,
            "ed_time": query.end_s,
            "English": query.text,
            "fps": self.fps,
            "target_id": query.target_id,
        }

    def gt_json(self) -> dict:
        """Everything known about the scene, for gt/<name>.json."""
        return {
            "name": self.name,
            "seed": self.seed,
            "synth_version": SYNTH_VERSION,
            "difficulty": self.difficulty,
            "fps": self.fps,
            "width": self.spec.width,
            "height": self.spec.height,
            "num_frames": self.num_frames,
            "target_id": self.target_id,
            "objects": [{**asdict(o), "class_id": o.class_id} for o in self.objects],
            "occluders": [list(o) for o in self.occluders],
            "occlusion": asdict(self.occlusion) if self.occlusion else None,
            "events": [asdict(e) for e in self.events],
            "queries": [asdict(q) for q in self.queries],
            "frames": [
                {
                    "index": f,
                    "stamp_ns": self.stamp_ns(f),
                    "t": f / self.fps,
                    "objects": [
                        {
                            "id": o.id,
                            "xyxy": [int(v) for v in self.gt.boxes[f, k]],
                            "visible": round(float(self.gt.visible[f, k]), 4),
                        }
                        for k, o in enumerate(self.objects)
                    ],
                }
                for f in range(self.num_frames)
            ],
        }


# --------------------------------------------------------------------------------------------
# Events and captions


def _extract_events(object_id: int, steps, centres: np.ndarray, others: dict, sizes: dict, fps: float) -> list[Event]:
    """Events of one object from its path; `centres` and `others` (object id -> centres) are the
    (F, 2) centres of the drawn boxes, so that events agree with the ground-truth boxes."""
    events: list[Event] = []
    segments = _segments(steps)
    second, clear = max(1, round(1.0 * fps)), max(1, round(0.5 * fps))
    for i, (f0, f1, direction) in enumerate(segments):
        prev = segments[i - 1] if i else None
        nxt = segments[i + 1] if i + 1 < len(segments) else None
        if direction:
            events.append(Event(object_id, "move", f0, f1, direction))
            if prev and prev[2]:
                side = turn_side(prev[2], direction)
                kind = "reverse" if side == "around" else "turn"
                half = min(second, f0 - prev[0], f1 - f0)  # the span is centred on the turn
                events.append(
                    Event(object_id, kind, f0 - half, f0 + half, side if kind == "turn" else "", 0, half >= clear)
                )
            events.extend(_passes(object_id, f0, f1, direction, centres, others, sizes))
        else:
            if prev:
                events.append(Event(object_id, "stop", f0, f1, clear=prev[1] - prev[0] >= clear))
            if nxt and nxt[2]:
                events.append(Event(object_id, "start", nxt[0], nxt[1], clear=f1 - f0 >= clear))
    return events


def _passes(object_id, f0, f1, direction, centres, others, sizes) -> list[Event]:
    """The object passes another one when, while moving, their centres swap order along the
    motion axis and their boxes overlap across it."""
    axis = 0 if direction in ("left", "right") else 1
    sign = DIRECTIONS[direction][axis]
    events = []
    for other_id, other in others.items():
        ahead = (centres[f0 : f1 + 1, axis] - other[f0 : f1 + 1, axis]) * sign
        across = np.abs(centres[f0 : f1 + 1, 1 - axis] - other[f0 : f1 + 1, 1 - axis])
        reach = (sizes[object_id] + sizes[other_id]) / 2.0
        crossing = np.flatnonzero((ahead[:-1] < 0) & (ahead[1:] >= 0) & (across[1:] < reach))
        events.extend(Event(object_id, "pass", f0 + 1 + int(c), f1, direction, other_id) for c in crossing)
    return events


CAPTION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "move": ("the {d} moving {dir}", "the {d} that moves {dir}"),
    "stop": ("the {d} that stops moving", "the {d} that stops", "the {d} that comes to a stop"),
    "start": ("the {d} that starts moving", "the {d} that starts to move"),
    "turn": ("the {d} that turns {dir}", "the {d} turning {dir}"),
    "reverse": ("the {d} that turns around", "the {d} that reverses direction"),
    "pass": ("the {d} moving {dir} after it passes the {o}", "the {d} that keeps moving {dir} after passing the {o}"),
}


def _unique_description(obj: SceneObject, objects: list[SceneObject]) -> str | None:
    for with_size in (False, True):
        if sum(_same_look(o, obj, with_size) for o in objects) == 1:
            return obj.description(with_size)
    return None


def _same_look(a: SceneObject, b: SceneObject, with_size: bool) -> bool:
    return a.colour == b.colour and a.shape == b.shape and (not with_size or a.size == b.size)


def _caption(event: Event, objects: list[SceneObject], events: list[Event], fps: float, rng) -> str | None:
    """A caption naming only this event's object, or None when no wording is unambiguous.

    Unambiguous means: the object has this kind of event exactly once (so the span is defined), and no
    other object that fits the description (colour+shape, else size+colour+shape) ever has it.
    """
    if not event.clear or event.end_frame - event.start_frame < MIN_SPAN_S * fps:
        return None
    by_id = {o.id: o for o in objects}
    keys: dict[int, list[tuple]] = {o.id: [] for o in objects}
    for e in events:
        keys[e.object_id].append(e.key)
    if keys[event.object_id].count(event.key) != 1:
        return None
    other = ""
    if event.kind == "pass":
        other = _unique_description(by_id[event.other_id], objects)
        if other is None:
            return None
    target = by_id[event.object_id]
    for with_size in (False, True):
        rivals = [o for o in objects if o.id != target.id and _same_look(o, target, with_size)]
        if all(event.key not in keys[o.id] for o in rivals):
            templates = CAPTION_TEMPLATES[event.kind]
            text = templates[int(rng.integers(len(templates)))]
            return text.format(d=target.description(with_size), dir=event.direction, o=other)
    return None


def _query(event: Event, text: str, fps: float) -> Query:
    return Query(
        text=text,
        target_id=event.object_id,
        start_s=frame_time(event.start_frame, fps),
        end_s=frame_time(event.end_frame, fps),
        start_frame=event.start_frame,
        end_frame=event.end_frame,
        event=event.kind,
    )


# --------------------------------------------------------------------------------------------
# Scenario builders


def _make_objects(rng, spec: SceneSpec, difficulty: str) -> list[SceneObject]:
    scale = min(spec.width, spec.height) / 240.0
    n = spec.n_objects
    colours, shapes, sizes = list(COLOURS), list(SHAPES), list(SIZES)
    # The occlusion target is not large, so that the pillar hiding it stays narrow.
    target_sizes = sizes[:2] if difficulty == "occlusion" else sizes
    target = (str(rng.choice(colours)), str(rng.choice(shapes)), str(rng.choice(target_sizes)))
    looks: list[tuple[str, str, str]] = [target]
    if difficulty == "distractors":
        other_colours = [c for c in colours if c != target[0]]
        other_shapes = [s for s in shapes if s != target[1]]
        # A look-alike (same colour and shape; same size half of the time), a colour twin, a shape twin.
        lookalike_size = target[2] if rng.random() < 0.5 else str(rng.choice([s for s in sizes if s != target[2]]))
        looks.append((target[0], target[1], lookalike_size))
        looks.append((target[0], str(rng.choice(other_shapes)), str(rng.choice(sizes))))
        if n > 3:
            looks.append((str(rng.choice(other_colours)), target[1], str(rng.choice(sizes))))
    while len(looks) < n:
        candidate = (str(rng.choice(colours)), str(rng.choice(shapes)), str(rng.choice(sizes)))
        used_colours = {c for c, _, _ in looks}
        used_shapes = {s for _, s, _ in looks}
        distinct = difficulty == "easy" and len(looks) < min(len(colours), len(shapes))
        if distinct and (candidate[0] in used_colours or candidate[1] in used_shapes):
            continue
        if any(candidate[:2] == look[:2] for look in looks):
            continue
        looks.append(candidate)
    looks = looks[:n]
    order = rng.permutation(n)  # target and distractors get random ids
    z_values = rng.permutation(n)
    objects = []
    for k, (colour, shape, size) in enumerate(looks):
        speed = float(rng.uniform(20, 45)) * spec.width / 320.0
        objects.append(
            SceneObject(
                id=int(order[k]) + 1,
                colour=colour,
                rgb=COLOURS[colour],
                shape=shape,
                size=size,
                size_px=max(6, round(SIZES[size] * scale)),
                z=int(z_values[k]),
                speed_px_s=round(speed, 3),
            )
        )
    return objects  # objects[0] is the target


def _bounds(spec: SceneSpec, mask: np.ndarray) -> tuple[float, float, float, float]:
    h, w = mask.shape
    return (w / 2 + 2, spec.width - w / 2 - 2, h / 2 + 2, spec.height - h / 2 - 2)


def _random_dirs(rng) -> list[str]:
    return [str(d) for d in rng.permutation(list(DIRECTIONS))]


def _event_core(rng, kind: str, fps: float):
    """Scripted steps for the target's event and the rules that keep it unique."""
    s = fps
    if kind == "stop":
        d = _random_dirs(rng)[0]
        core = [
            (int(rng.integers(round(1.5 * s), round(3 * s) + 1)), d),
            (int(rng.integers(round(1.5 * s), round(3 * s) + 1)), None),
        ]
        return core, _Rules(allow_stop=False), ("stop", "")
    if kind == "turn":
        d0, side = _random_dirs(rng)[0], str(rng.choice(["left", "right"]))
        d1 = next(d for d in DIRECTIONS if turn_side(d0, d) == side)
        core = [
            (int(rng.integers(round(1.5 * s), round(2.5 * s) + 1)), d0),
            (int(rng.integers(round(1.5 * s), round(2.5 * s) + 1)), d1),
        ]
        return core, _Rules(forbid_turn=side), ("turn", side)
    d = _random_dirs(rng)[0]
    return [(int(rng.integers(round(2 * s), round(4 * s) + 1)), d)], _Rules(forbid_dirs=frozenset({d})), ("move", d)


def _build(rng, spec: SceneSpec, difficulty: str) -> tuple[_Build, list, list]:
    fps, last = spec.fps, spec.num_frames - 1
    objects = _make_objects(rng, spec, difficulty)
    masks = [_shape_mask(o.shape, o.size_px) for o in objects]
    target = objects[0]
    movers = {
        o.id: _Mover((0.0, 0.0), o.speed_px_s / fps, _bounds(spec, m)) for o, m in zip(objects, masks, strict=True)
    }
    starts: dict[int, tuple[float, float]] = {}
    steps: dict[int, list] = {}
    occluders: list[tuple[int, int]] = []
    lookalike_rules = _Rules()
    min_side = min(m.shape[1] for m in masks)
    primary_visible = True

    if difficulty == "occlusion":
        gap_s = spec.occlusion_s
        w = masks[0].shape[1]
        # The target crosses a full-height pillar at constant speed, fully visible for `lead_s`
        # before and after. Fast enough for the crossing to fit the clip, slow enough that the
        # pillar (as wide as the object plus the distance covered during the gap) stays narrow.
        # With leads of gap/2 + 0.5 s the target is visible for most of the caption's span (a
        # camera can follow it); clips too short for that get shorter leads.
        lead_s = min(gap_s / 2 + 0.5, max(0.5, (spec.seconds - gap_s - 3.0) / 2))
        primary_visible = lead_s >= gap_s / 2 + 0.5
        time_left = (spec.num_frames - 2) / fps - gap_s - 2 * lead_s
        fastest = (0.3 * spec.width - w - 2) / gap_s
        slowest = (2 * w + 2) / time_left if time_left > 0 else math.inf
        if slowest > fastest:
            raise _Retry("gap too long for this clip and image")
        speed = min(max(target.speed_px_s, slowest), fastest)
        target = objects[0] = replace(target, speed_px_s=round(speed, 3))
        mover = movers[target.id] = replace(movers[target.id], speed=target.speed_px_s / fps)
        # Fully hidden while its columns lie inside the pillar: (pillar_w - w) px of travel >= the gap.
        pillar_w = w + math.ceil(target.speed_px_s * gap_s) + 1
        lead = target.speed_px_s * lead_s
        travel = pillar_w + w + 2 * lead
        d = str(rng.choice(["left", "right"]))
        core = [(math.ceil(travel / mover.speed), d)]
        anchor_frame, anchor = _place_core(rng, mover, core, spec.num_frames, fps, margin_s=0.5)
        leading_edge = anchor[0] + w / 2 if d == "right" else anchor[0] - w / 2
        x0 = leading_edge + lead if d == "right" else leading_edge - lead - pillar_w
        occluders.append((round(x0), round(x0) + pillar_w))
        rules = _Rules(forbid_dirs=frozenset({d}))
        core_event = ("move", d, anchor_frame, 0)
    elif difficulty == "crossing":
        # The target moves straight for 1-2 s, meets a partner, and goes on for 1.5-3 s.
        mover = movers[target.id]
        before = int(rng.integers(round(1.0 * fps), round(2.0 * fps) + 1))
        after = int(rng.integers(round(1.5 * fps), round(3.0 * fps) + 1))
        d = _random_dirs(rng)[0]
        core = [(before + after, d)]
        anchor_frame, anchor = _place_core(rng, mover, core, spec.num_frames, fps)
        rules = _Rules(forbid_dirs=frozenset({d}))
        cross_frame = anchor_frame + before
        meet = np.asarray(anchor) + np.asarray(DIRECTIONS[d]) * mover.speed * before
        partner = objects[1]
        core_event = ("pass", d, cross_frame, partner.id)
        starts[partner.id], steps[partner.id] = _crossing_partner(
            rng, movers[partner.id], meet, d, cross_frame, last, fps
        )
        occluders.append(_random_pillar(rng, spec, int(0.8 * SIZES["medium"] * spec.height / 240), occluders))
    else:
        kind = str(rng.choice(["stop", "turn", "move"]))
        core, rules, (event_kind, event_dir) = _event_core(rng, kind, fps)
        mover = movers[target.id]
        anchor_frame, anchor = _place_core(rng, mover, core, spec.num_frames, fps)
        core_frame = anchor_frame + (core[0][0] if kind in ("stop", "turn") else 0)
        core_event = (event_kind, event_dir if event_kind != "move" else core[0][1], core_frame, 0)
        if difficulty == "distractors":
            lookalike_rules = rules
        width = max(4, int(0.6 * min_side)) if difficulty == "easy" else int(0.8 * SIZES["medium"] * spec.height / 240)
        occluders.append(_random_pillar(rng, spec, width, occluders))

    mover.pos = anchor
    for _ in range(30):
        starts[target.id], steps[target.id] = _anchored_path(rng, mover, core, anchor_frame, last, fps, rules)
        if difficulty != "occlusion" or not _hides_long_outside(
            starts[target.id],
            steps[target.id],
            mover.speed,
            masks[0].shape[1],
            occluders[0],
            core,
            anchor_frame,
            round(spec.occlusion_s * fps),
        ):
            break
    else:
        raise _Retry("target keeps hiding behind the pillar")
    if difficulty == "occlusion" and rng.random() < 0.5:
        occluders.append(_random_pillar(rng, spec, max(4, int(0.6 * min_side)), occluders))

    for o in objects:
        if o.id in steps:
            continue
        m = movers[o.id]
        x_min, x_max, y_min, y_max = m.bounds
        m.pos = (float(rng.uniform(x_min, x_max)), float(rng.uniform(y_min, y_max)))
        rules_o = lookalike_rules if _same_look(o, target, False) else _Rules()
        starts[o.id] = m.pos
        steps[o.id] = _walk(rng, m, None, last, fps, rules_o, may_start_still=True)
    build = _Build(objects, starts, steps, occluders, target.id, core_event, difficulty, primary_visible)
    return build, masks, [_shape_patch(o.rgb, m) for o, m in zip(objects, masks, strict=True)]


def _crossing_partner(rng, mover: _Mover, meet: np.ndarray, target_dir: str, cross_frame: int, last: int, fps: float):
    """A path that is at `meet` on `cross_frame`: standing there, or crossing the target's line."""
    x_min, x_max, y_min, y_max = mover.bounds
    if not (x_min <= meet[0] <= x_max and y_min <= meet[1] <= y_max):
        raise _Retry("meeting point outside the partner's bounds")
    before = min(cross_frame, int(rng.integers(round(1.0 * fps), round(2.0 * fps) + 1)))
    after = min(last - cross_frame, int(rng.integers(round(1.0 * fps), round(2.0 * fps) + 1)))
    if rng.random() < 0.3:
        core, start = [(before + after, None)], meet
    else:
        e = str(rng.choice([x for x in DIRECTIONS if turn_side(target_dir, x) in ("left", "right")]))
        before = min(before, int(mover.room(tuple(meet), OPPOSITE[e]) / mover.speed))
        after = min(after, int(mover.room(tuple(meet), e) / mover.speed))
        if before < 2 or after < 2:
            raise _Retry("partner has no room to cross")
        core, start = [(before + after, e)], meet - np.asarray(DIRECTIONS[e]) * mover.speed * before
    mover.pos = (float(start[0]), float(start[1]))
    return _anchored_path(rng, mover, core, cross_frame - before, last, fps, _Rules())


def _hides_long_outside(start, steps, speed, width, pillar, core, anchor_frame, limit) -> bool:
    """Whether the pillar hides the target for more than `limit` frames outside its scripted core."""
    xs = _integrate(start, steps, speed)[:, 0]
    left = np.floor(xs - width / 2 + 0.5)
    hidden = (left >= pillar[0]) & (left + width <= pillar[1])
    core_frames = sum(n for n, _ in core)
    hidden[anchor_frame : anchor_frame + core_frames + 1] = False
    return int(hidden.sum()) > limit


def _random_pillar(rng, spec: SceneSpec, width: int, taken: list[tuple[int, int]]) -> tuple[int, int]:
    """Columns of a pillar that does not touch the ones already placed."""
    for _ in range(50):
        x0 = int(rng.integers(int(0.1 * spec.width), int(0.9 * spec.width) - width))
        if all(x0 + width + 4 <= a or x0 >= b + 4 for a, b in taken):
            return (x0, x0 + width)
    raise _Retry("no room for another pillar")


# --------------------------------------------------------------------------------------------
# Generation


def _scene_from_build(seed: int, spec: SceneSpec, name: str, build: _Build, masks, patches, rng) -> Scene:
    n_frames = spec.num_frames
    objects = build.objects
    centres = np.zeros((n_frames, len(objects), 2), np.float64)
    for k, o in enumerate(objects):
        path = _integrate(build.starts[o.id], build.steps[o.id], o.speed_px_s / spec.fps)
        if len(path) != n_frames:
            raise AssertionError(f"path of object {o.id} has {len(path)} frames, expected {n_frames}")
        centres[:, k] = path
    # Objects are listed by id in the scene (ids were assigned at random).
    order = sorted(range(len(objects)), key=lambda k: objects[k].id)
    objects = [objects[k] for k in order]
    centres = centres[:, order]
    masks = [masks[k] for k in order]
    patches = [patches[k] for k in order]

    # Events are read off the drawn boxes (whole pixels), like everything a viewer sees.
    halves = np.asarray([[m.shape[1] / 2, m.shape[0] / 2] for m in masks])
    box_centres = np.floor(centres - halves[None] + 0.5) + halves[None]
    by_id = {o.id: box_centres[:, k] for k, o in enumerate(objects)}
    sizes = {o.id: float(max(m.shape)) for o, m in zip(objects, masks, strict=True)}
    events: list[Event] = []
    for o in objects:
        others = {i: c for i, c in by_id.items() if i != o.id}
        events.extend(_extract_events(o.id, build.steps[o.id], by_id[o.id], others, sizes, spec.fps))

    pillars = [_pillar_strip(spec.height, x1 - x0) for x0, x1 in build.occluders]
    scene = Scene(
        seed=seed,
        spec=spec,
        name=name,
        difficulty=build.difficulty,
        objects=objects,
        occluders=list(build.occluders),
        centres=centres,
        events=events,
        queries=[],
        gt=None,
        target_id=build.target_id,
        occlusion=None,
        _background=_background(rng, spec.width, spec.height),
        _masks=masks,
        _patches=patches,
        _pillars=pillars,
    )
    scene.gt = scene._compute_gt()

    def visible(e: Event) -> bool:  # a camera can follow the object through the event
        return mostly_visible(scene.gt.visible[e.start_frame : e.end_frame + 1, scene.gt._column(e.object_id)])

    kind, direction, frame, other_id = build.core_event
    core = [
        e
        for e in events
        if e.object_id == build.target_id
        and e.key == (kind, direction, other_id)
        and (kind == "pass" or e.start_frame <= frame <= e.end_frame)
    ]
    if not core:
        raise _Retry("scripted event not found")
    if build.primary_visible and not visible(core[0]):
        raise _Retry("target hidden for most of its event")
    primary_text = _caption(core[0], objects, events, spec.fps, rng)
    if primary_text is None:
        raise _Retry("target's event is not unique")
    queries = [_query(core[0], primary_text, spec.fps)]
    extra = []
    for e in events:
        if e is core[0] or e.kind == "start" or not visible(e):
            continue
        text = _caption(e, objects, events, spec.fps, rng)
        if text is not None:
            extra.append(_query(e, text, spec.fps))
    # More queries, at most one per object, in random order.
    picked_targets = {build.target_id}
    for i in rng.permutation(len(extra)).tolist():
        if len(queries) >= spec.max_queries:
            break
        if extra[i].target_id not in picked_targets:
            queries.append(extra[i])
            picked_targets.add(extra[i].target_id)
    scene.queries = queries
    if build.difficulty == "occlusion":
        scene.occlusion = _check_occlusion(scene, queries[0])
    return scene


def _check_occlusion(scene: Scene, primary: Query) -> OcclusionGap:
    """The target's fully-hidden run inside the caption's span: it must last the gap, and outside
    the span the target may be hidden for at most that long in total (it can pass the pillars)."""
    hidden = scene.gt.visible[:, scene.gt._column(scene.target_id)] == 0
    inside = np.flatnonzero(hidden[primary.start_frame : primary.end_frame + 1]) + primary.start_frame
    gap_frames = round(scene.spec.occlusion_s * scene.fps)
    if len(inside) < gap_frames or inside[-1] - inside[0] + 1 != len(inside):
        raise _Retry(f"target hidden for {len(inside)} frames in its span, not one run of {gap_frames}")
    first, last = int(inside[0]), int(inside[-1])
    if not (primary.start_frame < first and last < primary.end_frame):
        raise _Retry("occlusion touches the caption's span ends")
    if hidden.sum() - len(inside) > gap_frames:
        raise _Retry("target hidden too long outside its span")
    return OcclusionGap(scene.target_id, first, last, scene.occluders[0])


def generate_scene(seed: int, spec: SceneSpec | None = None, name: str | None = None) -> Scene:
    """A deterministic scene: same seed and spec -> identical frames, ground truth and queries."""
    spec = (spec or SceneSpec()).validate()
    difficulty = spec.difficulty if spec.difficulty != "mixed" else MIXED_ORDER[seed % len(MIXED_ORDER)]
    if difficulty == "distractors" and spec.n_objects < 3:
        raise ValueError("difficulty 'distractors' needs at least 3 objects")
    for attempt in range(_MAX_ATTEMPTS):
        rng = np.random.default_rng([seed & 0xFFFFFFFF, seed >> 32, attempt])
        try:
            build, masks, patches = _build(rng, spec, difficulty)
            return _scene_from_build(seed, spec, name or f"synth_{seed}", build, masks, patches, rng)
        except _Retry:
            continue
    raise RuntimeError(
        f"could not generate a {difficulty!r} scene for seed {seed} with {spec}; try a longer or larger scene"
    )


# --------------------------------------------------------------------------------------------
# Datasets on disk


@dataclass
class DatasetIndex:
    """Paths of a generated dataset; written as index.json in its folder (DatasetIndex.load)."""

    root: Path
    seed: int
    spec: SceneSpec
    names: list[str]
    scene_seeds: list[int]
    difficulties: list[str]
    videos: list[Path]
    bags: list[Path]
    gt: list[Path]
    annotations: Path
    queries: Path
    frames: int
    storage: str = "sqlite3"
    compressed: bool = False

    INDEX_FILE = "index.json"

    def to_json(self) -> dict:
        """The keys `stvg-ros synth --json` prints."""
        return {
            "out": str(self.root),
            "videos": [str(p) for p in self.videos],
            "bags": [str(p) for p in self.bags],
            "annotations": str(self.annotations),
            "queries": str(self.queries),
            "frames": self.frames,
        }

    def save(self) -> Path:
        def rel(path: Path | str) -> str:
            return str(Path(path).relative_to(self.root))

        data = {
            "synth_version": SYNTH_VERSION,
            "seed": self.seed,
            "spec": asdict(self.spec),
            "storage": self.storage,
            "compressed": self.compressed,
            "frames": self.frames,
            "annotations": rel(self.annotations),
            "queries": rel(self.queries),
            "videos": [
                {"name": n, "seed": s, "difficulty": d, "video": rel(v), "bag": rel(b) if b else None, "gt": rel(g)}
                for n, s, d, v, b, g in zip(
                    self.names,
                    self.scene_seeds,
                    self.difficulties,
                    self.videos,
                    self.bags or [None] * len(self.names),
                    self.gt,
                    strict=True,
                )
            ],
        }
        path = self.root / self.INDEX_FILE
        path.write_text(json.dumps(data, indent=1))
        return path

    @classmethod
    def load(cls, root: str | Path) -> DatasetIndex:
        root = Path(root)
        path = root / cls.INDEX_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{root} is not a synthetic dataset (no {cls.INDEX_FILE}); run `stvg-ros synth`")
        data = json.loads(path.read_text())
        videos = data["videos"]
        return cls(
            root=root,
            seed=int(data["seed"]),
            spec=SceneSpec(**data["spec"]),
            names=[v["name"] for v in videos],
            scene_seeds=[int(v["seed"]) for v in videos],
            difficulties=[v["difficulty"] for v in videos],
            videos=[root / v["video"] for v in videos],
            bags=[root / v["bag"] for v in videos if v["bag"]],
            gt=[root / v["gt"] for v in videos],
            annotations=root / data["annotations"],
            queries=root / data["queries"],
            frames=int(data["frames"]),
            storage=data.get("storage", "sqlite3"),
            compressed=bool(data.get("compressed", False)),
        )

    def scene(self, index: int) -> Scene:
        """Regenerate scene `index` (identical to the files, frames rendered on demand)."""
        spec = replace(self.spec, difficulty=self.difficulties[index])
        return generate_scene(self.scene_seeds[index], spec, name=self.names[index])

    def load_annotations(self) -> dict:
        return json.loads(self.annotations.read_text())

    def load_queries(self) -> list[dict]:
        return json.loads(self.queries.read_text())

    def load_gt(self, index: int) -> dict:
        return json.loads(self.gt[index].read_text())


def scene_seed(dataset_seed: int, index: int) -> int:
    """Seed of video `index` of a dataset (independent streams per video)."""
    return int(np.random.SeedSequence([dataset_seed, index]).generate_state(1, np.uint32)[0])


def write_dataset(
    out_dir: str | Path,
    seed: int,
    n_videos: int,
    spec: SceneSpec | None = None,
    bags: bool = True,
    storage: str = "sqlite3",
    compressed: bool = False,
) -> DatasetIndex:
    """Write videos/, bags/, gt/, annotations.json, queries.json and index.json under out_dir.

    Each frame is rendered once and goes to the mp4 and the bag together. With difficulty 'mixed'
    video i uses preset MIXED_ORDER[i % 4].
    """
    from stvg_ros.core.bag_io import write_image_bag
    from stvg_ros.core.video_io import VideoWriter

    spec = (spec or SceneSpec()).validate()
    if n_videos < 1:
        raise ValueError("n_videos must be at least 1")
    root = Path(out_dir)
    for sub in ("videos", "gt") + (("bags",) if bags else ()):
        (root / sub).mkdir(parents=True, exist_ok=True)
    annotations, queries = {}, []
    index = DatasetIndex(
        root=root,
        seed=seed,
        spec=spec,
        names=[],
        scene_seeds=[],
        difficulties=[],
        videos=[],
        bags=[],
        gt=[],
        annotations=root / "annotations.json",
        queries=root / "queries.json",
        frames=0,
        storage=storage,
        compressed=compressed,
    )
    for i in range(n_videos):
        name = f"synth_{seed}_{i:03d}"
        video_spec = spec if spec.difficulty != "mixed" else replace(spec, difficulty=MIXED_ORDER[i % len(MIXED_ORDER)])
        scene = generate_scene(scene_seed(seed, i), video_spec, name=name)
        video_path, bag_path, gt_path = (
            root / "videos" / f"{name}.mp4",
            root / "bags" / name,
            root / "gt" / f"{name}.json",
        )
        with VideoWriter(video_path, scene.fps, scene.size) as writer:

            def stamped_frames(scene=scene, writer=writer):
                for f, rgb in enumerate(scene.frames()):
                    writer.write(rgb)
                    yield scene.stamp_ns(f), rgb

            if bags:
                write_image_bag(bag_path, stamped_frames(), storage=storage, compressed=compressed, overwrite=True)
            else:
                for _ in stamped_frames():
                    pass
        gt_path.write_text(json.dumps(scene.gt_json()))
        annotations[f"{name}.mp4"] = scene.query_annotation(scene.queries[0])
        for rank, q in enumerate(scene.queries):
            queries.append(
                {
                    "video": f"{name}.mp4",
                    **asdict(q),
                    "start_stamp_ns": scene.stamp_ns(q.start_frame),
                    "end_stamp_ns": scene.stamp_ns(q.end_frame),
                    "primary": rank == 0,
                }
            )
        index.names.append(name)
        index.scene_seeds.append(scene.seed)
        index.difficulties.append(scene.difficulty)
        index.videos.append(video_path)
        index.gt.append(gt_path)
        if bags:
            index.bags.append(bag_path)
        index.frames += scene.num_frames
    index.annotations.write_text(json.dumps(annotations, indent=1))
    index.queries.write_text(json.dumps(queries, indent=1))
    index.save()
    return index
