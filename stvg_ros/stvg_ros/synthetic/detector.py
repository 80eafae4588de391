"""A tiny YOLO that really detects the shapes of core/synth scenes, trained here in a few minutes.

Tests, the demo and benchmarks need a detector that works offline on a fresh machine. This module
renders frames of synthetic scenes, writes them with their ground-truth boxes as a YOLO dataset,
trains a scaled-down YOLO11 (one class, "shape") from scratch on CPU, and exports ONNX fp32 and
static int8. `stvg-ros models pull yolo-synth-tiny` runs `build` through the model registry.
Ground truth is used only as training labels; at run time the model detects on its own.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml

from stvg_ros.synthetic.scenes import SYNTH_VERSION, SceneSpec, generate_scene

log = logging.getLogger(__name__)

#: Bump when the recipe changes, so cached builds (tests, models cache) are rebuilt; the scenes
#: it is trained on change with SYNTH_VERSION, which is part of it.
BUILD_VERSION = f"2.synth{SYNTH_VERSION}"
NAME = "yolo-synth-tiny"
CLASS_NAMES = ("shape",)
#: Objects at least this visible (share of their pixels) and this wide are labelled, with the box
#: of their visible part: the detector then finds objects until they are almost hidden, which keeps
#: the tracker's gaps behind occluders short.
MIN_VISIBLE = 0.15
MIN_VISIBLE_PX = 3.0


@dataclass(frozen=True)
class Recipe:
    """How the tiny detector is trained (defaults: about 2-3 min on 2 CPU cores)."""

    train_scenes: int = 12
    val_scenes: int = 2
    seconds: float = 8.0
    sample_fps: float = 2.5
    imgsz: int = 256
    epochs: int = 10
    batch: int = 8
    lr0: float = 0.005
    #: (depth, width, max_channels) multipliers of the YOLO11 architecture
    scale: tuple[float, float, int] = (0.33, 0.125, 256)
    seed: int = 0


def model_yaml(recipe: Recipe = Recipe()) -> dict:
    """The packaged YOLO11 detection architecture with one class and a tiny scale."""
    import ultralytics

    base = Path(ultralytics.__file__).parent / "cfg" / "models" / "11" / "yolo11.yaml"
    cfg = yaml.safe_load(base.read_text())
    cfg["nc"] = len(CLASS_NAMES)
    cfg["scales"] = {"t": list(recipe.scale)}
    cfg["scale"] = "t"
    return cfg


def _scene_spec(index: int, recipe: Recipe) -> SceneSpec:
    # Both resolutions the robot and tests use, and 3..7 objects, so the model sees crowds and sizes.
    big = index % 2 == 1
    return SceneSpec(
        seconds=recipe.seconds,
        fps=5.0,
        width=640 if big else 320,
        height=480 if big else 240,
        n_objects=3 + index % 5,
    )


def visible_box(box: np.ndarray, occluders: list[tuple[int, int]]) -> np.ndarray | None:
    """The part of an object's box left of/right of the full-height pillars that cover its edges
    (None when a pillar covers it all). A pillar inside the box leaves the box as it is."""
    x0, y0, x1, y1 = (float(v) for v in box)
    for px0, px1 in occluders:
        if px0 <= x0 and x1 <= px1:
            return None
        if px0 <= x0 < px1:
            x0 = float(px1)
        if px0 < x1 <= px1:
            x1 = float(px0)
    return np.array([x0, y0, x1, y1], np.float32) if x1 > x0 else None


def write_yolo_dataset(root: Path, recipe: Recipe = Recipe()) -> Path:
    """Frames + YOLO label files under root/{images,labels}/{train,val}; returns the data.yaml path."""
    splits = {"train": range(recipe.train_scenes), "val": range(1000, 1000 + recipe.val_scenes)}
    for split, indices in splits.items():
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for index in indices:
            scene = generate_scene(recipe.seed * 10_000 + index, _scene_spec(index, recipe))
            width, height = scene.size
            step = max(1, round(scene.fps / recipe.sample_fps))
            for frame in range(0, scene.num_frames, step):
                name = f"s{index:04d}_f{frame:04d}"
                cv2.imwrite(str(root / "images" / split / f"{name}.jpg"), scene.render_frame(frame)[:, :, ::-1])
                rows = []
                for k in range(len(scene.objects)):
                    box = visible_box(scene.gt.boxes[frame, k], scene.occluders)
                    if scene.gt.visible[frame, k] < MIN_VISIBLE or box is None or box[2] - box[0] < MIN_VISIBLE_PX:
                        continue
                    x0, y0, x1, y1 = box
                    cx, cy, w, h = (x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height
                    rows.append(f"0 {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
                (root / "labels" / split / f"{name}.txt").write_text("\n".join(rows))
    data = root / "data.yaml"
    data.write_text(
        yaml.safe_dump(
            {"path": str(root), "train": "images/train", "val": "images/val", "names": dict(enumerate(CLASS_NAMES))}
        )
    )
    return data


def calibration_frames(n: int = 16, recipe: Recipe = Recipe()) -> list[np.ndarray]:
    """Training-distribution frames for int8 calibration."""
    frames = []
    for i in range(n):
        scene = generate_scene(recipe.seed * 10_000 + 2000 + i, _scene_spec(i, recipe))
        frames.append(scene.render_frame((7 * i) % scene.num_frames))
    return frames


def build_synthetic_detector(out_dir: str | os.PathLike, recipe: Recipe = Recipe()) -> dict[str, Path]:
    """Train and export into out_dir: <NAME>.pt, <NAME>.onnx, <NAME>-int8.onnx, <NAME>.yaml, build.json.

    Returns {"pt", "onnx", "onnx-int8", "yaml", "info"} paths. Deterministic for a recipe on one
    machine (same seeds), but not bit-identical across machines, so manifests cannot pin sha256.
    """
    from ultralytics import YOLO
    from ultralytics.utils import LOGGER

    from stvg_ros.perception.export import export_detector_onnx

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    arch = out_dir / f"{NAME}.yaml"
    arch.write_text(yaml.safe_dump(model_yaml(recipe), sort_keys=False))
    quiet = LOGGER.level
    LOGGER.setLevel(logging.WARNING)
    try:
        with tempfile.TemporaryDirectory(prefix="yolo-synth-") as tmp:
            data = write_yolo_dataset(Path(tmp) / "data", recipe)
            model = YOLO(str(arch), task="detect")
            model.train(
                data=str(data),
                epochs=recipe.epochs,
                imgsz=recipe.imgsz,
                batch=recipe.batch,
                workers=0,
                device="cpu",
                optimizer="AdamW",
                lr0=recipe.lr0,
                warmup_epochs=0.5,
                mosaic=0.0,
                close_mosaic=0,
                cache=False,
                val=False,
                plots=False,
                amp=False,
                seed=recipe.seed,
                deterministic=True,
                project=str(Path(tmp) / "runs"),
                name="train",
                exist_ok=True,
                verbose=False,
            )
            trained = Path(tmp) / "runs" / "train" / "weights" / "last.pt"
            pt = out_dir / f"{NAME}.pt"
            shutil.copy(trained, pt)
            train_s = time.monotonic() - started
            metrics = YOLO(str(pt), task="detect").val(
                data=str(data), imgsz=recipe.imgsz, batch=8, workers=0, device="cpu", plots=False, verbose=False
            )
            val = {
                "map50": float(metrics.box.map50),
                "map50_95": float(metrics.box.map),
                "recall": float(metrics.box.mr),
            }
    finally:
        LOGGER.setLevel(quiet)
    paths = export_detector_onnx(
        pt, out_dir, calibration_frames(recipe=recipe), int8=True, imgsz=recipe.imgsz, stem=NAME
    )
    info = out_dir / "build.json"
    info.write_text(
        json.dumps(
            {
                "build_version": BUILD_VERSION,
                "recipe": asdict(recipe),
                "train_seconds": round(train_s, 1),
                "total_seconds": round(time.monotonic() - started, 1),
                "val": val,
                "class_names": list(CLASS_NAMES),
            },
            indent=1,
        )
    )
    log.info("built %s in %.0f s (val mAP50 %.3f)", NAME, time.monotonic() - started, val["map50"])
    return {"pt": pt, "onnx": paths["onnx"], "onnx-int8": paths["onnx-int8"], "yaml": arch, "info": info}


def is_built(out_dir: str | os.PathLike) -> bool:
    """True when out_dir holds a complete build of the current BUILD_VERSION."""
    out_dir = Path(out_dir)
    info = out_dir / "build.json"
    files = [out_dir / f"{NAME}{suffix}" for suffix in (".pt", ".onnx", "-int8.onnx")]
    if not info.is_file() or not all(f.is_file() for f in files):
        return False
    try:
        return json.loads(info.read_text()).get("build_version") == BUILD_VERSION
    except (OSError, ValueError):
        return False


def ensure_built(out_dir: str | os.PathLike, recipe: Recipe = Recipe()) -> dict[str, Path]:
    """The build in out_dir, training it first when missing or outdated."""
    out_dir = Path(out_dir)
    if not is_built(out_dir):
        build_synthetic_detector(out_dir, recipe)
    return {
        "pt": out_dir / f"{NAME}.pt",
        "onnx": out_dir / f"{NAME}.onnx",
        "onnx-int8": out_dir / f"{NAME}-int8.onnx",
        "yaml": out_dir / f"{NAME}.yaml",
        "info": out_dir / "build.json",
    }


def build(out_dir: Path, manifest=None) -> dict[str, Path]:
    """Model-registry build hook (`source: {build: "stvg_ros.synthetic.detector:build"}`)."""
    return ensure_built(out_dir)
