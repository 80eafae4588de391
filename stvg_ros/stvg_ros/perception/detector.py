"""Object detectors: ONNX Runtime (fp32 or static int8, our export) and ultralytics YOLO (torch).

Both take an RGB uint8 frame and return `Tracks` with `track_id == -1` (detections only), boxes
in pixels of the input frame, after the confidence threshold, the class filter and NMS.
"""

from __future__ import annotations

import ast
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from stvg_ros.core.types import Tracks

log = logging.getLogger(__name__)

#: Grey used by ultralytics for letterbox padding; the exported models were trained with it.
PAD_VALUE = 114


class DetectorError(RuntimeError):
    """A detector that cannot be built or run (bad file, wrong model layout)."""


class Detector(Protocol):
    """What the tracker pipeline needs from a detector."""

    class_names: list[str]
    imgsz: int

    def detect(self, rgb: np.ndarray) -> Tracks: ...


@dataclass(frozen=True)
class DetectorSettings:
    """Thresholds shared by every backend."""

    conf: float = 0.25
    iou: float = 0.7
    #: class ids to keep; empty keeps all
    classes: tuple[int, ...] = ()
    max_det: int = 300
    agnostic_nms: bool = False


@dataclass(frozen=True)
class Letterbox:
    """How a frame was fitted into the square network input: input = frame * scale + (pad_x, pad_y)."""

    scale: float
    pad_x: float
    pad_y: float

    def to_frame(self, xyxy: np.ndarray, width: int, height: int) -> np.ndarray:
        out = xyxy.copy()
        out[:, [0, 2]] = (out[:, [0, 2]] - self.pad_x) / self.scale
        out[:, [1, 3]] = (out[:, [1, 3]] - self.pad_y) / self.scale
        out[:, [0, 2]] = out[:, [0, 2]].clip(0, width)
        out[:, [1, 3]] = out[:, [1, 3]].clip(0, height)
        return out


def letterbox(rgb: np.ndarray, size: int) -> tuple[np.ndarray, Letterbox]:
    """Resize keeping the aspect ratio and pad to (size, size) with grey, centred (ultralytics' layout)."""
    h, w = rgb.shape[:2]
    scale = min(size / h, size / w)
    new_w, new_h = round(w * scale), round(h * scale)
    resized = cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_LINEAR) if (new_w, new_h) != (w, h) else rgb
    pad_x, pad_y = (size - new_w) / 2, (size - new_h) / 2
    top, left = round(pad_y - 0.1), round(pad_x - 0.1)
    out = np.full((size, size, 3), PAD_VALUE, np.uint8)
    out[top : top + new_h, left : left + new_w] = resized
    return out, Letterbox(scale, left, top)


def to_input_tensor(square_rgb: np.ndarray) -> np.ndarray:
    """(S, S, 3) uint8 RGB -> (1, 3, S, S) float32 in [0, 1]."""
    return np.ascontiguousarray(square_rgb.transpose(2, 0, 1)[None], dtype=np.float32) / 255.0


def check_frame(rgb: np.ndarray) -> None:
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        got = f"{rgb.dtype} {rgb.shape}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
        raise ValueError(f"detector expects an RGB uint8 (H, W, 3) frame, got {got}")
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"detector got a zero-size frame {rgb.shape}")


def nms(xyxy: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, settings: DetectorSettings) -> np.ndarray:
    """Indices kept by (class-aware unless agnostic) NMS, best first, at most settings.max_det."""
    if len(xyxy) == 0:
        return np.zeros(0, np.int64)
    xywh = np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1).astype(np.float32)
    groups = np.zeros_like(class_ids) if settings.agnostic_nms else class_ids
    keep = cv2.dnn.NMSBoxesBatched(
        xywh.tolist(), scores.astype(np.float32).tolist(), groups.astype(np.int32).tolist(), settings.conf, settings.iou
    )
    keep = np.asarray(keep, np.int64).reshape(-1)
    keep = keep[np.argsort(-scores[keep], kind="stable")]
    return keep[: settings.max_det]


def parse_class_names(value) -> list[str]:
    """Class names from an ultralytics `names` dict / its string form / a list."""
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, dict):
        return [str(value[k]) for k in sorted(value, key=int)]
    return [str(v) for v in value or []]


class OnnxDetector:
    """A YOLO exported to ONNX (raw head output (1, 4 + nc, N), static input (1, 3, S, S))."""

    def __init__(self, path: str | os.PathLike, settings: DetectorSettings = DetectorSettings(), threads: int = 0):
        import onnxruntime as ort

        self.path = Path(path)
        self.settings = settings
        options = ort.SessionOptions()
        if threads > 0:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # Idle worker threads sleep instead of spinning: on a small CPU shared with the ROS
        # executor and the VLM, spinning costs more than the few microseconds it saves.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise DetectorError(f"ONNX Runtime cannot load {self.path}: {exc}") from exc
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        shape = model_input.shape
        if len(shape) != 4 or not isinstance(shape[2], int) or shape[2] != shape[3]:
            raise DetectorError(f"{self.path}: expected a static square input (1, 3, S, S), got {shape}")
        self.imgsz = int(shape[2])
        meta = self.session.get_modelmeta().custom_metadata_map
        self.class_names = parse_class_names(meta.get("names", ""))
        output_shape = self.session.get_outputs()[0].shape
        channels = output_shape[1] if len(output_shape) == 3 and isinstance(output_shape[1], int) else None
        if channels is None or channels < 5:
            raise DetectorError(f"{self.path}: expected a raw YOLO head output (1, 4 + nc, N), got {output_shape}")
        if not self.class_names:
            self.class_names = [str(i) for i in range(channels - 4)]

    def detect(self, rgb: np.ndarray) -> Tracks:
        check_frame(rgb)
        height, width = rgb.shape[:2]
        square, box = letterbox(rgb, self.imgsz)
        (raw,) = self.session.run(None, {self.input_name: to_input_tensor(square)})
        return decode_yolo_output(raw[0], box, width, height, self.settings)


def decode_yolo_output(head: np.ndarray, box: Letterbox, width: int, height: int, settings: DetectorSettings) -> Tracks:
    """(4 + nc, N) head output (cx, cy, w, h in input pixels, class scores) -> Tracks in frame pixels."""
    class_scores = head[4:]
    class_ids = class_scores.argmax(axis=0)
    scores = class_scores[class_ids, np.arange(class_scores.shape[1])]
    keep = scores >= settings.conf
    if settings.classes:
        keep &= np.isin(class_ids, settings.classes)
    if not keep.any():
        return Tracks.empty()
    cxcywh = head[:4, keep].T
    scores, class_ids = scores[keep], class_ids[keep]
    xyxy = np.concatenate([cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, :2] + cxcywh[:, 2:] / 2], axis=1)
    xyxy = box.to_frame(xyxy, width, height)
    valid = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
    xyxy, scores, class_ids = xyxy[valid], scores[valid], class_ids[valid]
    kept = nms(xyxy, scores, class_ids, settings)
    return Tracks(xyxy=xyxy[kept], score=scores[kept], class_id=class_ids[kept], detected=np.ones(len(kept), bool))


class UltralyticsDetector:
    """ultralytics YOLO on torch (a .pt checkpoint, a model .yaml with random weights, or an .onnx)."""

    def __init__(self, path: str | os.PathLike, settings: DetectorSettings = DetectorSettings(), imgsz: int = 0):
        from ultralytics import YOLO

        self.path = Path(path)
        self.settings = settings
        try:
            self.model = YOLO(str(self.path), task="detect")
        except Exception as exc:
            raise DetectorError(f"ultralytics cannot load {self.path}: {exc}") from exc
        overrides = getattr(self.model, "overrides", {}) or {}
        self.imgsz = int(imgsz or overrides.get("imgsz") or 640)
        self.class_names = parse_class_names(self.model.names)

    def detect(self, rgb: np.ndarray) -> Tracks:
        check_frame(rgb)
        s = self.settings
        result = self.model.predict(
            np.ascontiguousarray(rgb[:, :, ::-1]),  # ultralytics takes BGR numpy frames
            conf=s.conf,
            iou=s.iou,
            classes=list(s.classes) or None,
            max_det=s.max_det,
            agnostic_nms=s.agnostic_nms,
            imgsz=self.imgsz,
            device="cpu",
            verbose=False,
        )[0]
        boxes = result.boxes
        if boxes is None or len(boxes) == 0:
            return Tracks.empty()
        return Tracks(
            xyxy=boxes.xyxy.cpu().numpy(),
            score=boxes.conf.cpu().numpy(),
            class_id=boxes.cls.cpu().numpy().astype(np.int32),
            detected=np.ones(len(boxes), bool),
        )


def class_ids_from(classes, class_names: list[str]) -> tuple[int, ...]:
    """Class filter given as ids and/or names -> ids (a name not in the model raises)."""
    ids = []
    for c in classes or ():
        if isinstance(c, (int, np.integer)) or (isinstance(c, str) and c.strip().isdigit()):
            ids.append(int(c))
        elif c in class_names:
            ids.append(class_names.index(c))
        else:
            raise DetectorError(f"class {c!r} is not one of the model's classes {class_names}")
    return tuple(sorted(set(ids)))
