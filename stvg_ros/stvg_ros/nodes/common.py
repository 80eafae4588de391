"""Helpers every stvg_ros node shares: parameter schemas, image QoS, image decoding, stamps, startup.

A node's parameters are ONE dataclass whose fields carry `metadata={"description": ...}`:
`declare_parameters(node, Schema)` declares them as ROS parameters (with descriptors) and returns
the values, and `parameters_markdown(Schema)` renders the README table, so docs cannot drift.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from stvg_ros.core.image_codec import decode_compressed, decode_image

Schema = TypeVar("Schema")

# --------------------------------------------------------------------------------------------
# Parameter schemas


def param(default: Any, description: str, *, read_only: bool = False, **extra: Any) -> Any:
    """A schema field: `x: float = param(0.25, "detector confidence threshold")`.

    Mutable defaults (lists) are copied per instance. `extra` goes into the field metadata
    (e.g. `choices=("onnx", "ultralytics")`, checked by `declare_parameters`).
    """
    metadata = {"description": description, "read_only": read_only, **extra}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _field_kind(field: dataclasses.Field, hints: dict[str, Any]) -> tuple[type, type | None]:
    """(python type, list element type or None) of a schema field from its annotation."""
    hint = hints[field.name]
    origin = typing.get_origin(hint)
    if origin in (list, Sequence, tuple):
        args = typing.get_args(hint)
        return list, (args[0] if args else str)
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = non_none[0]
    if hint not in (str, int, float, bool):
        raise TypeError(
            f"parameter {field.name!r}: type {hint!r} is not a ROS parameter type (str/int/float/bool/list)"
        )
    return hint, None


def _ros_type(kind: type, element: type | None):
    from rclpy.parameter import Parameter

    if kind is list:
        return {
            str: Parameter.Type.STRING_ARRAY,
            int: Parameter.Type.INTEGER_ARRAY,
            float: Parameter.Type.DOUBLE_ARRAY,
            bool: Parameter.Type.BOOL_ARRAY,
        }[element]
    return {
        str: Parameter.Type.STRING,
        int: Parameter.Type.INTEGER,
        float: Parameter.Type.DOUBLE,
        bool: Parameter.Type.BOOL,
    }[kind]


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    raise TypeError(f"parameter {field.name!r} needs a default")


def declare_parameters(node, schema_cls: type[Schema], prefix: str = "") -> Schema:
    """Declare every field of `schema_cls` on `node` and return an instance with the values.

    Values come from parameter overrides (YAML `--params-file`, launch) where given, else the
    field defaults. An int given for a float field is accepted. Raises ValueError naming the
    parameter when a value is outside the field's `choices`.
    """
    from rcl_interfaces.msg import ParameterDescriptor
    from rclpy.exceptions import ParameterUninitializedException

    hints = typing.get_type_hints(schema_cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(schema_cls):
        kind, element = _field_kind(field, hints)
        default = _default(field)
        ros_type = _ros_type(kind, element)
        choices = field.metadata.get("choices")
        description = field.metadata.get("description", "")
        descriptor = ParameterDescriptor(
            name=prefix + field.name,
            type=ros_type.value,
            description=description + (f" (one of: {', '.join(map(str, choices))})" if choices else ""),
            read_only=bool(field.metadata.get("read_only", False)),
            # Lets an integer in a YAML file set a float parameter (e.g. `conf: 1`).
            dynamic_typing=kind is float,
        )
        # An empty list cannot say its element type: declare by type, fall back to the default.
        initial = ros_type if (kind is list and not default) else default
        node.declare_parameter(prefix + field.name, initial, descriptor)
        try:
            value = node.get_parameter(prefix + field.name).value
        except ParameterUninitializedException:
            value = default
        if value is None:
            value = default
        if kind is float:
            value = float(value)
        elif kind is list:
            value = [element(v) for v in value]
        if choices and value not in choices:
            raise ValueError(f"parameter {prefix + field.name!r} = {value!r} is not one of {list(choices)}")
        values[field.name] = value
    return schema_cls(**values)


def read_parameters(node, schema_cls: type[Schema], prefix: str = "") -> Schema:
    """Current values of already-declared schema parameters (e.g. re-read on configure)."""
    from rclpy.exceptions import ParameterUninitializedException

    hints = typing.get_type_hints(schema_cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(schema_cls):
        kind, element = _field_kind(field, hints)
        try:
            value = node.get_parameter(prefix + field.name).value
        except ParameterUninitializedException:
            value = None
        if value is None:
            value = _default(field)
        values[field.name] = float(value) if kind is float else [element(v) for v in value] if kind is list else value
        choices = field.metadata.get("choices")
        if choices and values[field.name] not in choices:
            raise ValueError(
                f"parameter {prefix + field.name!r} = {values[field.name]!r} is not one of {list(choices)}"
            )
    return schema_cls(**values)


def parameters_markdown(schema_cls: type) -> str:
    """The README table of a schema: name, type, default, description."""
    hints = typing.get_type_hints(schema_cls)
    lines = ["| parameter | type | default | description |", "|---|---|---|---|"]
    for field in dataclasses.fields(schema_cls):
        kind, element = _field_kind(field, hints)
        type_name = f"{element.__name__}[]" if kind is list else kind.__name__
        default = _default(field)
        shown = (
            "`"
            + (
                repr(default)
                if isinstance(default, str)
                else str(default).lower()
                if isinstance(default, bool)
                else str(default)
            )
            + "`"
        )
        description = field.metadata.get("description", "")
        if field.metadata.get("choices"):
            description += " (one of: " + ", ".join(f"`{c}`" for c in field.metadata["choices"]) + ")"
        lines.append(f"| `{field.name}` | {type_name} | {shown} | {description.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# QoS and publisher watchdog

RELIABILITIES = ("best_effort", "reliable", "system_default")


def image_topic(transport: str) -> str:
    """The relative camera topic a node subscribes to: `image`, or `image/compressed`."""
    return "image/compressed" if transport == "compressed" else "image"


def image_subscription(
    node, callback: Callable, transport: str, depth: int, reliability: str, topic: str = "", **kwargs: Any
):
    """Subscribe the camera: `image` (sensor_msgs/Image) or, with transport "compressed",
    `image/compressed` (sensor_msgs/CompressedImage), with `image_qos(depth, reliability)`.
    `topic` replaces the relative name (e.g. a name already resolved by another node)."""
    from sensor_msgs.msg import CompressedImage, Image

    msg_type = CompressedImage if transport == "compressed" else Image
    return node.create_subscription(
        msg_type, topic or image_topic(transport), callback, image_qos(depth, reliability), **kwargs
    )


def image_qos(depth: int = 1, reliability: str = "best_effort"):
    """QoS for image subscriptions: KEEP_LAST `depth`, VOLATILE, the given reliability.

    BEST_EFFORT (the sensor-data default) receives from both best-effort and reliable
    publishers; RELIABLE receives nothing from a best-effort camera (a classic silent failure).
    """
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    policies = {
        "best_effort": ReliabilityPolicy.BEST_EFFORT,
        "reliable": ReliabilityPolicy.RELIABLE,
        "system_default": ReliabilityPolicy.SYSTEM_DEFAULT,
    }
    if reliability not in policies:
        raise ValueError(f"image reliability {reliability!r} is not one of {list(policies)}")
    if depth < 1:
        raise ValueError(f"QoS depth must be at least 1, got {depth}")
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=int(depth),
        reliability=policies[reliability],
        durability=DurabilityPolicy.VOLATILE,
    )


class NoPublisherWatchdog:
    """Logs a warning when subscriptions have matched no publisher for `after_s` seconds.

    When publishers exist on the topic but none matched (QoS mismatch), the warning says so and
    names their reliability. It warns again every `after_s` while nothing matches, and logs once
    when a publisher matches.
    """

    def __init__(self, node, subscriptions: Sequence, after_s: float = 5.0) -> None:
        self._node = node
        self._subscriptions = list(subscriptions)
        self._matched = False
        self.warnings = 0
        self._timer = node.create_timer(max(float(after_s), 0.1), self.check) if after_s > 0 else None

    def matched_publishers(self) -> int:
        return sum(s.get_publisher_count() for s in self._subscriptions)

    def check(self) -> bool:
        """True when some subscription has a matched publisher; warns otherwise."""
        if self.matched_publishers() > 0:
            if not self._matched:
                self._node.get_logger().info("image publisher matched")
            self._matched = True
            return True
        self._matched = False
        self.warnings += 1
        for sub in self._subscriptions:
            topic = sub.topic_name
            offered = [
                str(getattr(info.qos_profile.reliability, "name", info.qos_profile.reliability)).lower()
                for info in self._node.get_publishers_info_by_topic(topic)
            ]
            if offered:
                self._node.get_logger().warning(
                    f"{len(offered)} publisher(s) on {topic!r} but none matched: QoS mismatch? they offer "
                    f"reliability {offered}; set the image reliability parameter to match (best_effort receives both)"
                )
            else:
                self._node.get_logger().warning(f"no publisher on {topic!r} yet (check the topic name / remapping)")
        return False

    def destroy(self) -> None:
        if self._timer is not None:
            self._node.destroy_timer(self._timer)
            self._timer = None


class KeyedThrottle:
    """Log a warning at most once per `period_s` for each distinct key (e.g. the reason an image was
    dropped), so a new kind of problem is always reported at once while a flood of one kind is not.
    Remembers at most `max_keys` keys (oldest forgotten first)."""

    def __init__(self, logger, period_s: float = 5.0, max_keys: int = 64) -> None:
        self._logger, self.period_s, self.max_keys = logger, float(period_s), int(max_keys)
        self._last: dict[str, float] = {}

    def warning(self, key: str, text: str) -> bool:
        """Log `text` unless `key` was logged less than period_s ago; True when logged."""
        import time

        now = time.monotonic()
        last = self._last.pop(key, None)
        if last is not None and now - last < self.period_s:
            self._last[key] = last
            return False
        self._last[key] = now
        while len(self._last) > self.max_keys:
            del self._last[next(iter(self._last))]
        self._logger.warning(text)
        return True


# --------------------------------------------------------------------------------------------
# Images and stamps

try:  # real ROS systems: cv_bridge knows every encoding; here the core codec is used instead
    from cv_bridge import CvBridge as _CvBridge  # type: ignore[import-not-found]

    _BRIDGE = _CvBridge()
except Exception:  # cv_bridge missing or broken: fall back to core/image_codec
    _BRIDGE = None


def decode_ros_image(msg) -> np.ndarray:
    """A sensor_msgs/Image or CompressedImage as RGB uint8 (H, W, 3); ImageDecodeError when it cannot.

    Uses cv_bridge where importable and the core codec (core/image_codec.py) otherwise or when
    cv_bridge rejects the message.
    """
    compressed = hasattr(msg, "format") and not hasattr(msg, "encoding")
    if _BRIDGE is not None:
        try:
            if compressed:
                return np.ascontiguousarray(_BRIDGE.compressed_imgmsg_to_cv2(msg, desired_encoding="rgb8"))
            if int(msg.height) > 0 and int(msg.width) > 0:
                return np.ascontiguousarray(_BRIDGE.imgmsg_to_cv2(msg, desired_encoding="rgb8"))
        except Exception:  # let the core codec decide and explain
            pass
    return decode_compressed(msg) if compressed else decode_image(msg)


def now_header(node, frame_id: str = ""):
    """A std_msgs/Header stamped with the node's clock now (for messages not tied to a camera frame)."""
    from std_msgs.msg import Header

    return Header(stamp=node.get_clock().now().to_msg(), frame_id=frame_id)


def diagnostic_array(node, component: str, level: int, message: str, values: Mapping[str, Any]):
    """A /diagnostics message with one status, named "<node's full name>: <component>" (hardware: the
    camera), its values as strings."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

    status = DiagnosticStatus(
        level=level, name=f"{node.get_fully_qualified_name()}: {component}", message=message, hardware_id="camera",
        values=[KeyValue(key=k, value=str(v)) for k, v in values.items()],
    )  # fmt: skip
    return DiagnosticArray(header=now_header(node), status=[status])


def stamp_to_ns(stamp) -> int:
    """builtin_interfaces/Time (or anything with sec/nanosec) -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(stamp_ns: int):
    """Integer nanoseconds -> builtin_interfaces/Time."""
    from builtin_interfaces.msg import Time

    stamp_ns = int(stamp_ns)
    return Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000)


def tracks_to_msg(tracks, header, class_names: Sequence[str] = ()):
    """Tracks -> stvg_ros_msgs/TrackedObjectArray with `header` (the source image's, unchanged)."""
    from stvg_ros_msgs.msg import TrackedObject, TrackedObjectArray

    out = TrackedObjectArray(header=header)
    for i in range(len(tracks)):
        class_id = int(tracks.class_id[i])
        x1, y1, x2, y2 = (float(v) for v in tracks.xyxy[i])
        out.objects.append(
            TrackedObject(
                track_id=int(tracks.track_id[i]),
                label=class_names[class_id] if 0 <= class_id < len(class_names) else str(class_id),
                class_id=class_id,
                score=float(tracks.score[i]),
                x1=x1,
                y1=y1,
                x2=x2,
                y2=y2,
                detected=bool(tracks.detected[i]),
            )
        )
    return out


def tracks_from_msg(msg):
    """stvg_ros_msgs/TrackedObjectArray -> Tracks."""
    from stvg_ros.core.types import Tracks

    objects = msg.objects
    return Tracks(
        xyxy=np.array([[o.x1, o.y1, o.x2, o.y2] for o in objects], np.float32).reshape(-1, 4),
        track_id=np.array([o.track_id for o in objects], np.int64),
        score=np.array([o.score for o in objects], np.float32),
        class_id=np.array([o.class_id for o in objects], np.int32),
        detected=np.array([o.detected for o in objects], bool),
    )


# --------------------------------------------------------------------------------------------
# DDS transport for camera images

#: Fast DDS profile in config/: a shared-memory segment that holds camera images (the default
#: 512 KB segment cannot hold a 900 KB 640x480 frame, which then goes over UDP and is mostly lost).
DDS_PROFILE_FILE = "fastdds_large_images.xml"
#: Where Fast DDS looks for a profiles file: FASTDDS_* from Fast DDS 3 (ROS 2 Kilted), FASTRTPS_*
#: in Fast DDS 2.x (Jazzy, Humble; Fast DDS 3 still reads it but warns that it is deprecated).
DDS_PROFILE_VARIABLES = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")
#: ROS 2 distributions that ship Fast DDS 2.x.
FAST_DDS_2_DISTROS = ("humble", "iron", "jazzy")
#: Any of these set by the user: their Fast DDS transport choice stands.
DDS_USER_VARIABLES = (*DDS_PROFILE_VARIABLES, "FASTDDS_BUILTIN_TRANSPORTS")


def large_image_dds_settings(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment variables that make Fast DDS carry camera images between processes on one
    machine ({the profile variable this Fast DDS reads: config/fastdds_large_images.xml}), or {} when the environment
    already chooses the transports (see DDS_USER_VARIABLES).

    Nodes never apply this on their own: it replaces the transports of the whole process, so it is
    the user's choice (`stvg-ros up --large-image-dds`, launch argument `large_image_dds`), on by
    default only where stvg_ros itself starts the camera publisher (`stvg-ros demo`, the benchmark).
    """
    environ = os.environ if environ is None else environ
    if any(environ.get(name) for name in DDS_USER_VARIABLES):
        return {}
    from stvg_ros.nodes.graph import config_dir

    profile = str(config_dir() / DDS_PROFILE_FILE)
    return dict.fromkeys(_profile_variables(environ), profile)


def _profile_variables(environ: Mapping[str, str]) -> tuple[str, ...]:
    """The profile variable(s) this machine's Fast DDS reads: by the installed `ros-fastdds` wheel's
    version, else by ROS_DISTRO (set by a ROS install's setup.bash); both when neither says."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        major = int(version("ros-fastdds").split(".")[0])
    except (PackageNotFoundError, ValueError):
        distro = environ.get("ROS_DISTRO", "").strip().lower()
        major = 2 if distro in FAST_DDS_2_DISTROS else 3 if distro else 0
    return {2: DDS_PROFILE_VARIABLES[1:], 3: DDS_PROFILE_VARIABLES[:1]}.get(major, DDS_PROFILE_VARIABLES)


def use_large_image_dds() -> dict[str, str]:
    """Apply `large_image_dds_settings()` to this process (and the processes it starts); call it
    before `rclpy.init`. Returns what it set."""
    settings = large_image_dds_settings()
    os.environ.update(settings)
    return settings


# --------------------------------------------------------------------------------------------
# Lifecycle startup


def autostart(node) -> bool:
    """Configure then activate a lifecycle node (what `ros2 lifecycle set` would do); True on success.

    A failed transition is logged by the node's callback; the node stays unconfigured/inactive and
    can be driven by a lifecycle manager afterwards.
    """
    from rclpy.lifecycle import TransitionCallbackReturn

    if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
        node.get_logger().error("configure failed; the node stays unconfigured (see the message above)")
        return False
    if node.trigger_activate() != TransitionCallbackReturn.SUCCESS:
        node.get_logger().error("activate failed; the node stays inactive (see the message above)")
        return False
    return True


def executor_for(node):
    """The executor a node is spun by, alone or in a graph: a SingleThreadedExecutor, unless the node
    needs concurrent callbacks (`executor_threads` > 1: the grounding node's waiting queries hold one
    thread each), then a MultiThreadedExecutor with that many threads. Camera-rate streams never go
    on a MultiThreadedExecutor (see stream_spinner.py)."""
    from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor

    threads = int(getattr(node, "executor_threads", 1))
    return MultiThreadedExecutor(num_threads=threads) if threads > 1 else SingleThreadedExecutor()


def run_lifecycle_node(make_node: Callable[[], Any], args: list[str] | None = None) -> int:
    """`main()` of a node module: init rclpy, build the node, self-activate when its `autostart`
    parameter is true (a failure is logged; the node stays up for a lifecycle manager), spin until
    SIGINT/SIGTERM. Returns the process exit code (1 when autostart failed and `exit_on_failure` is
    set on the node). The DDS transports are the process environment's (see large_image_dds_settings)."""
    import rclpy
    from rclpy.executors import ExternalShutdownException

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    rclpy.init(args=args)
    node = None
    code = 0
    try:
        node = make_node()
        wants_autostart = node.has_parameter("autostart") and bool(node.get_parameter("autostart").value)
        if wants_autostart and not autostart(node) and getattr(node, "exit_on_failure", False):
            return 1
        executor = executor_for(node)
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.try_shutdown()
    return code
