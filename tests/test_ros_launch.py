"""The launch file, the graph list, the parameter files and docs/ros.md agree with each other.

launch_ros is not installed here, so the launch file is compiled and read as an AST (no stubs).
"""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest
import yaml
from stvg_ros.cli.up import parse_overrides
from stvg_ros.nodes import graph
from stvg_ros.nodes.graph import (
    GRAPH_NODES,
    default_params_file,
    graph_nodes,
    merged_params_file,
    ros_arguments,
)

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "stvg_ros"
LAUNCH_FILE = PACKAGE / "launch" / "grounding.launch.py"
REQUIRED_ARGUMENTS = {"camera_topic", "namespace", "params_file", "backend", "model", "use_sim_time", "overlay"}


def _launch_tree() -> ast.Module:
    source = LAUNCH_FILE.read_text()
    compile(source, str(LAUNCH_FILE), "exec")  # a syntax error fails here
    return ast.parse(source)


def _declared_arguments(tree: ast.Module) -> dict[str, tuple]:
    """name -> (default, choices) from the ARGUMENTS table the launch file declares in a loop."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "ARGUMENTS" for t in node.targets):
            # The table is literals plus constants of stvg_ros.nodes.graph.
            table = eval(compile(ast.Expression(node.value), str(LAUNCH_FILE), "eval"), vars(graph))
            return {name: (default, choices) for name, default, _description, choices in table}
    raise AssertionError("grounding.launch.py has no ARGUMENTS table")


def test_launch_file_declares_every_argument_and_builds_nodes_from_the_graph_list():
    tree = _launch_tree()
    arguments = _declared_arguments(tree)
    assert set(arguments) >= REQUIRED_ARGUMENTS
    for name, (default, choices) in arguments.items():
        if choices:
            assert default in choices, f"default of {name} is not one of its choices"
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    # The arguments are declared with DeclareLaunchArgument from the table, and the nodes come
    # from the same list `stvg-ros up` uses.
    assert {"DeclareLaunchArgument", "OpaqueFunction", "graph_nodes", "Node", "LaunchDescription"} <= names
    calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert {"DeclareLaunchArgument", "Node", "graph_nodes"} <= calls
    # Every argument the OpaqueFunction reads is declared.
    read = {
        n.args[0].value
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "_value" and isinstance(n.args[0], ast.Constant)
    }
    read |= {"backend", "model"}  # read through a comprehension over these names
    assert read <= set(arguments)


def test_graph_nodes_are_installed_executables():
    setup_py = (PACKAGE / "setup.py").read_text()
    for node in GRAPH_NODES:
        assert re.search(rf"{node.executable}\s*=\s*{re.escape(node.module)}:main", setup_py), node
        assert (PACKAGE / Path(*node.module.split("."))).with_suffix(".py").is_file(), node
    assert [n.name for n in graph_nodes(overlay=False)] == ["tracker_node", "grounding_node"]
    assert [n.name for n in graph_nodes(overlay=True)] == ["tracker_node", "overlay_node", "grounding_node"]


def test_ros_arguments_mirror_the_launch_file(tmp_path):
    args = ros_arguments(tmp_path / "p.yaml", camera_topic="/cam/image_raw", namespace="front", use_sim_time=True)
    assert args[:3] == ["--ros-args", "--params-file", str(tmp_path / "p.yaml")]
    assert "image:=/cam/image_raw" in args and "image/compressed:=/cam/image_raw/compressed" in args
    assert "__ns:=/front" in args and "use_sim_time:=true" in args


def test_merged_params_file_applies_overrides_per_node(tmp_path):
    merged = merged_params_file(None, {"grounding_node": {"backend": "transformers", "model": None}}, tmp_path)
    data = yaml.safe_load(merged.read_text())
    base = yaml.safe_load(default_params_file().read_text())
    key = next(k for k in data if k.endswith("grounding_node"))
    assert data[key]["ros__parameters"]["backend"] == "transformers"
    # None means "keep the file's value".
    assert data[key]["ros__parameters"]["model"] == base[key]["ros__parameters"]["model"]
    added = merged_params_file(None, {"player_node": {"bag": "/x"}}, tmp_path / "b")
    assert yaml.safe_load(added.read_text())["/**/player_node"]["ros__parameters"] == {"bag": "/x"}
    with pytest.raises(ValueError, match="cannot read"):
        merged_params_file(tmp_path / "missing.yaml")


def test_up_parses_parameter_overrides():
    assert parse_overrides(["grounding_node:num_frames=8", "tracker_node:model=yolo-synth-tiny"]) == {
        "grounding_node": {"num_frames": 8},
        "tracker_node": {"model": "yolo-synth-tiny"},
    }
    with pytest.raises(ValueError, match="NODE:NAME=VALUE"):
        parse_overrides(["num_frames=8"])


def test_parameter_files_and_docs_match_the_schema():
    from stvg_ros.nodes.common import parameters_markdown
    from stvg_ros.nodes.grounding_node import GroundingParams

    fields = {f.name for f in dataclasses.fields(GroundingParams)}
    single = yaml.safe_load((PACKAGE / "config" / "grounding.yaml").read_text())
    assert set(single["/**/grounding_node"]["ros__parameters"]) == fields
    combined = yaml.safe_load(default_params_file().read_text())
    assert set(combined["/**/grounding_node"]["ros__parameters"]) <= fields
    docs = (REPO / "docs" / "ros.md").read_text()
    assert parameters_markdown(GroundingParams) in docs, "regenerate the table in docs/ros.md"
