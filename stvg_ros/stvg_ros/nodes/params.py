"""The parameters of every stvg_ros node, as typed schemas, and the core configs they yield. ROS-free.

A node's parameters are ONE dataclass whose fields carry `metadata={"description": ...}`. The ROS
side (nodes/ros_params.py: `declare_parameters`, `read_parameters`) declares and reads them on a
node; `from_values(Schema, {...})` builds the same instance from a mapping (a parameters file, the
evaluation runner) without ROS; `parameters_markdown(Schema)` renders the README/docs tables, so the
docs cannot drift. Each schema turns itself into the core configs (`TrackerParams.perception_config`,
`GroundingParams.buffer_config` / `grounding_config` / `backend_settings`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from stvg_ros.grounding.backends.base import BackendSettings
from stvg_ros.grounding.pipeline import GroundingConfig
from stvg_ros.grounding.sampling import ID_NUMBERINGS
from stvg_ros.perception.buffer import BufferConfig
from stvg_ros.perception.pipeline import BACKENDS as DETECTOR_BACKENDS
from stvg_ros.perception.pipeline import PRECISIONS, PerceptionConfig
from stvg_ros.perception.sam2_refine import Sam2Config, check_available
from stvg_ros.perception.tracker import TrackerConfig

Schema = TypeVar("Schema")

#: QoS reliabilities of an image subscription (nodes/qos.py maps them onto rclpy's).
RELIABILITIES = ("best_effort", "reliable", "system_default")
TRANSPORTS = ("raw", "compressed")
VLM_BACKENDS = ("llama_cpp", "transformers", "http")

# --------------------------------------------------------------------------------------------
# Schema machinery


def param(
    default: Any,
    description: str,
    *,
    read_only: bool = False,
    live: bool = False,
    limits: tuple[float, float] | None = None,
    **extra: Any,
) -> Any:
    """A schema field: `x: float = param(0.25, "detector confidence threshold", live=True, limits=(0.0, 1.0))`.

    `live`: a change on the running node takes effect at once (the node's on-set parameter callback
    applies it); the others are read on configure. `limits`: the inclusive range of a number (the
    ROS descriptor's integer/floating-point range). `read_only`: set at start only. Mutable defaults
    (lists) are copied per instance. `extra` goes into the field metadata (e.g.
    `choices=("onnx", "ultralytics")`, checked by `from_values` / `declare_parameters`).
    """
    metadata = {"description": description, "read_only": read_only, "live": live, "limits": limits, **extra}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def is_live(field: dataclasses.Field) -> bool:
    """True when a change of this parameter takes effect on the running node (see `param`)."""
    return bool(field.metadata.get("live", False))


def live_parameters(schema_cls: type) -> list[str]:
    """The names of a schema's live-tunable parameters, in declaration order."""
    return [f.name for f in dataclasses.fields(schema_cls) if is_live(f)]


def range_problem(field: dataclasses.Field, value: Any, name: str = "") -> str:
    """Why a (converted) value is outside the field's `limits` ("" when inside or unlimited)."""
    limits = field.metadata.get("limits")
    if limits is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return ""
    low, high = limits
    if not low <= value <= high:
        return f"{name or field.name} must be in [{low}, {high}], got {value}"
    return ""


def field_kind(field: dataclasses.Field, hints: Mapping[str, Any]) -> tuple[type, type | None]:
    """(python type, list element type or None) of a schema field from its annotation."""
    hint = hints[field.name]
    origin = typing.get_origin(hint)
    if origin in (list, Sequence, tuple):
        args = typing.get_args(hint)
        return list, (args[0] if args else str)
    if origin in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if hint not in (str, int, float, bool):
        raise TypeError(
            f"parameter {field.name!r}: type {hint!r} is not a ROS parameter type (str/int/float/bool/list)"
        )
    return hint, None


def field_default(field: dataclasses.Field) -> Any:
    """The default value of a schema field (a fresh copy for lists)."""
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    raise TypeError(f"parameter {field.name!r} needs a default")


def convert(field: dataclasses.Field, kind: type, element: type | None, value: Any, name: str = "") -> Any:
    """`value` (None: the default) as the field's type; ValueError when outside its `choices`."""
    if value is None:
        value = field_default(field)
    label = name or field.name
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = float(value)
    elif kind is list and not isinstance(value, (str, bytes, dict)):  # ROS gives arrays as array.array
        try:
            value = [element(v) for v in value]
        except (TypeError, ValueError):
            raise ValueError(f"parameter {label!r} = {value!r} must be a list of {element.__name__}") from None
    wrong_bool = isinstance(value, bool) != (kind is bool)
    if wrong_bool or not isinstance(value, kind):
        raise ValueError(f"parameter {label!r} = {value!r} must be {kind.__name__}, not {type(value).__name__}")
    choices = field.metadata.get("choices")
    if choices and value not in choices:
        raise ValueError(f"parameter {name or field.name!r} = {value!r} is not one of {list(choices)}")
    return value


def from_values(schema_cls: type[Schema], values: Mapping[str, Any]) -> Schema:
    """An instance of `schema_cls` from {name: value} (missing names keep their defaults), typed like
    `read_parameters` (an int for a float field is accepted) and checked against `choices`.
    Unknown names raise ValueError, except the parameters every ROS node has (`use_sim_time`,
    `qos_overrides.*`)."""
    hints = typing.get_type_hints(schema_cls)
    fields = dataclasses.fields(schema_cls)
    names = {k for k in values if k != "use_sim_time" and not str(k).startswith("qos_overrides.")}
    if unknown := names - {f.name for f in fields}:
        raise ValueError(f"unknown {schema_cls.__name__} parameters: {sorted(unknown)}")
    return schema_cls(**{f.name: convert(f, *field_kind(f, hints), values.get(f.name)) for f in fields})


def _number(x: float) -> str:
    """1.0 -> "1", 0.25 -> "0.25" (a range bound in a table)."""
    return str(int(x)) if float(x).is_integer() else str(x)


def parameters_markdown(schema_cls: type) -> str:
    """The README table of a schema: name, type, default, description (with its choices, its range,
    **live** when a change takes effect at once, **read-only** when it is set at start only)."""
    hints = typing.get_type_hints(schema_cls)
    lines = ["| parameter | type | default | description |", "|---|---|---|---|"]
    for field in dataclasses.fields(schema_cls):
        kind, element = field_kind(field, hints)
        type_name = f"{element.__name__}[]" if kind is list else kind.__name__
        default = field_default(field)
        shown = (
            repr(default)
            if isinstance(default, str)
            else str(default).lower()
            if isinstance(default, bool)
            else str(default)
        )
        description = field.metadata.get("description", "")
        if field.metadata.get("choices"):
            description += " (one of: " + ", ".join(f"`{c}`" for c in field.metadata["choices"]) + ")"
        if field.metadata.get("limits"):
            description += " (range {} to {})".format(*(_number(x) for x in field.metadata["limits"]))
        if is_live(field):
            description += " **live**"
        if field.metadata.get("read_only"):
            description += " **read-only**"
        lines.append(f"| `{field.name}` | {type_name} | `{shown}` | {description.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# tracker node

_P, _T = PerceptionConfig, TrackerConfig  # class attributes: the core defaults


# The camera input every image-subscribing node declares alike (one description each).


def camera_transport() -> Any:
    return param("raw", "camera input: Image on `image` or CompressedImage on `image/compressed`", choices=TRANSPORTS)


def camera_reliability() -> Any:
    return param(
        "best_effort",
        "QoS reliability of the image subscription (best_effort also receives from reliable publishers)",
        choices=RELIABILITIES,
    )


def camera_depth() -> Any:
    return param(
        10,
        "QoS depth (KEEP_LAST) of the image subscription: frames the DDS reader holds while the executor is busy",
        limits=(1, 1000),
    )


def camera_warning() -> Any:
    return param(5.0, "warn when no image publisher has matched for this long (0: never)", limits=(0.0, 3600.0))


@dataclass
class TrackerParams:
    """Parameters of the tracker node (config/tracker.yaml; table in docs/perception.md)."""

    autostart: bool = param(
        True,
        "configure and activate in the node's own process on start (false: launch or a lifecycle manager does)",
        read_only=True,
    )
    camera: str = param(
        "", "camera name written into every tracks message (multi-camera graphs set it; IDs are per camera)",
        read_only=True,
    )  # fmt: skip
    detector: str = param(_P.model, "detector: model manifest name (models/*.yaml) or a .onnx/.pt/.yaml path")
    backend: str = param(_P.backend, "detector runtime: ONNX Runtime or ultralytics (torch)", choices=DETECTOR_BACKENDS)
    precision: str = param(_P.precision, "ONNX file to load: static int8 (faster on CPU) or fp32", choices=PRECISIONS)
    allow_pickle: bool = param(
        _P.allow_pickle, "load a .pt detector given as a path (unpickling runs code from the file: trusted files only)"
    )
    conf: float = param(
        _P.conf,
        "detector confidence threshold (ByteTrack uses boxes down to track_low_thresh)",
        live=True,
        limits=(0.0, 1.0),
    )
    iou: float = param(
        _P.iou, "NMS IoU threshold (duplicate boxes would become competing tracks)", live=True, limits=(0.0, 1.0)
    )
    classes: list[str] = dataclasses.field(
        default_factory=list, metadata={"description": "class filter: names or ids (empty: all classes)"}
    )
    imgsz: int = param(_P.imgsz, "detector input size (0: the model's own)", limits=(0, 8192))
    max_det: int = param(_P.max_det, "most detections per frame", live=True, limits=(1, 10000))
    threads: int = param(_P.threads, "ONNX Runtime threads (0: its default)", limits=(0, 1024))
    detect_every: int = param(
        _P.detect_every,
        "run the detector every N frames, predict in between (0: adapt N to load)",
        live=True,
        limits=(0, 1000),
    )
    max_detect_every: int = param(_P.max_detect_every, "largest N when adapting", live=True, limits=(1, 1000))
    cpu_budget: float = param(
        _P.cpu_budget,
        "share of the frame interval the tracker may use on average when adapting",
        live=True,
        limits=(0.01, 1.0),
    )
    track_high_thresh: float = param(
        _T.track_high_thresh, "ByteTrack: first-association score threshold", limits=(0.0, 1.0)
    )
    track_low_thresh: float = param(
        _T.track_low_thresh, "ByteTrack: second-association score threshold", limits=(0.0, 1.0)
    )
    new_track_thresh: float = param(_T.new_track_thresh, "ByteTrack: score needed to start a track", limits=(0.0, 1.0))
    match_thresh: float = param(_T.match_thresh, "ByteTrack: association cost threshold", limits=(0.0, 1.0))
    lost_buffer_s: float = param(
        _T.lost_buffer_s, "ByteTrack keeps a lost track this long for IoU re-matching", limits=(0.0, 3600.0)
    )
    reid_max_gap_s: float = param(
        _T.reid_max_gap_s,
        "re-associate a new track with one lost at most this long ago, in seconds without detections (0: off)",
        live=True,
        limits=(0.0, 3600.0),
    )
    reid_min_similarity: float = param(
        _T.reid_min_similarity, "re-association: minimum colour-histogram similarity", live=True, limits=(0.0, 1.0)
    )
    reid_gate_sizes: float = param(
        _T.reid_gate_sizes, "re-association: motion gate radius in object sizes", live=True, limits=(0.0, 100.0)
    )
    reid_low_score: bool = param(
        _T.reid_low_score,
        "re-association: low-score detections (track_low_thresh..new_track_thresh) may revive a lost ID",
        live=True,
    )
    image_transport: str = camera_transport()
    image_reliability: str = camera_reliability()
    image_depth: int = camera_depth()
    image_backlog: int = param(
        30,
        "frames queued for the processing thread; when it falls further behind the oldest are dropped (counted)",
        limits=(1, 10000),
    )
    no_image_warning_s: float = camera_warning()
    diagnostics_period_s: float = param(1.0, "period of /diagnostics messages (0: none)", limits=(0.0, 3600.0))
    publish_detection2d: bool = param(
        True, "also publish vision_msgs/Detection2DArray on `detections` where vision_msgs is installed"
    )

    def perception_config(self) -> PerceptionConfig:
        """The detector + tracker settings (`detector` names the model; the ROS-only ones are left out)."""
        tracker = TrackerConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(TrackerConfig)
                                   if hasattr(self, f.name)})  # fmt: skip
        return PerceptionConfig(
            model=self.detector, backend=self.backend, precision=self.precision, conf=self.conf, iou=self.iou,
            classes=list(self.classes), imgsz=self.imgsz, max_det=self.max_det, threads=self.threads,
            detect_every=self.detect_every, max_detect_every=self.max_detect_every, cpu_budget=self.cpu_budget,
            allow_pickle=self.allow_pickle, tracker=tracker,
        )  # fmt: skip


def perception_config_from(data: Mapping[str, Any]) -> PerceptionConfig:
    """PerceptionConfig from a settings file's content: flat PerceptionConfig fields, or a ROS
    parameters file (e.g. config/tracker.yaml), whose tracker_node section is read as the tracker
    node reads it; flat keys beside the sections (e.g. a command-line `model`) override it."""
    sections = {k: v for k, v in data.items() if isinstance(v, Mapping) and "ros__parameters" in v}
    if not sections:
        return PerceptionConfig.from_dict(dict(data))
    node = next(
        (
            v["ros__parameters"] or {}
            for k, v in sections.items()
            if str(k).rstrip("/").split("/")[-1] == "tracker_node"
        ),
        {},
    )
    config = from_values(TrackerParams, node).perception_config()
    current = {f.name: getattr(config, f.name) for f in dataclasses.fields(PerceptionConfig)}
    return PerceptionConfig.from_dict({**current, **{k: v for k, v in data.items() if k not in sections}})


# --------------------------------------------------------------------------------------------
# overlay node


@dataclass
class OverlayParams:
    """Parameters of the overlay node (config/overlay.yaml; table in docs/perception.md)."""

    autostart: bool = param(
        True,
        "configure and activate in the node's own process on start (false: launch or a lifecycle manager does)",
        read_only=True,
    )
    image_transport: str = camera_transport()
    image_reliability: str = camera_reliability()
    cache_size: int = param(
        30, "images and track messages kept while waiting for their partner (each)", limits=(1, 10000)
    )
    max_wait_s: float = param(1.0, "longest an image waits for its tracks, in source time", limits=(0.0, 60.0))
    publish_unmatched: bool = param(False, "publish images whose tracks never came, without IDs", live=True)
    draw_boxes: bool = param(False, "also draw thin boxes (debug; the model itself sees only IDs)", live=True)
    min_box_side_px: float = param(
        0.0,
        "skip IDs of objects smaller than this (0: draw all, the trained drawing)",
        live=True,
        limits=(0.0, 10000.0),
    )
    no_image_warning_s: float = camera_warning()
    lazy: bool = param(True, "draw and publish only while `image_annotated` has a subscriber", live=True)


# --------------------------------------------------------------------------------------------
# grounding node

_B, _G, _S = BufferConfig, GroundingConfig, Sam2Config


@dataclass
class GroundingParams:
    """Parameters of the grounding node (config/grounding.yaml; table in docs/ros.md)."""

    autostart: bool = param(
        True,
        "configure and activate in the node's own process on start (false: launch or a lifecycle manager does)",
        read_only=True,
    )
    cameras: list[str] = dataclasses.field(
        default_factory=list,
        metadata={"description": "cameras served by this node's one model: each NAME gets NAME/image, NAME/tracks, "
                  "NAME/ground, NAME/target, ... (empty: one camera on image, tracks, ground, ...)", "read_only": True},
    )  # fmt: skip
    backend: str = param("llama_cpp", "VLM backend", choices=VLM_BACKENDS)
    model: str = param(
        "stvg-r1-7b-q4_k_m",
        "model manifest name (models/*.yaml) or a path: GGUF file (llama_cpp), HF folder (transformers), "
        "served model name (http)",
    )
    mmproj: str = param(
        BackendSettings.mmproj, "vision projector GGUF for llama_cpp (empty: the one the manifest names)"
    )
    endpoint: str = param(
        BackendSettings.endpoint, "OpenAI-compatible base URL for backend http, e.g. http://gpu-server:8080/v1"
    )
    n_ctx: int = param(
        BackendSettings.n_ctx,
        "llama.cpp context length in tokens (frames + prompt + answer must fit)",
        limits=(0, 1048576),
    )
    n_threads: int = param(BackendSettings.n_threads, "llama.cpp CPU threads (0: all cores but one)", limits=(0, 1024))
    n_gpu_layers: int = param(
        BackendSettings.n_gpu_layers,
        "llama.cpp layers offloaded to the GPU (-1: all, 0: CPU only)",
        limits=(-1, 100000),
    )
    flash_attn: bool = param(
        BackendSettings.flash_attn,
        "llama.cpp flash attention (less memory and faster on GPU; false if a build lacks it)",
    )
    num_frames: int = param(
        _G.num_frames, "frames sampled from the query window and shown to the model", live=True, limits=(1, 256)
    )
    reasoning: bool = param(
        _G.reasoning, "queries with REASONING_DEFAULT get a `<think>` block first (false: answer only)", live=True
    )
    max_new_tokens: int = param(
        _G.max_new_tokens, "longest model answer in tokens (reasoning included)", live=True, limits=(1, 65536)
    )
    id_numbering: str = param(
        _G.id_numbering,
        "numbers drawn on the frames: the track IDs, or 1..K per query clip mapped back to track IDs "
        "(a model's recorded input format wins)",
        choices=ID_NUMBERINGS,
    )
    buffer_seconds: float = param(
        _B.max_seconds, "camera history kept for queries, in seconds of source time", limits=(0.001, 86400.0)
    )
    buffer_sample_fps: float = param(
        _B.sample_fps,
        "frames per second kept in the history (STVG-R1 samples video at 2 fps)",
        limits=(0.001, 1000.0),
    )
    buffer_max_mb: float = param(
        _B.max_mb, "memory bound of the history in MB (oldest entries dropped first)", limits=(0.001, 1048576.0)
    )
    query_timeout_s: float = param(
        _G.timeout_s, "longest a query may take from arrival (queue wait included)", live=True, limits=(0.1, 86400.0)
    )
    queue_size: int = param(2, "queries that may wait while one runs; more are answered busy at once", limits=(0, 64))
    target_lost_timeout_s: float = param(
        3.0, "stop following when the target is unseen this long (source time)", live=True, limits=(0.0, 3600.0)
    )
    image_transport: str = camera_transport()
    image_reliability: str = camera_reliability()
    image_depth: int = camera_depth()
    no_image_warning_s: float = camera_warning()
    diagnostics_period_s: float = param(1.0, "period of /diagnostics messages (0: none)", limits=(0.0, 3600.0))
    sam2_refine: bool = param(
        _S.enabled, "draw IDs at SAM2 mask centres on the sampled frames (needs `sam2` + a checkpoint)"
    )
    sam2_checkpoint: str = param(_S.checkpoint, "SAM2.1 tiny checkpoint (.pt) for sam2_refine (required when it is on)")
    sam2_image_size: int = param(
        _S.image_size,
        "SAM2 image encoder input size (1024: SAM2's own; 512: ~7x faster on CPU)",
        limits=(64, 4096),
    )

    def problems(self) -> list[str]:
        """What is wrong with these values ([] when nothing), each naming the parameter."""
        problems = []
        if self.num_frames < 1:
            problems.append(f"num_frames must be >= 1, got {self.num_frames}")
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.buffer_seconds <= 0 or self.buffer_sample_fps <= 0 or self.buffer_max_mb <= 0:
            problems.append("buffer_seconds, buffer_sample_fps and buffer_max_mb must be > 0")
        if self.query_timeout_s <= 0:
            problems.append(f"query_timeout_s must be > 0, got {self.query_timeout_s}")
        if self.queue_size < 0:
            problems.append(f"queue_size must be >= 0, got {self.queue_size}")
        if self.backend == "http" and not self.endpoint:
            problems.append("backend http needs `endpoint` (e.g. http://gpu-server:8080/v1)")
        return problems

    def check(self) -> None:
        """Raise ValueError listing `problems()`, if any."""
        if problems := self.problems():
            raise ValueError("; ".join(problems))

    def buffer_config(self) -> BufferConfig:
        """The camera history the node keeps (frame size: BufferConfig's)."""
        return BufferConfig(
            max_seconds=self.buffer_seconds, sample_fps=self.buffer_sample_fps, max_mb=self.buffer_max_mb
        )

    def sam2_config(self) -> Sam2Config:
        return Sam2Config(enabled=self.sam2_refine, checkpoint=self.sam2_checkpoint, image_size=self.sam2_image_size)

    def grounding_config(self) -> GroundingConfig:
        """How queries are answered (other fields keep GroundingConfig's defaults).

        Raises Sam2Unavailable when `sam2_refine` is on but the `sam2` package or the checkpoint file
        is missing (checked without loading the model), so the node's configure fails with that message.
        """
        sam2 = self.sam2_config()
        if sam2.enabled:
            check_available(sam2)
        return GroundingConfig(
            num_frames=self.num_frames, max_new_tokens=self.max_new_tokens, reasoning=self.reasoning,
            timeout_s=self.query_timeout_s, sam2=sam2, id_numbering=self.id_numbering,
        )  # fmt: skip

    def backend_settings(self) -> BackendSettings:
        """What `make_backend(self.backend, ...)` / `resolve_model_files` load."""
        return BackendSettings(
            model=self.model, mmproj=self.mmproj, endpoint=self.endpoint, n_ctx=self.n_ctx, n_threads=self.n_threads,
            n_gpu_layers=self.n_gpu_layers, flash_attn=self.flash_attn, timeout_s=self.query_timeout_s,
        )  # fmt: skip


# --------------------------------------------------------------------------------------------
# player node


@dataclass
class PlayerParams:
    """Parameters of the player node (table in docs/synth.md)."""

    bag: str = param("", "rosbag2 folder (or .db3/.mcap file) to play; set `bag` or `video`")
    video: str = param("", "video file to play instead of a bag")
    topic: str = param("", "image topic inside the bag ('' = the bag's only image topic)")
    rate: float = param(1.0, "playback speed as a multiple of real time (0 = as fast as possible)")
    loop: bool = param(False, "start again at the end (stamps keep increasing across loops)")
    publish_clock: bool = param(False, "publish rosgraph_msgs/Clock on /clock with each frame's stamp")
    stamp_mode: str = param(
        "sim", "video stamps: `sim` = 1_700_000_000 s + frame time, `now` = wall clock", choices=("sim", "now")
    )
    frame_id: str = param("camera", "header frame_id of video frames (bags keep their own)")
    decompress: bool = param(False, "publish a bag's CompressedImage frames decoded, as Image on `image`")
    reliability: str = param("reliable", "QoS reliability of the image publisher", choices=("reliable", "best_effort"))
    depth: int = param(10, "QoS depth (KEEP_LAST) of the image publisher")
    start_delay_s: float = param(
        1.0, "seconds to wait before the first frame (after wait_for_subscribers), so subscribers finish matching"
    )
    wait_for_subscribers: int = param(0, "before playing, wait until this many subscriptions match")
    wait_timeout_s: float = param(10.0, "longest wait for `wait_for_subscribers` (then play anyway)")
    exit_on_end: bool = param(True, "standalone: exit the process when playback ends")

    def problems(self) -> list[str]:
        """What is wrong with these values ([] when nothing)."""
        problems = []
        if bool(self.bag) == bool(self.video):
            problems.append("set exactly one of the parameters `bag` and `video`")
        if self.rate < 0 or self.depth < 1:
            problems.append(f"rate must be >= 0 and depth >= 1 (got rate={self.rate}, depth={self.depth})")
        return problems


#: Each node's schema, by node name (graph.py's node names).
SCHEMAS: dict[str, type] = {
    "tracker_node": TrackerParams,
    "overlay_node": OverlayParams,
    "grounding_node": GroundingParams,
    "player_node": PlayerParams,
}
