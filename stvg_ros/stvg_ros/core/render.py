"""The visual prompt: red ID digits at each object's centre (METHOD.md §3).

This is the only place that draws IDs for the model. The robot (grounding), the overlay node,
training data prep and evaluation all call `render_ids`; tests assert that they do.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from stvg_ros.core.types import Tracks

#: Pure red in RGB. Frames inside stvg_ros are RGB uint8 (H, W, 3).
ID_COLOR_RGB = (255, 0, 0)


@dataclass(frozen=True)
class IdStyle:
    """How IDs are drawn. Defaults are the trained STVG-R1 drawing; change them only to debug."""

    color_rgb: tuple[int, int, int] = ID_COLOR_RGB
    #: Objects whose shorter box side is below this many pixels get no ID (METHOD §12: digits
    #: would cover small objects). 0 draws every object, which is the trained behaviour.
    min_box_side_px: float = 0.0


def id_font_scale(height: int, width: int) -> float:
    """Font scale of the trained drawing: about 20 px tall at a 336-px long side."""
    return (20.0 / 30.0) * (max(height, width) / 336.0)


def id_thickness(font_scale: float) -> int:
    return max(2, int(2 * font_scale))


#: The font of the drawn IDs (the trained drawing).
ID_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _put_id_text(canvas: np.ndarray, text: str, origin: tuple[int, int], scale: float, thickness: int,
                 color: tuple[int, int, int] | int) -> None:
    """The one drawing call of the visual prompt (font, anti-aliasing); `origin` is the text's bottom-left."""
    cv2.putText(canvas, text, origin, ID_FONT, scale, color, thickness, cv2.LINE_AA)


def id_character_masks(track_id: int, origin: tuple[int, int], frame_size: tuple[int, int]) -> np.ndarray:
    """(digits, height, width) bool: where `render_ids` inks each digit of `track_id` drawn at `origin` on a
    frame of `frame_size` (width, height), one layer per character (same font, scale, thickness, advance).
    Training uses it to say which character lies under each vision patch."""
    width, height = frame_size
    scale = id_font_scale(height, width)
    thickness = id_thickness(scale)
    text = str(int(track_id))
    layers = np.zeros((len(text), height, width), np.uint8)
    for k, character in enumerate(text):
        advance = cv2.getTextSize(text[:k], ID_FONT, scale, thickness)[0][0] if k else 0
        _put_id_text(layers[k], character, (origin[0] + advance, origin[1]), scale, thickness, 255)
    return layers > 0


def mask_anchor(mask: np.ndarray) -> tuple[int, int] | None:
    """Text origin for a binary mask: row cy = (ymin+ymax)//2, x = mean of mask pixels on that row."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return None
    cy = (int(ys.min()) + int(ys.max())) // 2
    row = np.flatnonzero(mask[cy])
    cx = int(row.mean()) if len(row) else (int(xs.min()) + int(xs.max())) // 2
    return cx, cy


def render_ids(
    frame: np.ndarray,
    tracks: Tracks,
    style: IdStyle = IdStyle(),
    anchors: dict[int, tuple[int, int]] | None = None,
) -> np.ndarray:
    """Return a copy of `frame` (RGB uint8) with each track's ID drawn at its centre.

    `anchors` maps track IDs to text origins (e.g. SAM2 mask centres from `mask_anchor`);
    objects without an anchor use their box centre. Untracked rows (ID < 0) are not drawn.
    """
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"render_ids expects an RGB uint8 (H, W, 3) frame, got {frame.dtype} {frame.shape}")
    out = frame.copy()
    h, w = out.shape[:2]
    scale = id_font_scale(h, w)
    thickness = id_thickness(scale)
    centers = tracks.centers
    sides = np.minimum(tracks.xyxy[:, 2] - tracks.xyxy[:, 0], tracks.xyxy[:, 3] - tracks.xyxy[:, 1])
    for i in range(len(tracks)):
        tid = int(tracks.track_id[i])
        if tid < 0 or sides[i] < style.min_box_side_px:
            continue
        x, y = anchors[tid] if anchors and tid in anchors else (int(centers[i, 0]), int(centers[i, 1]))
        _put_id_text(out, str(tid), (x, y), scale, thickness, style.color_rgb)
    return out


def annotate(rgb: np.ndarray, tracks: Tracks, draw_boxes: bool = False, style: IdStyle = IdStyle()) -> np.ndarray:
    """The overlay image: optional thin boxes, then the IDs exactly as the model sees them."""
    if draw_boxes and len(tracks):
        rgb = rgb.copy()
        thickness = max(1, round(max(rgb.shape[:2]) / 640))
        for x1, y1, x2, y2 in tracks.xyxy.astype(int):
            cv2.rectangle(rgb, (x1, y1), (x2, y2), (0, 255, 0), thickness)
    return render_ids(rgb, tracks, style)
