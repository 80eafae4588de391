"""The node graph that `ros2 launch stvg_ros grounding.launch.py` and `stvg-ros up` both start.

`GRAPH_NODES` is the single list of nodes (name, executable, class, parameters file); the launch
file reads it, and `Graph` / `run_graph` start the same nodes in one process with a
MultiThreadedExecutor. Both apply the same parameters, in the same order: each node's own file in
the package's config/ (tracker.yaml, overlay.yaml, grounding.yaml; a missing file means the
node's defaults), then the user's parameters file, then single overrides (backend, model, `-p`),
and the same remaps, namespace and use_sim_time, so a node behaves the same whichever way it was
started.

This module imports rclpy only inside functions, so the launch file and tests can read the list
without a ROS install.
"""

from __future__ import annotations

import importlib
import logging
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from stvg_ros.nodes.dds import use_large_image_dds
from stvg_ros.nodes.lifecycle import autostart, executor_for, spin_until_shutdown
from stvg_ros.nodes.paths import config_dir

log = logging.getLogger(__name__)

#: The camera topic the graph listens to unless told otherwise (a typical driver's raw image topic).
DEFAULT_CAMERA_TOPIC = "/camera/image_raw"
#: The relative topic every node subscribes to for camera images; remapped to the camera topic.
IMAGE_TOPIC = "image"


@dataclass(frozen=True)
class GraphNode:
    """One node of the graph: how launch runs it and how `stvg-ros up` builds it in-process."""

    name: str  # ROS node name, also its key in parameters files
    executable: str  # `ros2 run stvg_ros <executable>` (setup.py console script)
    module: str  # Python module with the node class
    class_name: str
    #: launch argument / `up` switch that turns the node off ("" = always started)
    switch: str = ""
    #: the node's parameters file in the package's config/ ("" = none)
    params_file: str = ""


GRAPH_NODES: tuple[GraphNode, ...] = (
    GraphNode("tracker_node", "tracker_node", "stvg_ros.nodes.tracker_node", "TrackerNode",
              params_file="tracker.yaml"),
    GraphNode("overlay_node", "overlay_node", "stvg_ros.nodes.overlay_node", "OverlayNode", switch="overlay",
              params_file="overlay.yaml"),
    GraphNode("grounding_node", "grounding_node", "stvg_ros.nodes.grounding_node", "GroundingNode",
              params_file="grounding.yaml"),
)  # fmt: skip

#: The player node `stvg-ros demo` (and tests) add to play a bag into the graph.
PLAYER_NODE = GraphNode("player_node", "player_node", "stvg_ros.nodes.player_node", "PlayerNode")


@dataclass(frozen=True)
class Camera:
    """One camera of a multi-camera graph: a name (a ROS name token: its nodes' namespace and the
    prefix of the grounding node's topics for it) and its image topic."""

    name: str
    topic: str


def parse_cameras(text: str) -> list[Camera]:
    """`front=/front/image_raw,rear=/rear/image_raw` (`stvg-ros up --cameras`, launch `cameras:=`) ->
    cameras; ValueError naming the item for a missing topic, a name that is not a ROS name token
    (letters, digits, _; not starting with a digit) or a name given twice."""
    import re

    cameras: list[Camera] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, topic = (x.strip() for x in item.partition("="))
        if not sep or not topic:
            raise ValueError(f"cameras: {item!r}: expected NAME=TOPIC, e.g. front=/front/image_raw")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"cameras: {name!r} is not a valid camera name (letters, digits and _; no leading digit)")
        if any(c.name == name for c in cameras):
            raise ValueError(f"cameras: {name!r} is given twice")
        cameras.append(Camera(name, topic))
    if not cameras:
        raise ValueError("cameras: no camera given (expected NAME=TOPIC[,NAME=TOPIC...])")
    return cameras


def image_remaps(camera_topic: str, prefix: str = "") -> list[tuple[str, str]]:
    """`<prefix>image` -> the camera topic, and image_transport's compressed sub-topic after it."""
    return [(f"{prefix}{IMAGE_TOPIC}", camera_topic),
            (f"{prefix}{IMAGE_TOPIC}/compressed", camera_topic.rstrip("/") + "/compressed")]  # fmt: skip


@dataclass(frozen=True)
class PlacedNode:
    """A node of a multi-camera graph as it is started: namespace, remaps and parameters of its own."""

    spec: GraphNode
    namespace: str  # absolute ("/" + ...), or "" for the root
    remaps: tuple[tuple[str, str], ...]
    params: tuple[tuple[str, Any], ...]  # set after the parameters files (camera names)

    @property
    def name(self) -> str:
        return self.spec.name

    def ros_args(self) -> list[str]:
        """Node-level `--ros-args` (namespace, remaps, parameters) for a node built in this process."""
        args = ["--ros-args"]
        if self.namespace:
            args += ["-r", f"__ns:={self.namespace}"]
        for src, dst in self.remaps:
            args += ["-r", f"{src}:={dst}"]
        for key, value in self.params:
            args += ["-p", f"{key}:={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"]
        return args


def place_nodes(cameras: list[Camera], namespace: str = "", overlay: bool = True) -> list[PlacedNode]:
    """The graph for several cameras sharing one model: per camera a tracker (and overlay) in
    <namespace>/<camera> on that camera's topic (tracker parameter `camera` set), and one grounding
    node in <namespace> with `cameras` set and <camera>/image remapped to each camera's topic."""
    root = "/" + namespace.strip("/") if namespace.strip("/") else ""
    placed = []
    for camera in cameras:
        for spec in graph_nodes(overlay):
            if spec.name == "grounding_node":
                continue
            params = (("camera", camera.name),) if spec.name == "tracker_node" else ()
            placed.append(PlacedNode(spec, f"{root}/{camera.name}", tuple(image_remaps(camera.topic)), params))
    grounding = next(spec for spec in GRAPH_NODES if spec.name == "grounding_node")
    remaps = tuple(r for camera in cameras for r in image_remaps(camera.topic, f"{camera.name}/"))
    placed.append(PlacedNode(grounding, root, remaps, (("cameras", [c.name for c in cameras]),)))
    return placed


def graph_nodes(overlay: bool = True) -> list[GraphNode]:
    """The nodes to start; `overlay=False` leaves the overlay node out."""
    switches = {"overlay": overlay}
    return [node for node in GRAPH_NODES if not node.switch or switches.get(node.switch, True)]


def node_params_file(spec: GraphNode) -> Path | None:
    """The node's own parameters file in config/, or None when it has none (defaults apply)."""
    if not spec.params_file:
        return None
    path = config_dir() / spec.params_file
    return path if path.is_file() else None


def _load_params(path: Path) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise ValueError(f"cannot read parameters file {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ValueError(f"cannot read parameters file {path}: not valid YAML{where}: "
                         f"{getattr(exc, 'problem', None) or exc}") from exc  # fmt: skip
    if not isinstance(data, dict) or not all(isinstance(v, dict) or v is None for v in data.values()):
        raise ValueError(f"parameters file {path} must map node names to {{ros__parameters: ...}}")
    for key, section in data.items():
        if not isinstance((section or {}).get("ros__parameters") or {}, dict):
            raise ValueError(f"parameters file {path}: {key}: ros__parameters must map parameter names to values")
    return data


def check_graph_parameters(params: Mapping[str, Mapping[str, Any]], nodes: Iterable[GraphNode] = GRAPH_NODES) -> None:
    """ValueError naming the node and the parameter for a node the graph does not have, an unknown
    parameter, a value of the wrong type or a value the node would refuse (`problems()`), so a
    typo in `--params` or `-p` is reported before anything starts instead of by a node that fails."""
    import dataclasses

    from stvg_ros.nodes.params import SCHEMAS, from_values, range_problem

    known = {spec.name for spec in nodes}
    for node_name, values in params.items():
        if node_name == "**":
            continue
        if node_name not in known:
            raise ValueError(f"no node {node_name!r} in the graph (nodes: {', '.join(sorted(known))})")
        schema = SCHEMAS.get(node_name)
        if schema is None:
            continue
        try:
            instance = from_values(schema, values)
        except ValueError as exc:
            raise ValueError(f"{node_name}: {exc}") from None
        problems = [range_problem(f, getattr(instance, f.name)) for f in dataclasses.fields(schema)]
        problems = [p for p in problems if p] + list(getattr(instance, "problems", lambda: [])())
        if problems:
            raise ValueError(f"{node_name}: {'; '.join(problems)}")


def _section(data: dict, node_name: str) -> dict:
    """The ros__parameters dict of `node_name` in `data` (matched on the last name component)."""
    key = next((k for k in data if str(k).rstrip("/").split("/")[-1] == node_name), f"/**/{node_name}")
    section = data.get(key) or {}
    data[key] = section
    params = section.get("ros__parameters") or {}
    section["ros__parameters"] = params
    return params


def graph_parameters(
    user_file: str | Path | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    nodes: Iterable[GraphNode] = GRAPH_NODES,
) -> dict[str, dict[str, Any]]:
    """{node name: {parameter: value}} as the graph applies them (no ROS needed).

    The nodes' own config/ files, then `user_file` (a ROS parameters file for any of the nodes),
    then `overrides` ({node name: {parameter: value}}; None values are skipped): the order of the
    launch file's `parameters=[...]`. Raises ValueError when a file cannot be read.
    """
    merged: dict = {}
    sources = [p for p in (node_params_file(spec) for spec in nodes) if p is not None]
    if user_file:
        sources.append(Path(user_file))
    for source in sources:
        for key, section in _load_params(source).items():
            _section(merged, str(key).rstrip("/").split("/")[-1]).update((section or {}).get("ros__parameters") or {})
    for node_name, params in (overrides or {}).items():
        _section(merged, node_name).update({k: v for k, v in params.items() if v is not None})
    return {str(k).rstrip("/").split("/")[-1]: v["ros__parameters"] for k, v in merged.items()}


def merged_params_file(
    user_file: str | Path | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    directory: str | Path | None = None,
    nodes: Iterable[GraphNode] = GRAPH_NODES,
) -> Path:
    """`graph_parameters(...)` as one ROS parameters file (keys `/**/<node>`, valid in any namespace),
    written to `directory` (a temporary folder by default)."""
    params = graph_parameters(user_file, overrides, nodes)
    data = {("/**" if name == "**" else f"/**/{name}"): {"ros__parameters": values} for name, values in params.items()}
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
    for src, dst in [*(image_remaps(camera_topic) if camera_topic else []), *remaps]:
        args += ["-r", f"{src}:={dst}"]
    if namespace:
        args += ["-r", f"__ns:={'/' + namespace.strip('/')}"]
    if use_sim_time:
        args += ["-p", "use_sim_time:=true"]
    return args


class Graph:
    """Nodes built in this process, each spun by its own executor on its own thread.

    One executor per node (`nodes.lifecycle.executor_for`), as separate processes would have: a node's
    callbacks (the grounding node's queries and services, the overlay's images) never delay another
    node's camera frames, and each executor waits on a small set of entities (rclpy rebuilds the
    wait set on every spin, so one executor over every node's services and timers is slow to
    dispatch).

    Call `build()` after `rclpy.init(args=ros_arguments(...))`, then `start()`; `stop()` destroys
    the nodes. Extra nodes (a player, a client) can be added with `add()` after `build()`.
    """

    def __init__(self, nodes: Iterable[GraphNode | PlacedNode], autostart: bool = True) -> None:
        self.specs = list(nodes)  # a PlacedNode is built with its own namespace, remaps and parameters
        self.autostart = autostart
        self.nodes: list = []
        self.failed: list[str] = []  # names of nodes whose configure/activate failed
        self._executors: list = []
        self._threads: list[threading.Thread] = []
        self._started = False
        self._stopped = threading.Event()

    def build(self) -> Graph:
        for item in self.specs:
            spec = item.spec if isinstance(item, PlacedNode) else item
            cls = getattr(importlib.import_module(spec.module), spec.class_name)
            self.nodes.append(cls(cli_args=item.ros_args()) if isinstance(item, PlacedNode) else cls())
        if self.autostart:
            for spec, node in zip(self.specs, self.nodes, strict=True):
                if hasattr(node, "trigger_configure") and not autostart(node):
                    self.failed.append(node.get_fully_qualified_name() if isinstance(spec, PlacedNode) else spec.name)
        for node in list(self.nodes):
            self._add_executor(node)
        return self

    def _add_executor(self, node) -> None:
        executor = executor_for(node)
        executor.add_node(node)
        self._executors.append(executor)
        if self._started:
            self._start_thread(executor, node.get_name())

    def add(self, node) -> None:
        """Spin another node (e.g. a client) with the graph, on its own executor."""
        self.nodes.append(node)
        self._add_executor(node)

    def node(self, name: str):
        return next(n for n in self.nodes if n.get_name() == name)

    def _start_thread(self, executor, name: str) -> None:
        thread = threading.Thread(target=self._spin, args=(executor,), name=f"stvg-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def _spin(self, executor) -> None:
        try:
            spin_until_shutdown(executor)  # a SIGTERM racing the executor's wait is a normal end too
        finally:
            self._stopped.set()  # one executor ending (context shut down) ends the graph

    def start(self) -> Graph:
        """Spin every node's executor on a background thread."""
        self._started = True
        for executor, node in zip(self._executors, self.nodes, strict=True):
            self._start_thread(executor, node.get_name())
        return self

    def spin(self) -> None:
        """Start (if not yet) and block until the context shuts down (SIGINT/SIGTERM)."""
        if not self._started:
            self.start()
        try:
            while not self._stopped.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        # An executor ended because SIGINT/SIGTERM shut the context down: rclpy's signal thread may still be
        # finishing that shutdown; tearing the executors down meanwhile crashed the process (SIGSEGV).
        import rclpy

        deadline = time.monotonic() + 5.0
        while rclpy.ok() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop every executor and wait for its thread, then destroy the nodes (each stops its own
        threads and frees its model first), newest first."""
        import rclpy

        if rclpy.ok():  # stopped by the caller: wake the executors
            for executor in self._executors:
                executor.shutdown(timeout_sec=timeout_s)
        # else the context is already shut down (SIGINT/SIGTERM): the executors end by themselves, and
        # shutting them down here raced rclpy's signal thread, which was still waking their guard
        # conditions (SIGSEGV in `stvg-ros up` on Ctrl-C, about 1 run in 20 on a loaded machine)
        for thread in self._threads:
            thread.join(timeout=timeout_s)
        for executor in self._executors:  # nothing spins any more: free their thread pools
            executor.shutdown(timeout_sec=timeout_s)
        for node in reversed(self.nodes):
            try:
                node.destroy_node()
            except Exception as exc:
                log.warning("destroying %s failed: %s", getattr(node, "get_name", lambda: "?")(), exc)
        self.nodes.clear()
        self._executors.clear()
        self._threads.clear()


def run_graph(
    params_file: str | Path | None = None,
    camera_topic: str | None = DEFAULT_CAMERA_TOPIC,
    namespace: str = "",
    use_sim_time: bool = False,
    overlay: bool = True,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    remaps: Iterable[tuple[str, str]] = (),
    large_image_dds: bool = False,
    cameras: list[Camera] | None = None,
) -> int:
    """Start the graph in this process and spin until SIGINT/SIGTERM; 0 on a clean stop.

    `cameras` (two or more): one tracker (and overlay) per camera and one grounding node for all
    (`place_nodes`); `camera_topic` is then unused.

    `large_image_dds` applies the package's Fast DDS profile to this process (see
    nodes.dds.large_image_dds_settings); otherwise the environment's transports stand.

    Returns 1 when a node failed to configure or activate (it keeps running so its lifecycle
    services can be used, and the failure is logged), 0 otherwise.
    """
    import rclpy

    merged = merged_params_file(params_file, overrides)
    if large_image_dds and not use_large_image_dds():
        log.info("--large-image-dds: the environment already chooses the Fast DDS transports; keeping them")
    if cameras:
        rclpy.init(args=ros_arguments(merged, use_sim_time=use_sim_time, remaps=remaps))
        graph = Graph(place_nodes(cameras, namespace, overlay))
    else:
        rclpy.init(args=ros_arguments(merged, camera_topic, namespace, use_sim_time, remaps))
        graph = Graph(graph_nodes(overlay))
    try:
        graph.build()
        names = ", ".join(node.get_fully_qualified_name() for node in graph.nodes)
        where = ", ".join(f"{c.name} {c.topic}" for c in cameras) if cameras else camera_topic
        log.info("graph up: %s (cameras: %s)", names, where)
        if graph.failed:
            log.error(
                "not active: %s (see the errors above); fix the parameters and use the lifecycle services "
                "(configure, activate), or restart",
                ", ".join(graph.failed),
            )
        graph.spin()
    finally:
        graph.stop()
        if rclpy.ok():
            rclpy.shutdown()
    return 1 if graph.failed else 0


def parse_overrides(items: list[str]) -> dict[str, dict]:
    """['node:name=value', ...] (`-p` of `stvg-ros up` / `eval run`) -> {node: {name: value}}, YAML-typed values."""
    overrides: dict[str, dict] = {}
    for item in items:
        target, sep, value = item.partition("=")
        node, colon, name = target.partition(":")
        if not sep or not colon or not node or not name:
            raise ValueError(f"--param {item!r}: expected NODE:NAME=VALUE, e.g. grounding_node:num_frames=8")
        overrides.setdefault(node, {})[name] = yaml.safe_load(value) if value else ""
    return overrides
