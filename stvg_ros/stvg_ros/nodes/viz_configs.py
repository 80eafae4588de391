"""RViz 2 and Foxglove configs for one camera of a running graph.

The package's configs (config/stvg_ros.rviz, config/stvg_ros_foxglove.json) name the topics of the
default graph (no namespace, camera on /camera/image_raw). `write_viz_configs` writes copies whose
topics follow a graph's namespace and camera: everything of a camera (image_annotated, tracks,
grounding_result, target) lives under <namespace> for a single-camera graph and under
<namespace>/<camera> in a multi-camera one. `stvg-ros up --viz-dir` and the launch file's `rviz:=true`
use it.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from stvg_ros.nodes.paths import config_dir

RVIZ_FILE, FOXGLOVE_FILE = "stvg_ros.rviz", "stvg_ros_foxglove.json"
#: Topics of the package's configs that belong to the graph (moved under the camera's namespace).
GRAPH_TOPICS = ("/image_annotated", "/tracks", "/grounding_result", "/target")
#: The camera topic the package's configs show.
DEFAULT_CAMERA = "/camera/image_raw"


def topic_map(namespace: str, camera_topic: str) -> dict[str, str]:
    """The package configs' topics -> this camera's (`namespace`: where its nodes' topics are)."""
    root = "/" + namespace.strip("/") if namespace.strip("/") else ""
    return {**{topic: root + topic for topic in GRAPH_TOPICS}, DEFAULT_CAMERA: camera_topic}


def _moved(value, topics: dict[str, str]):
    if isinstance(value, dict):
        return {k: _moved(v, topics) for k, v in value.items()}
    if isinstance(value, list):
        return [_moved(v, topics) for v in value]
    return topics.get(value, value) if isinstance(value, str) else value


def write_viz_configs(out_dir: str | Path, namespace: str, camera_topic: str, label: str = "") -> dict[str, Path]:
    """Write `stvg_ros[_<label>].rviz` and `stvg_ros[_<label>]_foxglove.json` for the camera whose
    topics are under `namespace`; {"rviz": path, "foxglove": path}."""
    topics = topic_map(namespace, camera_topic)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"stvg_ros_{label}" if label else "stvg_ros"
    rviz = _moved(yaml.safe_load((config_dir() / RVIZ_FILE).read_text()), topics)
    foxglove = _moved(json.loads((config_dir() / FOXGLOVE_FILE).read_text()), topics)
    paths = {"rviz": out / f"{stem}.rviz", "foxglove": out / f"{stem}_foxglove.json"}
    header = f"# Written by stvg_ros for the camera {camera_topic} (graph topics under {namespace or '/'}).\n"
    paths["rviz"].write_text(header + yaml.safe_dump(rviz, sort_keys=False))
    paths["foxglove"].write_text(json.dumps(foxglove, indent=2) + "\n")
    return paths


def write_graph_viz_configs(
    out_dir: str | Path, namespace: str, cameras: list | None, camera_topic: str
) -> list[tuple[str, dict[str, Path]]]:
    """(camera name, `write_viz_configs` paths) for each camera of a graph: `cameras` (graph.Camera,
    topics under <namespace>/<name>), or the single camera on `camera_topic` (name "")."""
    root = namespace.strip("/")
    if cameras:
        return [(c.name, write_viz_configs(out_dir, f"{root}/{c.name}", c.topic, label=c.name)) for c in cameras]
    return [("", write_viz_configs(out_dir, root, camera_topic))]
