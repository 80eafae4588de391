"""Start the stvg_ros graph on one camera: tracker -> (overlay) -> grounding.

    ros2 launch stvg_ros grounding.launch.py camera_topic:=/camera/color/image_raw
    ros2 launch stvg_ros grounding.launch.py namespace:=front backend:=http model:=stvg-r1-7b-q4_k_m
    ros2 launch stvg_ros grounding.launch.py params_file:=/path/robot.yaml overlay:=false use_sim_time:=true
    ros2 launch stvg_ros grounding.launch.py autostart:=false   # a lifecycle manager brings them up
    ros2 launch stvg_ros grounding.launch.py cameras:=front=/front/image_raw,rear=/rear/image_raw

`cameras` (NAME=TOPIC,...) runs several cameras on one model: a tracker (and overlay) per camera in
<namespace>/NAME, and one grounding node in <namespace> serving NAME/ground for each camera
(stvg_ros.nodes.graph.place_nodes, as `stvg-ros up --cameras`); `camera_topic` is then unused.

The node list comes from stvg_ros.nodes.graph.GRAPH_NODES, the same list `stvg-ros up` starts in
one process. Each node gets, in this order: its own file in the package's config/, the
`params_file` argument, use_sim_time and `autostart: false`, and for the grounding node the
`backend`/`model` arguments.

Lifecycle: every node is a launch_ros `LifecycleNode` whose own `autostart` parameter is false, so
launch (or a lifecycle manager) drives its transitions, which launch sees as StateTransition events.
With the launch argument `autostart:=true` (default) launch configures each node, and activates it
once it reaches `inactive` from `configuring` (one OnStateTransition handler per node, used once: a
later cleanup + configure by a manager does not re-activate it). With `autostart:=false` the nodes
stay unconfigured for a lifecycle manager (`ros2 lifecycle set /tracker_node configure`, ...).
The transitions are requested with ChangeState events (RegisterEventHandler(OnStateTransition) +
EmitEvent(ChangeState)) rather than `LifecycleNode(autostart=...)`: Kilted has that argument, but
Jazzy only from launch_ros 0.26.7 (April 2025; earlier releases refuse the keyword), and older
releases take a plain bool, not a launch argument. The events work on every Jazzy and Kilted release.

`large_image_dds:=true` points the nodes at config/fastdds_large_images.xml (a shared-memory segment
that holds camera images; with Fast DDS's default 512 KB segment, raw 640x480 images go over UDP
fragments and many are dropped between processes) through FASTDDS_DEFAULT_PROFILES_FILE (Fast DDS 3,
Kilted) or FASTRTPS_DEFAULT_PROFILES_FILE (Fast DDS 2, Jazzy; by ROS_DISTRO), unless the environment already
chooses the Fast DDS transports. It is off by default: it replaces the nodes' transports, and the
camera driver's process needs the same profile (README: Camera images between processes).
"""

from launch import LaunchDescription
from launch.actions import (
    DeclareLaunchArgument,
    EmitEvent,
    LogInfo,
    OpaqueFunction,
    RegisterEventHandler,
    SetEnvironmentVariable,
)
from launch.conditions import IfCondition
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from lifecycle_msgs.msg import Transition

from stvg_ros.nodes.dds import large_image_dds_settings
from stvg_ros.nodes.graph import (
    DEFAULT_CAMERA_TOPIC,
    graph_nodes,
    image_remaps,
    node_params_file,
    parse_cameras,
    place_nodes,
)

TRUE_VALUES = ("true", "1", "yes", "on")

#: (name, default, description, choices or None): declared in this order.
ARGUMENTS = (
    ("camera_topic", DEFAULT_CAMERA_TOPIC, "camera image topic (sensor_msgs/Image) the graph listens to", None),
    ("namespace", "", "namespace of all nodes, e.g. one per camera", None),
    ("cameras", "", "several cameras, one model: NAME=TOPIC,NAME=TOPIC (empty: the one camera_topic)", None),
    ("params_file", "", "ROS parameters file applied to every node after its config/<node>.yaml (empty: none)", None),
    (
        "backend",
        "",
        "grounding backend, overrides the parameters files (empty: keep them)",
        ["", "llama_cpp", "transformers", "http"],
    ),
    ("model", "", "grounding model: manifest name or file path, overrides the parameters files (empty: keep)", None),
    ("use_sim_time", "false", "use /clock (rosbag replay with --clock)", ["true", "false"]),
    ("overlay", "true", "start the overlay node (annotated image with the IDs the model sees)", ["true", "false"]),
    ("log_level", "info", "log level of all nodes", ["debug", "info", "warn", "error"]),
    ("rviz", "false", "start RViz 2 per camera with a config whose topics follow namespace/cameras", ["true", "false"]),
    (
        "autostart",
        "true",
        "launch configures and activates the nodes (false: they stay unconfigured for a lifecycle manager)",
        ["true", "false"],
    ),
    (
        "large_image_dds",
        "false",
        "use the package's Fast DDS profile (16 MB shared memory) for raw camera images between processes; "
        "give the camera driver's process the same profile",
        ["true", "false"],
    ),
)


def _value(name: str, context) -> str:
    return LaunchConfiguration(name).perform(context).strip()


def _change_state(node: LifecycleNode, transition: int) -> EmitEvent:
    """Ask launch_ros to run `transition` on `node` (through its change_state service)."""
    return EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node), transition_id=transition))


def _bring_up(node: LifecycleNode) -> list:
    """Configure `node`, then activate it when configure has brought it to inactive (once)."""
    activate_when_configured = RegisterEventHandler(
        OnStateTransition(
            target_lifecycle_node=node,
            start_state="configuring",
            goal_state="inactive",
            entities=[_change_state(node, Transition.TRANSITION_ACTIVATE)],
            handle_once=True,
        )
    )
    return [activate_when_configured, _change_state(node, Transition.TRANSITION_CONFIGURE)]


def _nodes(context, *args, **kwargs):
    camera_topic = _value("camera_topic", context) or DEFAULT_CAMERA_TOPIC
    params_file = _value("params_file", context)
    use_sim_time = _value("use_sim_time", context).lower() in TRUE_VALUES
    overlay = _value("overlay", context).lower() in TRUE_VALUES
    autostart = _value("autostart", context).lower() in TRUE_VALUES
    grounding_overrides = {key: _value(key, context) for key in ("backend", "model") if _value(key, context)}
    namespace = _value("namespace", context)
    if cameras := _value("cameras", context):
        # (spec, namespace, remappings, parameters of its own) per node: one tracker/overlay per camera
        placed = [(p.spec, p.namespace, list(p.remaps), dict(p.params))
                  for p in place_nodes(parse_cameras(cameras), namespace, overlay)]  # fmt: skip
        where = f"cameras {cameras}"
    else:
        placed = [(spec, namespace, image_remaps(camera_topic), {}) for spec in graph_nodes(overlay=overlay)]
        where = f"camera {camera_topic}"
    actions = [LogInfo(msg=f"stvg_ros: {where}, parameters file {params_file or '(package defaults)'}")]
    for spec, node_namespace, remappings, own_params in placed:
        own_file = node_params_file(spec)
        parameters = [str(own_file)] if own_file is not None else []
        if params_file:
            parameters.append(params_file)
        # autostart false: the node does not bring itself up; launch or a lifecycle manager does.
        parameters.append({"use_sim_time": use_sim_time, "autostart": False, **own_params})
        if spec.name == "grounding_node" and grounding_overrides:
            parameters.append(grounding_overrides)
        node = LifecycleNode(
            package="stvg_ros",
            executable=spec.executable,
            name=spec.name,
            namespace=node_namespace,
            parameters=parameters,
            remappings=remappings,
            ros_arguments=["--log-level", _value("log_level", context)],
            output="screen",
            emulate_tty=True,
        )
        actions.append(node)
        if autostart:
            actions.extend(_bring_up(node))
    if _value("rviz", context).lower() in TRUE_VALUES:
        actions.extend(_rviz(namespace, camera_topic, cameras))
    return actions


def _rviz(namespace: str, camera_topic: str, cameras: str) -> list:
    """An RViz 2 per camera, each with the package's config moved to that camera's topics."""
    import tempfile

    from stvg_ros.nodes.viz_configs import write_graph_viz_configs

    out_dir = tempfile.mkdtemp(prefix="stvg-rviz-")
    views = write_graph_viz_configs(out_dir, namespace, parse_cameras(cameras) if cameras else None, camera_topic)
    return [
        Node(package="rviz2", executable="rviz2", name=f"rviz_{label}" if label else "rviz", output="screen",
             arguments=["-d", str(paths["rviz"])])
        for label, paths in views
    ]  # fmt: skip


def generate_launch_description() -> LaunchDescription:
    declared = []
    for name, default, description, choices in ARGUMENTS:
        kwargs = {"choices": choices} if choices else {}
        declared.append(DeclareLaunchArgument(name, default_value=default, description=description, **kwargs))
    wanted = IfCondition(LaunchConfiguration("large_image_dds"))
    dds = [SetEnvironmentVariable(name, value, condition=wanted) for name, value in large_image_dds_settings().items()]
    return LaunchDescription([*declared, *dds, OpaqueFunction(function=_nodes)])
