"""Optional SAM2 refinement: place each ID at its mask centre (METHOD.md §3) instead of the box centre.

Off by default: on a CPU, SAM2 costs far more than detection and tracking, and it is only needed on
the few frames sent to the model. When enabled, `MaskAnchors.anchors(rgb, tracks)` encodes the
frame once, prompts the SAM2 image predictor with all track boxes in one batched call and returns
{track_id: text origin} from `core.render.mask_anchor`, ready for `render_ids(..., anchors=...)`;
`grounding.sampling.sample_clip(anchors=...)` calls it on the sampled frames.

The `sam2` package (PyPI `sam2`, an sdist built without its CUDA extension; requirements/python.txt)
loads no weights by itself: a SAM2.1 tiny checkpoint file must be given. Enabling refinement without
the package or the file raises `Sam2Unavailable` with what to install or set.
"""

from __future__ import annotations

import os
import threading
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
        checkpoint = check_available(config)  # package importable, size valid, checkpoint present
        from sam2.build_sam import build_sam2
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        size = int(config.image_size)
        try:
            model = build_sam2(
                config.model_config,
                str(checkpoint),
                device="cpu",
                hydra_overrides_extra=[f"++model.image_size={size}"],
            )
        except Exception as exc:  # a truncated file, another model's weights, a bad model_config
            raise Sam2Unavailable(
                f"could not load SAM2 checkpoint {checkpoint} with {config.model_config} "
                f"({type(exc).__name__}: {exc}); is it a SAM2.1 tiny checkpoint ({{'model': state_dict}})?"
            ) from exc
        self.config = config
        self.predictor = SAM2ImagePredictor(model)
        # The predictor assumes 1024-pixel inputs for its feature sizes; match them to image_size.
        self.predictor._bb_feat_sizes = [(size // 4,) * 2, (size // 8,) * 2, (size // 16,) * 2]
        self._lock = threading.Lock()  # the predictor holds the current image's features

    def anchors(self, rgb: np.ndarray, tracks: Tracks) -> dict[int, tuple[int, int]]:
        """{track_id: (x, y)} in `rgb` pixels for the tracked objects whose mask is not empty.

        One image encoding per call; all track boxes are prompted in one batched decoder call.
        """
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"MaskAnchors expects an RGB uint8 (H, W, 3) frame, got {rgb.dtype} {rgb.shape}")
        tracked = tracks[tracks.track_id >= 0]
        if len(tracked) == 0:
            return {}
        height, width = rgb.shape[:2]
        boxes = np.clip(tracked.xyxy, 0, [width - 1, height - 1, width - 1, height - 1]).astype(np.float32)
        with self._lock:
            self.predictor.set_image(rgb)
            masks, _, _ = self.predictor.predict(box=boxes, multimask_output=False)
        # (N, 1, H, W) for several boxes, (1, H, W) for one: one mask per box either way.
        masks = np.asarray(masks).reshape(len(boxes), -1, height, width)[:, 0] > 0
        out: dict[int, tuple[int, int]] = {}
        for mask, track_id in zip(masks, tracked.track_id, strict=True):
            anchor = mask_anchor(mask)
            if anchor is not None:
                out[int(track_id)] = anchor
        return out

    __call__ = anchors


def check_available(config: Sam2Config) -> Path:
    """The checkpoint path when refinement can run; raises Sam2Unavailable (package or file missing).

    Cheap (no model is built): the grounding node calls it at configure to fail early and clearly.
    """
    try:
        import sam2  # noqa: F401
    except ImportError as exc:
        raise Sam2Unavailable(
            f"SAM2 refinement is enabled but the `sam2` package is not importable ({exc}); "
            f"{INSTALL_HINT}, or turn refinement off (sam2_refine: false)"
        ) from exc
    if int(config.image_size) < 64 or int(config.image_size) % 32:
        raise Sam2Unavailable(f"sam2_image_size must be a multiple of 32 and >= 64, got {config.image_size}")
    checkpoint = Path(os.path.expanduser(config.checkpoint)) if config.checkpoint else None
    if checkpoint is None or not checkpoint.is_file():
        raise Sam2Unavailable(
            f"SAM2 refinement is enabled but needs a checkpoint file (sam2_checkpoint): "
            f"{config.checkpoint or '(none set)'} is not a file; download sam2.1_hiera_tiny.pt on a machine "
            "with a network and set its path, or turn refinement off (sam2_refine: false)"
        )
    return checkpoint


def build_mask_anchors(config: Sam2Config | None = None) -> MaskAnchors | None:
    """None when refinement is off (the default); raises Sam2Unavailable when it cannot run."""
    config = config or Sam2Config()
    return MaskAnchors(config) if config.enabled else None
