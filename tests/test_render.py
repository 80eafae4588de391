"""The visual prompt (METHOD.md §3) and that every consumer draws with the same function."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from stvg_ros.core.render import IdStyle, id_character_masks, id_font_scale, id_thickness, mask_anchor, render_ids
from stvg_ros.core.types import Tracks

ROOT = Path(__file__).resolve().parents[1]


def red_pixels(image: np.ndarray) -> np.ndarray:
    return (image[..., 0] > 200) & (image[..., 1] < 60) & (image[..., 2] < 60)


def test_font_size_follows_the_trained_formula():
    assert id_font_scale(336, 200) == pytest.approx(20 / 30)
    assert id_font_scale(480, 640) == pytest.approx((20 / 30) * (640 / 336))
    assert id_thickness(id_font_scale(336, 336)) == 2
    assert id_thickness(id_font_scale(1080, 1920)) == int(2 * (20 / 30) * (1920 / 336))


def test_digits_are_pure_red_at_the_box_centre_and_nothing_else_is_drawn():
    frame = np.full((240, 320, 3), 90, np.uint8)
    tracks = Tracks(xyxy=[[100, 80, 180, 160]], track_id=[4])
    out = render_ids(frame, tracks)
    assert out is not frame and (frame == 90).all(), "input must not be modified"
    ys, xs = np.nonzero(red_pixels(out))
    assert len(ys) > 20
    # Text origin is the bottom-left corner at the centre (140, 120): digits sit right of and above it.
    assert xs.min() >= 139 and ys.max() <= 121
    assert xs.min() < 145 and ys.max() > 110
    changed = np.any(out != frame, axis=2)
    assert not changed[:60].any() and not changed[:, :130].any(), "no boxes or outlines"


def test_untracked_rows_and_small_objects_are_not_drawn():
    frame = np.zeros((240, 320, 3), np.uint8)
    assert not red_pixels(render_ids(frame, Tracks(xyxy=[[10, 10, 100, 100]], track_id=[-1]))).any()
    small = Tracks(xyxy=[[10, 10, 14, 14]], track_id=[2])
    assert red_pixels(render_ids(frame, small)).any()
    assert not red_pixels(render_ids(frame, small, IdStyle(min_box_side_px=8))).any()


def test_mask_anchor_uses_the_middle_row_mean_x():
    mask = np.zeros((50, 50), bool)
    mask[10:31, 20:25] = True  # ymin 10, ymax 30 -> row 20
    mask[20, 30:41] = True
    assert mask_anchor(mask) == (int(np.flatnonzero(mask[20]).mean()), 20)
    assert mask_anchor(np.zeros((5, 5), bool)) is None


def test_render_rejects_non_rgb_frames():
    with pytest.raises(ValueError, match="RGB uint8"):
        render_ids(np.zeros((10, 10), np.uint8), Tracks())


@pytest.mark.parametrize("track_id", [7, 42, 158])
def test_character_masks_are_the_renderers_ink_one_digit_per_layer(track_id):
    frame_size = (224, 168)
    x, y = 90, 80
    one = Tracks(xyxy=[[x - 1, y - 1, x + 1, y + 1]], track_id=[track_id])
    drawn = render_ids(np.zeros((168, 224, 3), np.uint8), one)[..., 0] > 0
    layers = id_character_masks(track_id, (x, y), frame_size)
    assert layers.shape == (len(str(track_id)), 168, 224)
    assert (layers.any(axis=0) == drawn).mean() > 0.995 and drawn.sum() > 20
    # each digit lies to the right of the one before it
    lefts = [np.flatnonzero(layer.any(axis=0)).min() for layer in layers]
    assert lefts == sorted(lefts) and len(set(lefts)) == len(lefts)


def _calls_render_ids(path: Path, names: tuple[str, ...] = ("render_ids",)) -> bool:
    tree = ast.parse(path.read_text())
    return any(isinstance(n, ast.Name | ast.Attribute) and getattr(n, "id", getattr(n, "attr", "")) in names
               for n in ast.walk(tree))


def test_robot_overlay_training_and_grounding_all_draw_with_render_ids():
    """One renderer: the overlay node, grounding's frame sampling and training prep call render_ids."""
    consumers = {
        "overlay node": ROOT / "stvg_ros/stvg_ros/nodes/overlay_node.py",
        "grounding sampling": ROOT / "stvg_ros/stvg_ros/grounding/sampling.py",
        "training prep": ROOT / "training/stvg_train/prep.py",
    }
    for name, path in consumers.items():
        assert path.exists(), f"{name}: {path} missing"
        source = path.read_text()
        assert "cv2.putText" not in source, f"{name} draws text itself instead of calling render_ids"
    # Training prep reuses grounding's sampling (which renders) or calls render_ids directly.
    # the overlay draws with core.render.annotate: optional debug boxes, then render_ids
    assert _calls_render_ids(consumers["overlay node"], ("render_ids", "annotate"))
    assert "from stvg_ros.core.render import" in consumers["overlay node"].read_text()
    render_source = (ROOT / "stvg_ros/stvg_ros/core/render.py").read_text()
    (annotate,) = [n for n in ast.parse(render_source).body if isinstance(n, ast.FunctionDef) and n.name == "annotate"]
    assert "render_ids(" in ast.get_source_segment(render_source, annotate)
    assert _calls_render_ids(consumers["grounding sampling"])
    prep = consumers["training prep"].read_text()
    assert _calls_render_ids(consumers["training prep"]) or "sample_clip" in prep
