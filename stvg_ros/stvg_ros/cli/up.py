"""`stvg-ros up`: start the node graph (tracker, overlay, grounding) in this process.

The same nodes, parameters files, remaps and namespace as `ros2 launch stvg_ros grounding.launch.py`,
for machines without the `ros2` CLI. Runs until Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import argparse
import sys

from stvg_ros.nodes.graph import (
    DEFAULT_CAMERA_TOPIC,
    check_graph_parameters,
    graph_parameters,
    parse_cameras,
    parse_overrides,
    run_graph,
)
from stvg_ros.nodes.params import VLM_BACKENDS


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "up",
        help="start the node graph in this process (what the launch file starts)",
        description="Start tracker, overlay and grounding nodes in one process (one executor thread per node).",
    )
    parser.add_argument(
        "--params",
        metavar="FILE",
        help="ROS parameters file applied after each node's config/<node>.yaml (sections for any node)",
    )
    parser.add_argument("--camera-topic", default=DEFAULT_CAMERA_TOPIC, help="camera image topic (sensor_msgs/Image)")
    parser.add_argument("--namespace", default="", help="namespace of all nodes (e.g. one per camera)")
    parser.add_argument(
        "--cameras",
        metavar="NAME=TOPIC,...",
        help="several cameras, one model: a tracker (and overlay) per camera in <namespace>/NAME and one "
        "grounding node serving NAME/ground for each (replaces --camera-topic)",
    )
    parser.add_argument("--backend", choices=VLM_BACKENDS, help="grounding backend")
    parser.add_argument("--model", help="grounding model: manifest name or path")
    parser.add_argument(
        "--viz-dir",
        metavar="DIR",
        help="write RViz and Foxglove configs whose topics follow --namespace/--cameras into DIR (one pair per camera)",
    )
    parser.add_argument("--use-sim-time", action="store_true", help="use /clock (bag replay)")
    parser.add_argument("--no-overlay", action="store_true", help="do not start the overlay node")
    parser.add_argument(
        "--large-image-dds",
        action="store_true",
        help="use the package's Fast DDS profile (16 MB shared memory) in this process, for raw camera images "
        "from other processes; the camera's process needs it too (README: Camera images between processes)",
    )
    parser.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="NODE:NAME=VALUE",
        help="override one parameter, e.g. grounding_node:num_frames=8 (YAML value; repeatable)",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    try:
        overrides = parse_overrides(args.param)
        grounding = overrides.setdefault("grounding_node", {})
        if args.backend:
            grounding["backend"] = args.backend
        if args.model:
            grounding["model"] = args.model
        # a missing or malformed --params file, a typo in a name, a wrong value: say so before ROS starts
        check_graph_parameters(graph_parameters(args.params, overrides))
        cameras = parse_cameras(args.cameras) if args.cameras else None
    except ValueError as exc:
        print(f"stvg-ros up: error: {exc}", file=sys.stderr)
        return 2
    if args.viz_dir:
        _write_viz_configs(args.viz_dir, args.namespace, cameras, args.camera_topic)
    return run_graph(
        params_file=args.params,
        camera_topic=args.camera_topic,
        namespace=args.namespace,
        use_sim_time=args.use_sim_time,
        overlay=not args.no_overlay,
        overrides=overrides,
        large_image_dds=args.large_image_dds,
        cameras=cameras,
    )


def _write_viz_configs(out_dir: str, namespace: str, cameras, camera_topic: str) -> None:
    """One RViz + Foxglove config per camera, topics under that camera's namespace; paths printed."""
    from stvg_ros.nodes.viz_configs import write_graph_viz_configs

    for _, paths in write_graph_viz_configs(out_dir, namespace, cameras, camera_topic):
        print(f"rviz2 -d {paths['rviz']}   # Foxglove: import {paths['foxglove']}", flush=True)
