"""synthetic/scenes.py: determinism, ground truth against the pixels, captions against the motion."""

from __future__ import annotations

import math
import re
from dataclasses import replace

import numpy as np
import pytest

from stvg_ros.core.types import Tracks
from stvg_ros.synthetic.scenes import (
    COLOURS,
    DIRECTIONS,
    MIXED_ORDER,
    SHAPES,
    SIZES,
    SceneSpec,
    frame_time,
    generate_scene,
    mostly_visible,
    stamp_ns,
)

PRESETS = ("easy", "occlusion", "distractors", "crossing")
SHORT = SceneSpec(seconds=8.0)


@pytest.fixture(scope="module")
def scenes():
    """Three 20 s scenes of every preset (default spec)."""
    return [generate_scene(seed, SceneSpec(difficulty=preset)) for preset in PRESETS for seed in (11, 12, 13)]


def test_same_seed_same_scene_different_seed_different():
    a, b, c = generate_scene(5, SHORT), generate_scene(5, SHORT), generate_scene(6, SHORT)
    assert a.queries == b.queries and a.events == b.events and a.objects == b.objects
    np.testing.assert_array_equal(a.gt.boxes, b.gt.boxes)
    np.testing.assert_array_equal(a.gt.visible, b.gt.visible)
    for frame in range(0, a.num_frames, 7):
        np.testing.assert_array_equal(a.render_frame(frame), b.render_frame(frame))
    assert not np.array_equal(a.render_frame(0), c.render_frame(0))
    assert [q.text for q in a.queries] != [q.text for q in c.queries] or not np.array_equal(a.gt.boxes, c.gt.boxes)


def test_frames_are_lazy_and_match_render_frame():
    scene = generate_scene(3, SHORT)
    frames = scene.frames()
    assert not isinstance(frames, list)
    first = next(frames)
    assert first.shape == (240, 320, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, scene.render_frame(0))
    assert sum(1 for _ in frames) == scene.num_frames - 1 == 79
    with pytest.raises(IndexError):
        scene.render_frame(80)


def test_spec_defaults_and_validation():
    spec = SceneSpec()
    assert (spec.seconds, spec.fps, spec.width, spec.height, spec.num_frames) == (20.0, 10.0, 320, 240, 200)
    for bad in (
        {"difficulty": "hard"},
        {"fps": 0.5},
        {"seconds": 2.0},
        {"width": 100},
        {"n_objects": 1},
        {"n_objects": 9},
        {"occlusion_s": 0.0},
        {"occlusion_s": 18.0},
        {"difficulty": "distractors", "n_objects": 2},
    ):
        with pytest.raises(ValueError):
            generate_scene(0, replace(spec, **bad))


def test_mixed_picks_a_preset_by_seed():
    assert [generate_scene(s, replace(SHORT, difficulty="mixed")).difficulty for s in range(4)] == list(MIXED_ORDER)


def _object_pixels(scene, frame):
    """Pixels that differ from the empty background, outside the pillars."""
    changed = np.any(scene.render_frame(frame) != scene.background(), axis=2)
    for x0, x1 in scene.occluders:
        changed[:, x0:x1] = False
    return changed


def test_boxes_and_visibility_match_the_pixels(scenes):
    checked = 0
    for scene in scenes[::2]:
        W, H = scene.size
        boxes, visible = scene.gt.boxes, scene.gt.visible
        assert boxes.shape == (scene.num_frames, len(scene.objects), 4)
        assert np.all((boxes[..., 0] >= 0) & (boxes[..., 2] <= W) & (boxes[..., 1] >= 0) & (boxes[..., 3] <= H))
        assert np.all(boxes[..., 2] > boxes[..., 0]) and np.all(boxes[..., 3] > boxes[..., 1])
        assert np.all((visible >= 0) & (visible <= 1))
        for frame in range(0, scene.num_frames, 25):
            changed = _object_pixels(scene, frame)
            covered = np.zeros_like(changed)
            for k in range(len(scene.objects)):
                x0, y0, x1, y1 = boxes[frame, k].astype(int)
                covered[y0:y1, x0:x1] = True
                others = [j for j in range(len(scene.objects)) if j != k]
                m = 3  # no other box within m pixels
                alone = all(
                    boxes[frame, j, 0] >= x1 + m or boxes[frame, j, 2] <= x0 - m
                    or boxes[frame, j, 1] >= y1 + m or boxes[frame, j, 3] <= y0 - m
                    for j in others
                )  # fmt: skip
                if alone and visible[frame, k] == 1.0:
                    # A fully visible object on its own: its changed pixels span exactly its box.
                    ys, xs = np.nonzero(changed[max(0, y0 - 3) : y1 + 3, max(0, x0 - 3) : x1 + 3])
                    oy, ox = max(0, y0 - 3), max(0, x0 - 3)
                    assert (xs.min() + ox, ys.min() + oy, xs.max() + ox + 1, ys.max() + oy + 1) == (x0, y0, x1, y1)
                    checked += 1
                if visible[frame, k] == 0.0:
                    continue
                assert changed[y0:y1, x0:x1].any(), "a visible object must show pixels in its box"
            assert not (changed & ~covered).any(), "object pixels outside every box"
    assert checked > 20


def test_gt_frame_views_and_tracks():
    scene = generate_scene(4, SHORT)
    frame = scene.gt[10]
    assert [o.id for o in frame] == list(range(1, len(scene.objects) + 1))
    assert frame[0].xyxy == tuple(float(v) for v in scene.gt.box(10, 1))
    tracks = scene.gt.tracks(10)
    assert isinstance(tracks, Tracks) and tracks.track_id.tolist() == [o.id for o in scene.objects]
    assert tracks.class_id.tolist() == [SHAPES.index(o.shape) for o in scene.objects]
    np.testing.assert_array_equal(tracks.xyxy, scene.gt.boxes[10])
    with pytest.raises(KeyError):
        scene.gt.box(0, 99)


def test_object_attributes(scenes):
    for scene in scenes:
        ids = sorted(o.id for o in scene.objects)
        assert ids == list(range(1, scene.spec.n_objects + 1))
        assert sorted(o.z for o in scene.objects) == list(range(len(ids)))
        for o in scene.objects:
            assert o.colour in COLOURS and o.shape in SHAPES and o.size in SIZES
        if scene.difficulty != "distractors":
            looks = [(o.colour, o.shape) for o in scene.objects]
            assert len(set(looks)) == len(looks)


def test_distractors_have_lookalikes(scenes):
    for scene in scenes:
        if scene.difficulty != "distractors":
            continue
        target = next(o for o in scene.objects if o.id == scene.target_id)
        same_look = [o for o in scene.objects if (o.colour, o.shape) == (target.colour, target.shape)]
        same_colour = [o for o in scene.objects if o.colour == target.colour and o.shape != target.shape]
        same_shape = [o for o in scene.objects if o.shape == target.shape and o.colour != target.colour]
        assert len(same_look) == 2 and same_colour and same_shape


def test_occlusion_fully_hides_the_target_for_the_gap(occlusion_scenes):
    assert len(occlusion_scenes) >= 10
    for scene in occlusion_scenes:
        gap = scene.occlusion
        assert gap is not None and gap.target_id == scene.target_id == scene.queries[0].target_id
        assert gap.end_frame - gap.start_frame + 1 >= round(1.5 * scene.fps)
        column = scene.gt._column(gap.target_id)
        x0, x1 = gap.occluder
        for frame in range(gap.start_frame, gap.end_frame + 1):
            bx0, _, bx1, _ = scene.gt.boxes[frame, column]
            assert x0 <= bx0 and bx1 <= x1, "the pillar spans the whole height and covers the box columns"
            assert scene.gt.visible[frame, column] == 0.0
        # Visible right before and after the gap, and the gap lies inside the caption's span.
        assert scene.gt.visible[gap.start_frame - 1, column] > 0 and scene.gt.visible[gap.end_frame + 1, column] > 0
        query = scene.queries[0]
        assert query.start_frame < gap.start_frame and gap.end_frame < query.end_frame
        # The pixels agree: at mid-gap the target's colour is nowhere in its box rows beside the pillar.
        mid = (gap.start_frame + gap.end_frame) // 2
        image = scene.render_frame(mid)
        assert np.array_equal(image[:, x0:x1], scene.render_frame(0)[:, x0:x1])


def test_queries_are_about_targets_a_camera_can_follow(scenes, occlusion_scenes):
    """Every query's target is at least half visible on at least half of its span, the occlusion
    target too (fully hidden for the gap, visible around it); only clips too short for visible
    leads around the gap may have an occlusion query about a mostly hidden target."""
    assert mostly_visible([1.0, 0.5, 0.0, 0.0]) and not mostly_visible([1.0, 0.49, 0.0, 0.0])
    assert not mostly_visible([])
    for scene in scenes + occlusion_scenes:
        for query in scene.queries:
            shares = scene.gt.visible[query.start_frame : query.end_frame + 1, scene.gt._column(query.target_id)]
            assert mostly_visible(shares), (scene.name, query)
    short = generate_scene(2, SceneSpec(seconds=4.0, fps=5.0, difficulty="occlusion"))
    query = short.queries[0]
    assert short.occlusion.target_id == query.target_id
    assert not mostly_visible(short.gt.visible[query.start_frame : query.end_frame + 1, short.gt._column(query.target_id)])


def test_occlusion_gap_is_configurable():
    scene = generate_scene(1, SceneSpec(difficulty="occlusion", occlusion_s=3.0))
    assert scene.occlusion.end_frame - scene.occlusion.start_frame + 1 >= 30


_QUERY = re.compile(r"^the (?:(small|medium|large) )?(\w+) (\w+) (.+)$")
_PHRASES = [
    (re.compile(r"^(?:moving|that moves) (\w+)$"), "move"),
    (re.compile(r"^(?:that stops moving|that stops|that comes to a stop)$"), "stop"),
    (re.compile(r"^(?:that starts moving|that starts to move)$"), "start"),
    (re.compile(r"^(?:that turns|turning) (left|right)$"), "turn"),
    (re.compile(r"^(?:that turns around|that reverses direction)$"), "reverse"),
    (re.compile(r"^(?:moving (\w+) after it passes|that keeps moving (\w+) after passing) the (.+)$"), "pass"),
]


def _parse(text):
    size, colour, shape, rest = _QUERY.match(text).groups()
    for pattern, kind in _PHRASES:
        if m := pattern.match(rest):
            groups = [g for g in m.groups() if g]
            return size, colour, shape, kind, groups
    raise AssertionError(f"unknown phrase in {text!r}")


def _fits(obj, size, colour, shape):
    return obj.colour == colour and obj.shape == shape and (size is None or obj.size == size)


def _direction(centres, f0, f1):
    delta = centres[f1] - centres[f0]
    if np.allclose(delta, 0):
        return None
    return next(name for name, d in DIRECTIONS.items() if np.dot(delta, d) > 0 and abs(np.cross(delta, d)) < 1e-6)


def _centres(scene, object_id):
    boxes = scene.gt.boxes[:, scene.gt._column(object_id)]
    return np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], axis=1)


def _holds(scene, query, kind, groups):
    """Whether the described event is what the target's ground-truth boxes do over the span."""
    c = _centres(scene, query.target_id)
    f0, f1 = query.start_frame, query.end_frame
    half_second = max(2, round(0.5 * scene.fps))
    if kind == "move":
        steps = {_direction(c, f, f + 1) for f in range(f0, f1)}
        return steps - {None} == {groups[0]} and _direction(c, f0, f1) == groups[0]
    if kind == "stop":
        return np.allclose(c[f0 : f1 + 1], c[f0]) and _direction(c, f0 - half_second, f0) is not None
    if kind in ("turn", "reverse"):
        turn = (f0 + f1) // 2  # turn spans are centred on the turn
        before, after = _direction(c, f0, turn), _direction(c, turn, f1)
        (ax, ay), (bx, by) = DIRECTIONS[before], DIRECTIONS[after]
        if kind == "reverse":
            return (ax, ay) == (-bx, -by)
        return (ax * by - ay * bx < 0) == (groups[0] == "left") and ax * bx + ay * by == 0
    if kind == "start":
        return np.allclose(c[f0 - half_second : f0 + 1], c[f0]) and _direction(c, f0, f1) is not None
    direction, other_text = groups
    size, colour, shape = _QUERY.match(f"the {other_text} x").groups()[:3]
    others = [o for o in scene.objects if _fits(o, size, colour, shape)]
    assert len(others) == 1, f"the passed object of {query.text!r} must be unique"
    o = _centres(scene, others[0].id)
    axis = 0 if direction in ("left", "right") else 1
    sign = DIRECTIONS[direction][axis]
    behind_then_ahead = (c[f0 - 1, axis] - o[f0 - 1, axis]) * sign < 0 <= (c[f0, axis] - o[f0, axis]) * sign
    return behind_then_ahead and _direction(c, f0, f1) == direction


def test_captions_hold_and_name_exactly_one_object(scenes):
    kinds = set()
    for scene in scenes:
        assert scene.queries and len(scene.queries) <= scene.spec.max_queries
        assert scene.queries[0].target_id == scene.target_id
        for query in scene.queries:
            size, colour, shape, kind, groups = _parse(query.text)
            kinds.add(kind)
            target = next(o for o in scene.objects if o.id == query.target_id)
            assert _fits(target, size, colour, shape), query.text
            assert _holds(scene, query, kind, groups), f"{scene.name}: {query.text!r} does not hold over its span"
            assert query.end_frame - query.start_frame >= scene.fps * 1.0
            # No other object that fits the description ever does what the caption says.
            key = next(e.key for e in scene.events if e.object_id == target.id and e.start_frame == query.start_frame
                       and e.end_frame == query.end_frame and e.kind == kind)  # fmt: skip
            for other in scene.objects:
                if other.id != target.id and _fits(other, size, colour, shape):
                    assert key not in [e.key for e in scene.events if e.object_id == other.id], query.text
            assert [e.key for e in scene.events if e.object_id == target.id].count(key) == 1
    assert {"move", "pass"} <= kinds and kinds & {"stop", "turn"}


def test_distractor_captions_need_the_event_or_the_size(scenes):
    """In distractor scenes the colour and shape alone fit two objects."""
    for scene in scenes:
        if scene.difficulty == "distractors":
            _, colour, shape, _, _ = _parse(scene.queries[0].text)
            assert len([o for o in scene.objects if _fits(o, None, colour, shape)]) == 2


def test_time_conventions():
    for fps in (10.0, 7.5, 25.0, 29.97):
        for frame in range(0, 400):
            t = frame_time(frame, fps)
            assert math.floor(t * fps) == frame and abs(t - frame / fps) < 1e-9
    assert stamp_ns(0, 10.0) == 1_700_000_000 * 10**9
    assert stamp_ns(13, 10.0) == 1_700_000_001_300_000_000


@pytest.mark.parametrize(
    "spec",
    [
        SceneSpec(seconds=6.0, fps=7.5, width=640, height=480, n_objects=6, difficulty="crossing"),
        SceneSpec(seconds=5.0, fps=25.0, width=160, height=120, n_objects=3, difficulty="distractors"),
        SceneSpec(seconds=8.0, fps=15.0, n_objects=8, difficulty="occlusion", occlusion_s=1.0),
        SceneSpec(seconds=4.0, fps=10.0, n_objects=2, difficulty="easy"),
    ],
    ids=["640x480-7.5fps", "160x120-25fps", "8-objects", "4s-2-objects"],
)
def test_other_specs(spec):
    scene = generate_scene(2, spec)
    assert scene.num_frames == spec.num_frames and scene.render_frame(0).shape == (spec.height, spec.width, 3)
    for query in scene.queries:
        assert math.floor(query.start_s * spec.fps) == query.start_frame
        assert math.floor(query.end_s * spec.fps) == query.end_frame
        assert 0 <= query.start_frame < query.end_frame < scene.num_frames
