"""Declare and read a node's parameter schema (nodes/params.py) as ROS parameters (with descriptors:
choices, ranges, read-only), and check and apply changes made while the node runs (`ParameterChanges`)."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from typing import Any

from stvg_ros.nodes.params import Schema, convert, field_default, field_kind, is_live, range_problem

#: Why a parameter that is not live cannot change while the node is configured.
READ_ON_CONFIGURE = "read on configure: deactivate and cleanup, set it, configure again"


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


def _descriptor(field: dataclasses.Field, kind: type, element: type | None, name: str, lifecycle: bool):
    """The ParameterDescriptor of a schema field: type, description, range, read-only, and on a
    lifecycle node whether a change takes effect at once (`additional_constraints`, shown by
    `ros2 param describe`)."""
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

    choices = field.metadata.get("choices")
    read_only = bool(field.metadata.get("read_only", False))
    if read_only:
        when = "read-only: set it at start (parameters file, launch, -p)"
    else:
        when = "live: a change takes effect at once" if is_live(field) else READ_ON_CONFIGURE if lifecycle else ""
    descriptor = ParameterDescriptor(
        name=name,
        type=_ros_type(kind, element).value,
        description=field.metadata.get("description", "")
        + (f" (one of: {', '.join(map(str, choices))})" if choices else ""),
        additional_constraints=when,
        read_only=read_only,
        # Lets an integer in a YAML file set a float parameter (e.g. `conf: 1`); ParameterChanges
        # checks the type and the range of such a value.
        dynamic_typing=kind is float,
    )
    if (limits := field.metadata.get("limits")) is not None and kind is int:
        descriptor.integer_range = [IntegerRange(from_value=int(limits[0]), to_value=int(limits[1]), step=0)]
    elif limits is not None and kind is float:
        descriptor.floating_point_range = [
            FloatingPointRange(from_value=float(limits[0]), to_value=float(limits[1]), step=0.0)
        ]
    return descriptor


def declare_parameters(node, schema_cls: type[Schema], prefix: str = "") -> Schema:
    """Declare every field of `schema_cls` on `node` and return an instance with the values.

    Values come from parameter overrides (YAML `--params-file`, launch) where given, else the
    field defaults. An int given for a float field is accepted. Raises ValueError naming the node
    and the parameter when a value is outside the field's `choices` or range, or of the wrong type;
    the node is then destroyed (it is registered with its context, and its own `destroy_node`
    expects a finished `__init__`), so the caller only has to report the error.
    """
    from rclpy.exceptions import ParameterException

    hints = typing.get_type_hints(schema_cls)
    name = node.get_name()
    try:
        for field in dataclasses.fields(schema_cls):
            kind, element = field_kind(field, hints)
            default = field_default(field)
            ros_type = _ros_type(kind, element)
            # An empty list cannot say its element type: declare by type, fall back to the default.
            initial = ros_type if (kind is list and not default) else default
            descriptor = _descriptor(field, kind, element, prefix + field.name, hasattr(node, "trigger_configure"))
            node.declare_parameter(prefix + field.name, initial, descriptor)
        return read_parameters(node, schema_cls, prefix)
    except (ParameterException, ValueError, TypeError) as exc:
        super(type(node), node).destroy_node()  # the rclpy part only: the node's own fields do not exist yet
        raise ValueError(f"{name}: bad parameter: {' '.join(str(exc).split())}") from None


def read_parameters(node, schema_cls: type[Schema], prefix: str = "") -> Schema:
    """Current values of already-declared schema parameters (e.g. re-read on configure); typed and
    checked like `params.from_values`, and against the fields' ranges."""
    from rclpy.exceptions import ParameterUninitializedException

    hints = typing.get_type_hints(schema_cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(schema_cls):
        try:
            value = node.get_parameter(prefix + field.name).value
        except ParameterUninitializedException:
            value = None
        values[field.name] = convert(field, *field_kind(field, hints), value, name=prefix + field.name)
        if problem := range_problem(field, values[field.name], prefix + field.name):
            raise ValueError(problem)
    return schema_cls(**values)


def lifecycle_state(node) -> str:
    """The label of a lifecycle node's current state: 'unconfigured', 'inactive', 'active', ... (rclpy
    has no public getter; its own lifecycle services read the same state machine)."""
    return str(node._state_machine.current_state[1])


class ParameterChanges:
    """A lifecycle node's on-set and post-set parameter callbacks for its schema.

    On set (before anything is stored; the whole request is refused with the reason): a value of
    the wrong type, outside the field's `choices` or range, one that `schema.problems()` objects to,
    and a change of a parameter that is not live while the node is configured (inactive or active:
    it is read on configure). After set: the live changes of a configured node go to
    `apply({name: value})`, which puts them into the running node; every accepted change is logged.
    Names outside the schema (use_sim_time, qos_overrides) are left to rclpy.
    """

    def __init__(self, node, schema_cls: type, apply: Callable[[dict[str, Any]], None], prefix: str = "") -> None:
        from rcl_interfaces.msg import SetParametersResult

        self._node, self._schema, self._apply, self._prefix = node, schema_cls, apply, prefix
        self._result = SetParametersResult
        hints = typing.get_type_hints(schema_cls)
        self._fields = {prefix + f.name: (f, *field_kind(f, hints)) for f in dataclasses.fields(schema_cls)}
        node.add_on_set_parameters_callback(self._check)
        node.add_post_set_parameters_callback(self._applied)

    def _converted(self, parameters) -> dict[str, Any]:
        """{field name: typed value} of the schema parameters among `parameters`; ValueError says why not."""
        changes = {}
        for parameter in parameters:
            if parameter.name not in self._fields:
                continue
            field, kind, element = self._fields[parameter.name]
            if parameter.value is None:
                raise ValueError(f"{parameter.name} cannot be unset")
            value = convert(field, kind, element, parameter.value, name=parameter.name)
            if problem := range_problem(field, value, parameter.name):
                raise ValueError(problem)
            changes[field.name] = value
        return changes

    def problem(self, parameters) -> str:
        """Why `parameters` cannot be set now ("" when they can)."""
        try:
            changes = self._converted(parameters)
        except ValueError as exc:
            return str(exc)
        if not changes:
            return ""
        if lifecycle_state(self._node) != "unconfigured":
            fixed = [self._prefix + name for name in changes if not is_live(self._fields[self._prefix + name][0])]
            if fixed:
                return f"{', '.join(fixed)}: {READ_ON_CONFIGURE}"
        if hasattr(self._schema, "problems"):
            try:
                current = read_parameters(self._node, self._schema, self._prefix)
            except ValueError:
                return ""  # the stored values are already bad: configure says so
            new = dataclasses.replace(current, **changes).problems()
            if added := [p for p in new if p not in current.problems()]:
                return "; ".join(added)
        return ""

    def _check(self, parameters):
        problem = self.problem(parameters)
        return self._result(successful=not problem, reason=problem)

    def _applied(self, parameters) -> None:
        try:
            changes = self._converted(parameters)
        except ValueError:  # not reached: _check refused it
            return
        if not changes:
            return
        state = lifecycle_state(self._node)
        shown = ", ".join(f"{self._prefix}{k}={v!r}" for k, v in changes.items())
        if state in ("inactive", "active"):
            self._apply(changes)
            self._node.get_logger().info(f"parameters changed: {shown} (in effect now)")
        else:
            self._node.get_logger().info(f"parameters changed: {shown} (read on configure)")
