"""The launch file, the graph list, the parameter files and docs/ros.md agree with each other.

launch / launch_ros are not installed here (no PyPI wheels), so the launch file is read as an AST and
also executed against a small stand-in of the launch API it uses (argument declaration, the
OpaqueFunction, launch_ros LifecycleNode with the keyword-only signature of the real one, the
ChangeState / StateTransition events and their handlers), whose lifecycle transitions a small event
loop plays as launch would (`_play`).
"""

from __future__ import annotations

import ast
import dataclasses
import re
import runpy
import sys
import types
from collections import deque
from pathlib import Path

import pytest
import yaml
from lifecycle_msgs.msg import Transition

from stvg_ros.cli.up import parse_overrides
from stvg_ros.nodes import graph
from stvg_ros.nodes.graph import (
    GRAPH_NODES,
    graph_nodes,
    graph_parameters,
    merged_params_file,
    node_params_file,
    ros_arguments,
)

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "stvg_ros"
LAUNCH_FILE = PACKAGE / "launch" / "grounding.launch.py"
REQUIRED_ARGUMENTS = {
    "camera_topic", "namespace", "params_file", "backend", "model", "use_sim_time", "overlay", "autostart"
}  # fmt: skip


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
    assert {"DeclareLaunchArgument", "OpaqueFunction", "graph_nodes", "LifecycleNode", "LaunchDescription"} <= names
    calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert {"DeclareLaunchArgument", "LifecycleNode", "graph_nodes", "ChangeState", "OnStateTransition"} <= calls
    plain = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "Node"]
    packages = [next((ast.literal_eval(k.value) for k in n.keywords if k.arg == "package"), None) for n in plain]
    assert packages in ([], ["rviz2"]), "plain Nodes: launch could neither see nor drive their lifecycle"
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


def test_merged_params_file_applies_node_files_then_the_user_file_then_overrides(tmp_path):
    grounding_defaults = yaml.safe_load((PACKAGE / "config" / "grounding.yaml").read_text())["/**/grounding_node"]
    user = tmp_path / "robot.yaml"
    user.write_text(yaml.safe_dump({"/front/grounding_node": {"ros__parameters": {"num_frames": 8, "queue_size": 5}}}))
    merged = merged_params_file(user, {"grounding_node": {"queue_size": 1, "model": None}}, tmp_path / "out")
    data = yaml.safe_load(merged.read_text())
    params = data["/**/grounding_node"]["ros__parameters"]
    assert params["num_frames"] == 8  # the user's file over config/grounding.yaml
    assert params["queue_size"] == 1  # an override over both
    assert params["model"] == grounding_defaults["ros__parameters"]["model"]  # None keeps the file's value
    assert params["backend"] == grounding_defaults["ros__parameters"]["backend"]  # untouched defaults stay
    assert graph_parameters(user)["grounding_node"]["num_frames"] == 8
    added = merged_params_file(None, {"player_node": {"bag": "/x"}}, tmp_path / "b")
    assert yaml.safe_load(added.read_text())["/**/player_node"]["ros__parameters"] == {"bag": "/x"}
    with pytest.raises(ValueError, match="cannot read"):
        merged_params_file(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ValueError, match="must map node names"):
        graph_parameters(bad)


# --------------------------------------------------------------------------------------------
# The launch file executed against a stand-in of the launch API


class _Entity:
    def __init__(self, *args, **kwargs) -> None:
        self.args, self.kwargs = args, kwargs


class _DeclareLaunchArgument(_Entity):
    def __init__(self, name, *, default_value=None, description=None, choices=None, **kwargs) -> None:
        super().__init__(name, default_value=default_value, description=description, choices=choices, **kwargs)
        self.name, self.default_value, self.choices = name, default_value, choices


class _OpaqueFunction(_Entity):
    def __init__(self, *, function, args=None, kwargs=None) -> None:
        super().__init__(function=function)
        self.function = function


class _SetEnvironmentVariable(_Entity):
    def __init__(self, name, value, *, condition=None) -> None:
        super().__init__(name, value, condition=condition)
        self.name, self.value, self.condition = name, value, condition


class _IfCondition:
    def __init__(self, predicate_expression) -> None:
        self.predicate = predicate_expression

    def evaluate(self, context) -> bool:
        value = self.predicate.perform(context).strip().lower()
        assert value in ("true", "false", "1", "0"), value  # launch's IfCondition accepts these only
        return value in ("true", "1")


class _LaunchConfiguration:
    def __init__(self, variable_name, *, default=None) -> None:
        self.name = variable_name

    def perform(self, context) -> str:
        return context.launch_configurations[self.name]  # KeyError: an undeclared argument


class _Node(_Entity):
    def __init__(self, *, executable, package=None, name=None, namespace=None, exec_name=None, parameters=None,
                 remappings=None, ros_arguments=None, arguments=None, **kwargs) -> None:  # fmt: skip
        super().__init__(executable=executable, package=package, name=name, namespace=namespace,
                         parameters=parameters, remappings=remappings, ros_arguments=ros_arguments,
                         arguments=arguments, **kwargs)  # fmt: skip


class _LifecycleNode(_Node):
    """launch_ros LifecycleNode of Jazzy up to launch_ros 0.26.6: `name` and `namespace` required and
    keyword-only, no `autostart` (Kilted and Jazzy 0.26.7 add `autostart: bool = False`; the older
    Node/ExecuteProcess refuse an unknown keyword)."""

    def __init__(self, *, name, namespace, **kwargs) -> None:
        if "autostart" in kwargs:
            raise TypeError("LifecycleNode() got an unexpected keyword argument 'autostart' (Jazzy < 0.26.7)")
        super().__init__(name=name, namespace=namespace, **kwargs)


class _RegisterEventHandler(_Entity):
    def __init__(self, event_handler, **kwargs) -> None:
        super().__init__(event_handler, **kwargs)
        self.event_handler = event_handler


class _EmitEvent(_Entity):
    def __init__(self, *, event, **kwargs) -> None:
        super().__init__(event=event, **kwargs)
        self.event = event


#: The transitions ChangeState accepts (its valid_transitions).
_REQUESTABLE = {
    getattr(Transition, f"TRANSITION_{name}")
    for name in ("CREATE", "CONFIGURE", "CLEANUP", "ACTIVATE", "DEACTIVATE", "UNCONFIGURED_SHUTDOWN",
                 "INACTIVE_SHUTDOWN", "ACTIVE_SHUTDOWN", "DESTROY")
}  # fmt: skip


class _ChangeState:
    """launch_ros.events.lifecycle.ChangeState: which nodes (a matcher over LifecycleNode actions), which transition."""

    def __init__(self, *, lifecycle_node_matcher, transition_id) -> None:
        if transition_id not in _REQUESTABLE:
            raise ValueError(f"given transition_id of {transition_id!r}")
        self.lifecycle_node_matcher, self.transition_id = lifecycle_node_matcher, transition_id


class _StateTransition(types.SimpleNamespace):
    """launch_ros.events.lifecycle.StateTransition: action, transition, start_state, goal_state (labels)."""


class _OnStateTransition:
    """launch_ros.event_handlers.OnStateTransition (keyword-only; extra keywords go to EventHandler)."""

    def __init__(self, *, entities, target_lifecycle_node=None, transition=None, start_state=None, goal_state=None,
                 matcher=None, handle_once=False) -> None:  # fmt: skip
        if not isinstance(target_lifecycle_node, (_LifecycleNode, type(None))):
            raise RuntimeError("OnStateTransition requires a 'LifecycleNode' action as the target")
        self.entities, self.handle_once = list(entities), handle_once
        self.matches = matcher or (
            lambda event: isinstance(event, _StateTransition)
            and target_lifecycle_node in (None, event.action)
            and all(want is None or want == got for want, got in ((transition, event.transition),
                    (start_state, event.start_state), (goal_state, event.goal_state)))
        )  # fmt: skip


def _matches_action(target_action):
    return lambda action: action is target_action


#: (start state, transition) -> (transition label, intermediate state, goal state) of a node whose
#: callbacks succeed (the rcl lifecycle state machine's primary path).
_TRANSITIONS = {
    ("unconfigured", Transition.TRANSITION_CONFIGURE): ("configure", "configuring", "inactive"),
    ("inactive", Transition.TRANSITION_ACTIVATE): ("activate", "activating", "active"),
    ("active", Transition.TRANSITION_DEACTIVATE): ("deactivate", "deactivating", "inactive"),
    ("inactive", Transition.TRANSITION_CLEANUP): ("cleanup", "cleaningup", "unconfigured"),
}


class _Play:
    """Launch's handling of the actions: event handlers registered, events emitted in order, a ChangeState
    turned into the node's transition (its change_state service), each state change into
    StateTransition events that the handlers see."""

    def __init__(self, actions: list) -> None:
        self.nodes = [a for a in actions if isinstance(a, _LifecycleNode)]
        self.state = {n.kwargs["name"]: "unconfigured" for n in self.nodes}
        self.requested: dict[str, list[int]] = {n.kwargs["name"]: [] for n in self.nodes}
        self.refused: list[tuple[str, int]] = []
        self.handlers: list[_OnStateTransition] = []
        for action in actions:
            self.run(action)

    def run(self, action) -> None:
        if isinstance(action, _RegisterEventHandler):
            self.handlers.append(action.event_handler)
        elif isinstance(action, _EmitEvent):
            self.emit(action.event)

    def emit(self, event) -> None:
        events = deque([event])
        while events:
            event = events.popleft()
            if isinstance(event, _ChangeState):
                for node in (n for n in self.nodes if event.lifecycle_node_matcher(n)):
                    events.extend(self._transition(node, event.transition_id))
            for handler in [h for h in self.handlers if h.matches(event)]:
                if handler.handle_once:
                    self.handlers.remove(handler)
                for entity in handler.entities:
                    if isinstance(entity, _EmitEvent):
                        events.append(entity.event)
                    else:
                        self.run(entity)

    def _transition(self, node, transition_id: int) -> list[_StateTransition]:
        name = node.kwargs["name"]
        self.requested[name].append(transition_id)
        start = self.state[name]
        if (start, transition_id) not in _TRANSITIONS:
            self.refused.append((name, transition_id))
            return []
        label, middle, goal = _TRANSITIONS[(start, transition_id)]
        self.state[name] = goal
        return [
            _StateTransition(action=node, transition=label, start_state=start, goal_state=middle),
            _StateTransition(action=node, transition=label, start_state=middle, goal_state=goal),
        ]


def _stub_launch_modules(monkeypatch) -> None:
    modules = {
        "launch": {"LaunchDescription": lambda entities=None: list(entities or [])},
        "launch.actions": {
            "DeclareLaunchArgument": _DeclareLaunchArgument,
            "EmitEvent": _EmitEvent,
            "LogInfo": _Entity,
            "OpaqueFunction": _OpaqueFunction,
            "RegisterEventHandler": _RegisterEventHandler,
            "SetEnvironmentVariable": _SetEnvironmentVariable,
        },
        "launch.conditions": {"IfCondition": _IfCondition},
        "launch.events": {"matches_action": _matches_action},
        "launch.substitutions": {"LaunchConfiguration": _LaunchConfiguration},
        "launch_ros": {},
        "launch_ros.actions": {"Node": _Node, "LifecycleNode": _LifecycleNode},
        "launch_ros.event_handlers": {"OnStateTransition": _OnStateTransition},
        "launch_ros.events": {},
        "launch_ros.events.lifecycle": {"ChangeState": _ChangeState, "StateTransition": _StateTransition},
    }
    for name, attributes in modules.items():
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        monkeypatch.setitem(sys.modules, name, module)


def _description(monkeypatch) -> list:
    """The entities generate_launch_description() returns, against the stand-in launch API."""
    _stub_launch_modules(monkeypatch)
    return runpy.run_path(str(LAUNCH_FILE))["generate_launch_description"]()


def _actions(monkeypatch, **arguments: str) -> list:
    """Run generate_launch_description() and its OpaqueFunction with `arguments` given on the command
    line; the OpaqueFunction's actions."""
    description = _description(monkeypatch)
    declared = [e for e in description if isinstance(e, _DeclareLaunchArgument)]
    unknown = set(arguments) - {d.name for d in declared}
    assert not unknown, f"undeclared launch arguments {unknown}"
    context = types.SimpleNamespace(launch_configurations={d.name: d.default_value for d in declared} | arguments)
    for d in declared:  # what launch checks before running anything
        assert not d.choices or context.launch_configurations[d.name] in d.choices, d.name
    (opaque,) = [e for e in description if isinstance(e, _OpaqueFunction)]
    return opaque.function(context)


def _launch(monkeypatch, **arguments: str) -> list[_Node]:
    """The nodes the launch file starts with `arguments` given on the command line."""
    return [a for a in _actions(monkeypatch, **arguments) if isinstance(a, _Node)]


def test_launch_file_defaults_start_the_graph_with_the_package_parameters(monkeypatch):
    nodes = _launch(monkeypatch)
    assert [n.kwargs["name"] for n in nodes] == [spec.name for spec in graph_nodes(overlay=True)]
    for node, spec in zip(nodes, graph_nodes(overlay=True), strict=True):
        kw = node.kwargs
        assert (kw["package"], kw["executable"], kw["namespace"]) == ("stvg_ros", spec.executable, "")
        assert ("image", "/camera/image_raw") in kw["remappings"]
        assert ("image/compressed", "/camera/image_raw/compressed") in kw["remappings"]
        own = node_params_file(spec)
        assert kw["parameters"][: 1 if own else 0] == ([str(own)] if own else [])
        assert kw["parameters"][-1] == {"use_sim_time": False, "autostart": False}
        assert kw["ros_arguments"] == ["--log-level", "info"] and kw["arguments"] is None
    grounding = nodes[-1].kwargs["parameters"]
    assert grounding[0].endswith("config/grounding.yaml")


def test_launch_arguments_reach_the_nodes(monkeypatch, tmp_path):
    robot = tmp_path / "robot.yaml"
    nodes = _launch(
        monkeypatch, camera_topic="/front/color/image_raw", namespace="front", params_file=str(robot),
        backend="http", model="stvg-r1-7b-q4_k_m", use_sim_time="true", overlay="false", log_level="debug",
    )  # fmt: skip
    assert [n.kwargs["name"] for n in nodes] == ["tracker_node", "grounding_node"]
    for node in nodes:
        kw = node.kwargs
        assert kw["namespace"] == "front"
        assert ("image", "/front/color/image_raw") in kw["remappings"]
        assert ("image/compressed", "/front/color/image_raw/compressed") in kw["remappings"]
        assert str(robot) in kw["parameters"] and {"use_sim_time": True, "autostart": False} in kw["parameters"]
        assert kw["ros_arguments"] == ["--log-level", "debug"]
    grounding = nodes[-1].kwargs["parameters"]
    assert grounding[-1] == {"backend": "http", "model": "stvg-r1-7b-q4_k_m"}  # last: wins over the files
    assert grounding.index(str(robot)) < len(grounding) - 1
    assert {"backend": "http", "model": "stvg-r1-7b-q4_k_m"} not in nodes[0].kwargs["parameters"]


def test_launch_drives_each_lifecycle_node_to_active_by_default(monkeypatch):
    actions = _actions(monkeypatch)
    nodes = [a for a in actions if isinstance(a, _Node)]
    assert nodes and all(isinstance(n, _LifecycleNode) for n in nodes)
    for node in nodes:  # the node itself does not self-activate: launch drives it
        assert {"use_sim_time": False, "autostart": False} in node.kwargs["parameters"]
    play = _Play(actions)
    assert play.state == {n.kwargs["name"]: "active" for n in nodes}
    configure, activate = Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_ACTIVATE
    # each node got exactly its own configure then activate (a matcher naming one node), none refused
    assert play.requested == {n.kwargs["name"]: [configure, activate] for n in nodes} and not play.refused
    # a lifecycle manager's later cleanup + configure is not followed by another activation from launch
    tracker = next(n for n in nodes if n.kwargs["name"] == "tracker_node")
    for transition in (Transition.TRANSITION_DEACTIVATE, Transition.TRANSITION_CLEANUP, configure):
        play.emit(_ChangeState(lifecycle_node_matcher=_matches_action(tracker), transition_id=transition))
    assert play.state["tracker_node"] == "inactive" and play.state["grounding_node"] == "active"


def test_autostart_false_leaves_every_node_unconfigured_for_a_lifecycle_manager(monkeypatch):
    actions = _actions(monkeypatch, autostart="false", overlay="false")
    nodes = [a for a in actions if isinstance(a, _Node)]
    assert [n.kwargs["name"] for n in nodes] == ["tracker_node", "grounding_node"]
    assert all(isinstance(n, _LifecycleNode) for n in nodes)
    for node in nodes:
        assert {"use_sim_time": False, "autostart": False} in node.kwargs["parameters"]
    assert not [a for a in actions if isinstance(a, (_EmitEvent, _RegisterEventHandler))]
    play = _Play(actions)
    assert set(play.state.values()) == {"unconfigured"} and not any(play.requested.values())
    # what a lifecycle manager then does reaches the node
    grounding = nodes[-1]
    for transition in (Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_ACTIVATE):
        play.emit(_ChangeState(lifecycle_node_matcher=_matches_action(grounding), transition_id=transition))
    assert play.state == {"tracker_node": "unconfigured", "grounding_node": "active"}


def test_the_lifecycle_node_stand_in_has_the_real_signature():
    """`_Play` and the assertions above mean something only if the stand-ins refuse what launch_ros does."""
    with pytest.raises(TypeError):
        _LifecycleNode(executable="x", name="n")  # namespace is required
    with pytest.raises(TypeError, match="autostart"):
        _LifecycleNode(executable="x", name="n", namespace="", autostart=True)
    with pytest.raises(RuntimeError):
        _OnStateTransition(entities=[], target_lifecycle_node=_Node(executable="x"))
    with pytest.raises(ValueError):
        _ChangeState(lifecycle_node_matcher=lambda _: True, transition_id=Transition.TRANSITION_CALLBACK_SUCCESS)
    node = _LifecycleNode(executable="x", name="n", namespace="")
    play = _Play([node])
    play.emit(_ChangeState(lifecycle_node_matcher=_matches_action(node), transition_id=Transition.TRANSITION_ACTIVATE))
    assert play.state == {"n": "unconfigured"} and play.refused == [("n", Transition.TRANSITION_ACTIVATE)]


def test_launch_file_uses_the_large_image_profile_only_when_asked_and_the_environment_does_not_choose(monkeypatch):
    from stvg_ros.nodes.dds import DDS_USER_VARIABLES, large_image_dds_settings
    from stvg_ros.nodes.graph import config_dir

    for name in DDS_USER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    description = _description(monkeypatch)
    profiles = [e for e in description if isinstance(e, _SetEnvironmentVariable)]
    # the variable this machine's Fast DDS reads (FASTDDS_* on Kilted, FASTRTPS_* on Jazzy)
    assert {p.name for p in profiles} == set(large_image_dds_settings()) and profiles
    for profile in profiles:
        assert profile.value == str(config_dir() / "fastdds_large_images.xml") and Path(profile.value).is_file()
        # set before the nodes start: launch applies actions in order
        opaque = next(i for i, e in enumerate(description) if isinstance(e, _OpaqueFunction))
        assert description.index(profile) < opaque
        # only with large_image_dds:=true (default false: the nodes keep the environment's transports)
        declared = {d.name: d.default_value for d in description if isinstance(d, _DeclareLaunchArgument)}
        assert declared["large_image_dds"] == "false"
        context = types.SimpleNamespace(launch_configurations=declared)
        assert profile.condition.evaluate(context) is False
        context.launch_configurations = {**declared, "large_image_dds": "true"}
        assert profile.condition.evaluate(context) is True
    monkeypatch.setenv("FASTDDS_BUILTIN_TRANSPORTS", "UDPv4")  # the user's choice stands
    assert not [e for e in _description(monkeypatch) if isinstance(e, _SetEnvironmentVariable)]


def test_up_parses_parameter_overrides():
    assert parse_overrides(["grounding_node:num_frames=8", "tracker_node:model=yolo-synth-tiny"]) == {
        "grounding_node": {"num_frames": 8},
        "tracker_node": {"model": "yolo-synth-tiny"},
    }
    with pytest.raises(ValueError, match="NODE:NAME=VALUE"):
        parse_overrides(["num_frames=8"])


def test_parameter_files_and_docs_match_the_schema():
    from stvg_ros.nodes.params import GroundingParams, parameters_markdown

    fields = {f.name for f in dataclasses.fields(GroundingParams)}
    single = yaml.safe_load((PACKAGE / "config" / "grounding.yaml").read_text())
    assert set(single["/**/grounding_node"]["ros__parameters"]) == fields
    assert set(graph_parameters()["grounding_node"]) == fields
    docs = (REPO / "docs" / "ros.md").read_text()
    assert parameters_markdown(GroundingParams) in docs, "regenerate the table in docs/ros.md"


@pytest.mark.parametrize(
    ("schema", "doc"),
    [
        ("GroundingParams", "README.md"),
        ("GroundingParams", "docs/ros.md"),
        ("TrackerParams", "README.md"),
        ("TrackerParams", "docs/perception.md"),
        ("OverlayParams", "README.md"),
        ("OverlayParams", "docs/perception.md"),
        ("PlayerParams", "docs/synth.md"),
    ],
)
def test_every_parameter_table_is_generated_from_its_schema(schema, doc):
    """Each node's table in README.md and docs/ is `parameters_markdown` of its schema (nodes/params.py)."""
    from stvg_ros.nodes import params

    table = params.parameters_markdown(getattr(params, schema))
    assert table in (REPO / doc).read_text(), f"{doc}: paste stvg_ros.nodes.params.parameters_markdown({schema})"


def test_cameras_start_a_tracker_and_overlay_per_camera_and_one_grounding_node(monkeypatch):
    actions = _actions(monkeypatch, cameras="front=/front/image_raw, rear=/rear/image_raw", namespace="robot")
    nodes = [a for a in actions if isinstance(a, _Node)]
    assert [(n.kwargs["namespace"], n.kwargs["name"]) for n in nodes] == [
        ("/robot/front", "tracker_node"), ("/robot/front", "overlay_node"),
        ("/robot/rear", "tracker_node"), ("/robot/rear", "overlay_node"), ("/robot", "grounding_node"),
    ]  # fmt: skip
    front_tracker, rear_overlay, grounding = nodes[0].kwargs, nodes[3].kwargs, nodes[-1].kwargs
    assert ("image", "/front/image_raw") in front_tracker["remappings"]
    assert ("image/compressed", "/rear/image_raw/compressed") in rear_overlay["remappings"]
    assert {"use_sim_time": False, "autostart": False, "camera": "front"} in front_tracker["parameters"]
    assert {"use_sim_time": False, "autostart": False, "cameras": ["front", "rear"]} in grounding["parameters"]
    assert {("front/image", "/front/image_raw"), ("rear/image", "/rear/image_raw"),
            ("rear/image/compressed", "/rear/image_raw/compressed")} <= set(grounding["remappings"])  # fmt: skip
    assert sum(isinstance(a, _EmitEvent) for a in actions) == len(nodes)  # launch brings each one up


@pytest.mark.parametrize(
    ("text", "problem"),
    [("front", "expected NAME=TOPIC"), ("1cam=/a", "not a valid camera name"), ("a=/x,a=/y", "given twice"),
     (" , ", "no camera given")],
)  # fmt: skip
def test_bad_cameras_are_refused_with_the_reason(monkeypatch, text, problem):
    from stvg_ros.nodes.graph import parse_cameras

    with pytest.raises(ValueError, match=problem):
        parse_cameras(text)
    with pytest.raises(ValueError, match=problem):  # the launch file refuses it the same way
        _actions(monkeypatch, cameras=text)


def test_rviz_true_starts_one_rviz_per_camera_on_that_cameras_topics(monkeypatch):
    actions = _actions(monkeypatch, cameras="front=/front/image_raw,rear=/rear/image_raw", namespace="robot", rviz="true")
    rviz = [a for a in actions if isinstance(a, _Node) and a.kwargs["executable"] == "rviz2"]
    assert [r.kwargs["name"] for r in rviz] == ["rviz_front", "rviz_rear"]
    config = yaml.safe_load(Path(rviz[1].kwargs["arguments"][1]).read_text())
    topics = {d["Topic"]["Value"] for d in config["Visualization Manager"]["Displays"]}
    assert topics == {"/robot/rear/image_annotated", "/rear/image_raw"}
    assert not [a for a in _actions(monkeypatch) if isinstance(a, _Node) and a.kwargs["executable"] == "rviz2"]
