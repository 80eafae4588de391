"""Start the stvg_ros graph on one camera: tracker -> (overlay) -> grounding.

    ros2 launch stvg_ros grounding.launch.py camera_topic:=/camera/color/image_raw
    ros2 launch stvg_ros grounding.launch.py namespace:=front backend:=http model:=stvg-r1-7b-q4_k_m
    ros2 launch stvg_ros grounding.launch.py params_file:=/path/robot.yaml overlay:=false use_sim_time:=true

The node list comes from stvg_ros.nodes.graph.GRAPH_NODES, the same list `stvg-ros up` starts in
one process. Each node gets, in this order: its own file in the package's config/, the
`params_file` argument, use_sim_time, and for the grounding node the `backend`/`model` arguments.
Every node self-activates (configure + activate) unless its `autostart` parameter is false.

`large_image_dds:=true` points the nodes at config/fastdds_large_images.xml (a shared-memory segment
that holds camera images; with Fast DDS's default 512 KB segment, raw 640x480 images go over UDP
fragments and many are dropped between processes) through FASTDDS_DEFAULT_PROFILES_FILE (Fast DDS 3,
Kilted) or FASTRTPS_DEFAULT_PROFILES_FILE (Fast DDS 2, Jazzy; by ROS_DISTRO), unless the environment already
chooses the Fast DDS transports. It is off by default: it replaces the nodes' transports, and the
camera driver's process needs the same profile (README: Camera images between processes).
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, LogInfo, OpaqueFunction, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from stvg_ros.nodes.dds import large_image_dds_settings
from stvg_ros.nodes.graph import DEFAULT_CAMERA_TOPIC, IMAGE_TOPIC, graph_nodes, node_params_file

TRUE_VALUES = ("true", "1", "yes", "on")

#: (name, default, description, choices or None): declared in this order.
ARGUMENTS = (
    ("camera_topic", DEFAULT_CAMERA_TOPIC, "camera image topic (sensor_msgs/Image) the graph listens to", None),
    ("namespace", "", "namespace of all nodes, e.g. one per camera", None),
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


def _nodes(context, *args, **kwargs):
    camera_topic = _value("camera_topic", context) or DEFAULT_CAMERA_TOPIC
    params_file = _value("params_file", context)
    use_sim_time = _value("use_sim_time", context).lower() in TRUE_VALUES
    overlay = _value("overlay", context).lower() in TRUE_VALUES
    grounding_overrides = {key: _value(key, context) for key in ("backend", "model") if _value(key, context)}
    remappings = [
        (IMAGE_TOPIC, camera_topic),
        (f"{IMAGE_TOPIC}/compressed", camera_topic.rstrip("/") + "/compressed"),
    ]
    actions = [LogInfo(msg=f"stvg_ros: camera {camera_topic}, parameters file {params_file or '(package defaults)'}")]
    for spec in graph_nodes(overlay=overlay):
        own_file = node_params_file(spec)
        parameters = [str(own_file)] if own_file is not None else []
        if params_file:
            parameters.append(params_file)
        parameters.append({"use_sim_time": use_sim_time})
        if spec.name == "grounding_node" and grounding_overrides:
            parameters.append(grounding_overrides)
        actions.append(
            Node(
                package="stvg_ros",
                executable=spec.executable,
                name=spec.name,
                namespace=_value("namespace", context),
                parameters=parameters,
                remappings=remappings,
                ros_arguments=["--log-level", _value("log_level", context)],
                output="screen",
                emulate_tty=True,
            )
        )
    return actions


def generate_launch_description() -> LaunchDescription:
    declared = []
    for name, default, description, choices in ARGUMENTS:
        kwargs = {"choices": choices} if choices else {}
        declared.append(DeclareLaunchArgument(name, default_value=default, description=description, **kwargs))
    wanted = IfCondition(LaunchConfiguration("large_image_dds"))
    dds = [
        SetEnvironmentVariable(name, value, condition=wanted) for name, value in large_image_dds_settings().items()
    ]
    return LaunchDescription([*declared, *dds, OpaqueFunction(function=_nodes)])
