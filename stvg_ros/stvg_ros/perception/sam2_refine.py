"""Optional SAM2 refinement: place each ID at its mask centre (METHOD.md §3) instead of the box centre.

Off by default: on a CPU, SAM2 costs far more than detection and tracking, and it is only needed on
the few frames sent to the model. When enabled, `MaskAnchors.anchors(rgb, tracks)` prompts the
SAM2 image predictor with each track's box and returns {track_id: text origin} from
`core.render.mask_anchor`, ready for `render_ids(..., anchors=...)`.

The `sam2` package (PyPI `sam2`, an sdist) is not part of the default install. Enabling refinement
without it, or without a checkpoint file, raises `Sam2Unavailable` with what to install or set.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stvg_ros.core.render import mask_anchor
from stvg_ros.core.types import Tracks

INSTALL_HINT = "pip install sam2==1.1.0 (builds without CUDA in a few seconds)"


class Sam2Unavailable(RuntimeError):
    """SAM2 refinement was asked for but cannot run here (package or checkpoint missing)."""


@dataclass(frozen=True)
class Sam2Config:
    """Settings of the refinement (all off / empty by default)."""

    enabled: bool = False
    #: packaged hydra config of the model (tiny by default)
    model_config: str = "configs/sam2.1/sam2.1_hiera_t.yaml"
    #: SAM2 checkpoint (.pt) path; required when enabled (random weights give meaningless masks)
    checkpoint: str = ""
    #: input size of the image encoder (1024 is SAM2's; 512 is ~7x faster on a CPU)
    image_size: int = 512


class MaskAnchors:
    """SAM2 image predictor prompted with track boxes -> mask-centre text origins."""

    def __init__(self, config: Sam2Config) -> None:
        try:
            from sam2.build_sam import build_sam2
            from sam2.sam2_image_predictor import SAM2ImagePredictor
        except ImportError as exc:
            raise Sam2Unavailable(
                f"SAM2 refinement is enabled but the `sam2` package is not importable ({exc}); "
                f"{INSTALL_HINT}, or turn refinement off (sam2_refine: false)"
            ) from exc
        checkpoint = Path(os.path.expanduser(config.checkpoint)) if config.checkpoint else None
        if checkpoint is None or not checkpoint.is_file():
            raise Sam2Unavailable(
                f"SAM2 refinement needs a checkpoint file; {config.checkpoint or '(none set)'} does not exist "
                "(download sam2.1_hiera_tiny.pt on a machine with a network and set its path)"
            )
        size = int(config.image_size)
        model = build_sam2(
            config.model_config, str(checkpoint), device="cpu", hydra_overrides_extra=[f"++model.image_size={size}"]
        )
        self.predictor = SAM2ImagePredictor(model)
        # The predictor assumes 1024-pixel inputs for its feature sizes; match them to image_size.
        self.predictor._bb_feat_sizes = [(size // 4,) * 2, (size // 8,) * 2, (size // 16,) * 2]

    def anchors(self, rgb: np.ndarray, tracks: Tracks) -> dict[int, tuple[int, int]]:
        """{track_id: (x, y)} for the tracked objects whose mask is not empty."""
        tracked = tracks[tracks.track_id >= 0]
        if len(tracked) == 0:
            return {}
        self.predictor.set_image(rgb)
        out: dict[int, tuple[int, int]] = {}
        for box, track_id in zip(tracked.xyxy, tracked.track_id, strict=True):
            masks, _, _ = self.predictor.predict(box=box[None], multimask_output=False)
            anchor = mask_anchor(np.asarray(masks[0]) > 0)
            if anchor is not None:
                out[int(track_id)] = anchor
        return out


def build_mask_anchors(config: Sam2Config | None = None) -> MaskAnchors | None:
    """None when refinement is off (the default); raises Sam2Unavailable when it cannot run."""
    config = config or Sam2Config()
    return MaskAnchors(config) if config.enabled else None
