"""Detector + tracker with keep-up scheduling: every camera frame gets tracks.

The detector runs on every k-th frame; the frames in between get the tracker's Kalman
prediction. With `detect_every = 0` (the default) k adapts to load: it is the smallest k whose
average cost per frame, (detector time + (k - 1) * prediction time) / k, stays within
`cpu_budget` of the camera's frame interval (measured from the stamps). On a fast machine or a
slow camera k is 1; on 2 cores at 30 FPS it grows until the pipeline keeps up.

`build_perception(PerceptionConfig(...))` makes the pipeline from a model name in the registry
(models/*.yaml) or a file path. The tracker node, `stvg-ros ground`, evaluation and training
prep all call it.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from stvg_ros.core import model_registry as registry
from stvg_ros.core.types import Tracks
from stvg_ros.perception.detector import (
    Detector,
    DetectorError,
    DetectorSettings,
    OnnxDetector,
    UltralyticsDetector,
    check_frame,
    class_ids_from,
)
from stvg_ros.perception.tracker import Tracker, TrackerConfig

log = logging.getLogger(__name__)

BACKENDS = ("onnx", "ultralytics")
PRECISIONS = ("int8", "fp32")


@dataclass
class PerceptionConfig:
    """Everything that makes a perception pipeline."""

    #: manifest name (yolo11n: COCO, for real cameras; yolo-synth-tiny: synthetic scenes only) or a
    #: .onnx / .pt / .yaml path
    model: str = "yolo11n"
    #: onnx (ONNX Runtime, default on CPU) or ultralytics (torch)
    backend: str = "onnx"
    #: onnx backend: int8 (static QDQ, faster on CPU) or fp32
    precision: str = "int8"
    #: detector confidence threshold; at or below the tracker's low threshold so ByteTrack sees weak boxes
    conf: float = 0.1
    #: NMS IoU threshold; lower than ultralytics' 0.7 because for tracking, two boxes on one object
    #: become two tracks that take turns with its ID (IDF1 0.78 -> 0.87 on the occlusion scenes)
    iou: float = 0.5
    #: class filter: ids or names; empty keeps every class
    classes: list = field(default_factory=list)
    #: network input size; 0 uses the model's own (ONNX files are exported at a fixed size)
    imgsz: int = 0
    max_det: int = 300
    agnostic_nms: bool = False
    #: ONNX Runtime threads (0: its default)
    threads: int = 0
    #: run the detector every N frames; 0 adapts N to load
    detect_every: int = 0
    max_detect_every: int = 6
    #: share of the frame interval the pipeline may use on average when adapting
    cpu_budget: float = 0.6
    #: allow `build_perception` to build a locally-built model (e.g. train yolo-synth-tiny) when missing
    build_missing: bool = False
    #: load a .pt checkpoint given as a path (ultralytics unpickles it: the file can run code); manifest
    #: models, built here or pinned by checksum, need no opt-in
    allow_pickle: bool = False
    tracker: TrackerConfig = field(default_factory=TrackerConfig)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend {self.backend!r} is not one of {BACKENDS}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} is not one of {PRECISIONS}")
        if self.detect_every < 0 or self.max_detect_every < 1:
            raise ValueError("detect_every must be >= 0 and max_detect_every >= 1")
        if not 0 < self.cpu_budget <= 1:
            raise ValueError(f"cpu_budget must be in (0, 1], got {self.cpu_budget}")

    @classmethod
    def from_dict(cls, values: dict) -> PerceptionConfig:
        """From flat keys; tracker fields may be given at the top level (or as `tracker`, a
        TrackerConfig or a mapping). Unknown keys raise."""
        own = {f.name for f in fields(cls)} - {"tracker"}
        tracker_keys = {f.name for f in fields(TrackerConfig)}
        tracker = values.get("tracker")
        tracker = tracker if isinstance(tracker, TrackerConfig) else TrackerConfig(**(tracker or {}))
        tracker = replace(tracker, **{k: v for k, v in values.items() if k in tracker_keys})
        unknown = set(values) - own - tracker_keys - {"tracker"}
        if unknown:
            raise ValueError(f"unknown perception settings: {sorted(unknown)}")
        return cls(**{k: v for k, v in values.items() if k in own}, tracker=tracker)


@dataclass
class PipelineStats:
    frames: int = 0
    detector_runs: int = 0
    detector_errors: int = 0
    skipped_stale: int = 0
    #: frames given the tracker's prediction without being looked at, because newer ones were waiting
    caught_up: int = 0
    detect_every: int = 1
    detect_ms: float = 0.0  # moving average
    predict_ms: float = 0.0  # moving average

    def as_dict(self) -> dict:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in self.__dict__.items()}


class PerceptionPipeline:
    """`process(stamp_ns, rgb) -> Tracks` for every camera frame (not thread-safe: one caller)."""

    def __init__(self, detector: Detector, tracker: Tracker, config: PerceptionConfig | None = None) -> None:
        self.detector = detector
        self.tracker = tracker
        self.config = config or PerceptionConfig()
        self.stats = PipelineStats(detect_every=max(1, self.config.detect_every))
        self._since_detect = math.inf  # frames since the detector last ran
        self._detect_s: deque[float] = deque(maxlen=20)
        self._predict_s: deque[float] = deque(maxlen=50)

    @property
    def class_names(self) -> list[str]:
        return list(self.detector.class_names)

    def process(self, stamp_ns: int, rgb: np.ndarray, skipped: int = 0) -> Tracks:
        """Tracks on this frame. Raises ValueError for a frame that is not RGB uint8 (H, W, 3) with
        non-zero size. An out-of-order frame gets the latest tracks unchanged (counted in stats).

        `skipped` is the number of camera frames lost since the previous call, where the caller
        knows it (e.g. from DDS sequence numbers): the camera's frame interval, and with it the
        detector schedule, is then measured on the camera's rate rather than on the frames that
        got through.
        """
        check_frame(rgb)
        stamp_ns = int(stamp_ns)
        self.stats.frames += 1
        if self.tracker.is_stale(stamp_ns):
            self.stats.skipped_stale += 1
            return self.tracker.predict(stamp_ns)
        if self.tracker.will_reset(stamp_ns):
            self._since_detect = math.inf  # a fresh tracker needs detections at once
        height, width = rgb.shape[:2]
        started = time.perf_counter()
        if self._since_detect + 1 >= self._detect_every():
            try:
                detections = self.detector.detect(rgb)
            except (DetectorError, RuntimeError) as exc:
                self.stats.detector_errors += 1
                log.warning("detector failed on frame %d (%s); using the tracker's prediction", stamp_ns, exc)
                return self.tracker.predict(stamp_ns, (width, height), skipped)
            tracks = self.tracker.update(stamp_ns, detections, rgb, skipped)
            self._since_detect = 0
            self.stats.detector_runs += 1
            self._detect_s.append(time.perf_counter() - started)
        else:
            tracks = self.tracker.predict(stamp_ns, (width, height), skipped)
            self._since_detect += 1 + max(0, int(skipped))
            self._predict_s.append(time.perf_counter() - started)
        self._adapt()
        return tracks

    def catch_up(self, stamp_ns: int, image_size: tuple[int, int] | None, skipped: int = 0) -> Tracks:
        """Tracks on a frame the caller had no time to look at (newer frames are waiting): the
        tracker's prediction, without decoding or detecting. `image_size` is (width, height).
        Detection resumes on the next `process` call, so a caller that fell behind keeps every
        frame's tracks and catches up at the cost of a prediction per frame."""
        stamp_ns = int(stamp_ns)
        self.stats.frames += 1
        if self.tracker.is_stale(stamp_ns):
            self.stats.skipped_stale += 1
        else:
            self.stats.caught_up += 1
            self._since_detect += 1 + max(0, int(skipped))
        return self.tracker.predict(stamp_ns, image_size, skipped)

    def _detect_every(self) -> int:
        return self.config.detect_every if self.config.detect_every > 0 else self.stats.detect_every

    def _adapt(self) -> None:
        """Pick k from measured costs and the camera's frame interval."""
        t_det = float(np.median(self._detect_s)) if self._detect_s else 0.0
        t_pred = float(np.median(self._predict_s)) if self._predict_s else 0.0
        self.stats.detect_ms, self.stats.predict_ms = t_det * 1e3, t_pred * 1e3
        if self.config.detect_every > 0 or not self._detect_s:
            return
        budget = self.config.cpu_budget * self.tracker.frame_interval_s
        if t_det <= budget:
            k = 1
        elif budget <= t_pred:
            k = self.config.max_detect_every
        else:
            k = math.ceil((t_det - t_pred) / (budget - t_pred))
        self.stats.detect_every = int(np.clip(k, 1, self.config.max_detect_every))

    def reset(self) -> None:
        """Forget all tracks (IDs continue, never reused)."""
        self.tracker.reset()
        self._since_detect = math.inf


def build_detector(config: PerceptionConfig) -> Detector:
    """The detector a config names: registry manifest or file path, backend and precision."""
    path = model_file(config)
    settings = DetectorSettings(
        conf=config.conf, iou=config.iou, max_det=config.max_det, agnostic_nms=config.agnostic_nms
    )
    if path.suffix == ".onnx" and config.backend == "onnx":
        detector: Detector = OnnxDetector(path, settings, threads=config.threads)
        if config.imgsz and config.imgsz != detector.imgsz:
            log.warning("%s was exported at imgsz %d; ignoring imgsz=%d", path.name, detector.imgsz, config.imgsz)
    else:
        detector = UltralyticsDetector(path, settings, imgsz=config.imgsz)
    if config.classes:
        detector.settings = replace(settings, classes=class_ids_from(config.classes, detector.class_names))
    return detector


#: Checkpoint suffixes that torch/ultralytics load with pickle.
PICKLED_SUFFIXES = (".pt", ".pth")


def model_file(config: PerceptionConfig) -> Path:
    """Which file of the model to load for the backend/precision (raises ModelFileMissing, whose
    message names the file and how to get it, when it is not on this machine)."""
    candidate = Path(config.model).expanduser()
    if candidate.is_file():
        if config.backend == "onnx" and candidate.suffix != ".onnx":
            raise DetectorError(f"backend 'onnx' needs an .onnx file, got {candidate}; use backend 'ultralytics'")
        if candidate.suffix in PICKLED_SUFFIXES and not config.allow_pickle:
            raise DetectorError(
                f"{candidate} is a pickled PyTorch checkpoint: loading it runs code stored in the file. Export it "
                "to ONNX where you trust it (`yolo export model=FILE format=onnx`) and use the .onnx, or set "
                "allow_pickle true (tracker parameter; --allow-pickle) for a file you trust"
            )
        return candidate
    if candidate.suffix == ".yaml" and config.backend == "ultralytics" and not candidate.exists():
        return candidate  # an ultralytics architecture name such as yolo11n.yaml (random weights)
    manifest = registry.get_manifest(config.model) if config.model in registry.load_manifests() else None
    if manifest is None:
        return registry.resolve(config.model)  # raises with a clear message
    wanted = {"int8": "onnx-int8", "fp32": "onnx"}[config.precision] if config.backend == "onnx" else "pt"
    return registry.resolve(config.model, wanted, build=config.build_missing)


def build_perception(config: PerceptionConfig | None = None) -> PerceptionPipeline:
    """Detector (from the model registry) + tracker, ready for `process`."""
    config = config or PerceptionConfig()
    return PerceptionPipeline(build_detector(config), Tracker(config.tracker), config)
