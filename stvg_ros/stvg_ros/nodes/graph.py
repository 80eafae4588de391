"""The node graph that `ros2 launch stvg_ros grounding.launch.py` and `stvg-ros up` both start.

`GRAPH_NODES` is the single list of nodes (name, executable, class); the launch file reads it, and
`run_graph` starts the same nodes in one process with a MultiThreadedExecutor. Both apply one ROS
parameters file (config/stvg_ros.yaml by default) and the same remaps, namespace and use_sim_time,
through ordinary `--ros-args`, so a node behaves the same whichever way it was started.

This module imports rclpy only inside functions, so the launch file and tests can read the list
without a ROS install.
"""

from __future__ import annotations

import importlib
import logging
import tempfile
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

#: The camera topic the graph listens to unless told otherwise (a typical driver's raw image topic).
DEFAULT_CAMERA_TOPIC = "/camera/image_raw"
#: The relative topic every node subscribes to for camera images; remapped to the camera topic.
IMAGE_TOPIC = "image"
#: The combined parameters file of the graph (config/ of the package).
PARAMS_FILE_NAME = "stvg_ros.yaml"


@dataclass(frozen=True)
class GraphNode:
    """One node of the graph: how launch runs it and how `stvg-ros up` builds it in-process."""

    name: str  # ROS node name, also its key in the parameters file
    executable: str  # `ros2 run stvg_ros <executable>` (setup.py console script)
    module: str  # Python module with the node class
    class_name: str
    #: launch argument / `up` switch that turns the node off ("" = always started)
    switch: str = ""


GRAPH_NODES: tuple[GraphNode, ...] = (
    GraphNode("tracker_node", "tracker_node", "stvg_ros.nodes.tracker_node", "TrackerNode"),
    GraphNode("overlay_node", "overlay_node", "stvg_ros.nodes.overlay_node", "OverlayNode", switch="overlay"),
    GraphNode("grounding_node", "grounding_node", "stvg_ros.nodes.grounding_node", "GroundingNode"),
)

#: The player node `stvg-ros demo` (and tests) add to play a bag into the graph.
PLAYER_NODE = GraphNode("player_node", "player_node", "stvg_ros.nodes.player_node", "PlayerNode")


def graph_nodes(overlay: bool = True) -> list[GraphNode]:
    """The nodes to start; `overlay=False` leaves the overlay node out."""
    switches = {"overlay": overlay}
    return [node for node in GRAPH_NODES if not node.switch or switches.get(node.switch, True)]


def default_params_file() -> Path:
    """config/stvg_ros.yaml of this checkout, else of the installed package share."""
    here = Path(__file__).resolve().parents[2] / "config" / PARAMS_FILE_NAME  # <pkg>/config in a checkout
    if here.is_file():
        return here
    try:
        from ament_index_python.packages import get_package_share_directory

        shared = Path(get_package_share_directory("stvg_ros")) / "config" / PARAMS_FILE_NAME
        if shared.is_file():
            return shared
    except Exception:
        pass
    raise FileNotFoundError(f"cannot find {PARAMS_FILE_NAME} in {here.parent} or the stvg_ros package share")


def merged_params_file(
    base: str | Path | None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    directory: str | Path | None = None,
) -> Path:
    """A parameters file: `base` (default: config/stvg_ros.yaml) with per-node `overrides` applied.

    `overrides` maps node names to {parameter: value}. The result uses `/**/<node>` keys so it
    applies in any namespace; it is written to `directory` (a temporary folder by default).
    """
    base_path = Path(base) if base else default_params_file()
    try:
        data = yaml.safe_load(base_path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read parameters file {base_path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"parameters file {base_path} must map node names to ros__parameters")
    for node_name, params in (overrides or {}).items():
        key = next((k for k in data if str(k).rstrip("/").split("/")[-1] == node_name), f"/**/{node_name}")
        section = data.setdefault(key, {}) or {}
        data[key] = section
        section.setdefault("ros__parameters", {}).update({k: v for k, v in params.items() if v is not None})
    out_dir = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="stvg-params-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "params.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def ros_arguments(
    params_file: str | Path,
    camera_topic: str | None = None,
    namespace: str = "",
    use_sim_time: bool = False,
    remaps: Iterable[tuple[str, str]] = (),
) -> list[str]:
    """The `--ros-args` that give in-process nodes what the launch file gives its nodes."""
    args = ["--ros-args", "--params-file", str(params_file)]
    if camera_topic:
        args += ["-r", f"{IMAGE_TOPIC}:={camera_topic}"]
        # image_transport's compressed sub-topic follows the camera topic.
        args += ["-r", f"{IMAGE_TOPIC}/compressed:={camera_topic.rstrip('/')}/compressed"]
    for src, dst in remaps:
        args += ["-r", f"{src}:={dst}"]
    if namespace:
        args += ["-r", f"__ns:={'/' + namespace.strip('/')}"]
    if use_sim_time:
        args += ["-p", "use_sim_time:=true"]
    return args


def _autostart(node) -> bool:
    """Configure and activate a lifecycle node (a plain node needs nothing); False when it fails."""
    if not hasattr(node, "trigger_configure"):
        return True
    from rclpy.lifecycle import TransitionCallbackReturn

    if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
        node.get_logger().error("configure failed; the node stays unconfigured (see the error above)")
        return False
    if node.trigger_activate() != TransitionCallbackReturn.SUCCESS:
        node.get_logger().error("activate failed; the node stays inactive (see the error above)")
        return False
    return True


class Graph:
    """Nodes built in this process and spun by one MultiThreadedExecutor in a background thread.

    Call `start()` after `rclpy.init(args=ros_arguments(...))`; `stop()` destroys the nodes.
    Extra nodes (a player, a client) can be added with `add()` before or after `start()`.
    """

    def __init__(self, nodes: Iterable[GraphNode], autostart: bool = True) -> None:
        self.specs = list(nodes)
        self.autostart = autostart
        self.nodes: list = []
        self.failed: list[str] = []  # names of nodes whose configure/activate failed
        self._executor = None
        self._thread: threading.Thread | None = None

    def build(self) -> Graph:
        from rclpy.executors import MultiThreadedExecutor

        for spec in self.specs:
            cls = getattr(importlib.import_module(spec.module), spec.class_name)
            node = cls()
            self.nodes.append(node)
        if self.autostart:
            for spec, node in zip(self.specs, self.nodes, strict=True):
                if not _autostart(node):
                    self.failed.append(spec.name)
        # Each waiting query holds a thread (see GroundingNode.executor_threads); the rest is for
        # image/track callbacks, timers and lifecycle services.
        threads = 4 + sum(int(getattr(node, "executor_threads", 1)) for node in self.nodes)
        self._executor = MultiThreadedExecutor(num_threads=threads)
        for node in self.nodes:
            self._executor.add_node(node)
        return self

    def add(self, node) -> None:
        """Spin another node (e.g. a client) with the graph."""
        self.nodes.append(node)
        self._executor.add_node(node)

    def node(self, name: str):
        return next(n for n in self.nodes if n.get_name() == name)

    def spin(self) -> None:
        """Spin in the calling thread until the context shuts down (SIGINT/SIGTERM)."""
        from rclpy.executors import ExternalShutdownException

        try:
            self._executor.spin()
        except (KeyboardInterrupt, ExternalShutdownException):
            pass

    def start(self) -> Graph:
        self._thread = threading.Thread(target=self.spin, name="stvg-graph", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._executor is not None:
            self._executor.shutdown(timeout_sec=timeout_s)
        for node in reversed(self.nodes):
            try:
                node.destroy_node()
            except Exception as exc:
                log.warning("destroying %s failed: %s", getattr(node, "get_name", lambda: "?")(), exc)
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
        self.nodes.clear()


def run_graph(
    params_file: str | Path | None = None,
    camera_topic: str | None = DEFAULT_CAMERA_TOPIC,
    namespace: str = "",
    use_sim_time: bool = False,
    overlay: bool = True,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    remaps: Iterable[tuple[str, str]] = (),
) -> int:
    """Start the graph in this process and spin until SIGINT/SIGTERM; 0 on a clean stop.

    Returns 1 when a node failed to configure or activate (it keeps running so its lifecycle
    services can be used, and the failure is logged), 0 otherwise.
    """
    import rclpy

    merged = merged_params_file(params_file, overrides)
    rclpy.init(args=ros_arguments(merged, camera_topic, namespace, use_sim_time, remaps))
    graph = Graph(graph_nodes(overlay))
    try:
        graph.build()
        names = ", ".join(spec.name for spec in graph.specs)
        log.info("graph up: %s (camera %s, namespace %r)", names, camera_topic, namespace or "/")
        graph.spin()
    finally:
        graph.stop()
        if rclpy.ok():
            rclpy.shutdown()
    return 1 if graph.failed else 0
