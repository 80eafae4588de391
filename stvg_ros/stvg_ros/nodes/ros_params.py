"""Declare and read a node's parameter schema (nodes/params.py) as ROS parameters (with descriptors)."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from stvg_ros.nodes.params import Schema, convert, field_default, field_kind


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


def declare_parameters(node, schema_cls: type[Schema], prefix: str = "") -> Schema:
    """Declare every field of `schema_cls` on `node` and return an instance with the values.

    Values come from parameter overrides (YAML `--params-file`, launch) where given, else the
    field defaults. An int given for a float field is accepted. Raises ValueError naming the
    parameter when a value is outside the field's `choices`.
    """
    from rcl_interfaces.msg import ParameterDescriptor

    hints = typing.get_type_hints(schema_cls)
    for field in dataclasses.fields(schema_cls):
        kind, element = field_kind(field, hints)
        default = field_default(field)
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
    return read_parameters(node, schema_cls, prefix)


def read_parameters(node, schema_cls: type[Schema], prefix: str = "") -> Schema:
    """Current values of already-declared schema parameters (e.g. re-read on configure); typed and
    checked like `params.from_values`."""
    from rclpy.exceptions import ParameterUninitializedException

    hints = typing.get_type_hints(schema_cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(schema_cls):
        try:
            value = node.get_parameter(prefix + field.name).value
        except ParameterUninitializedException:
            value = None
        values[field.name] = convert(field, *field_kind(field, hints), value, name=prefix + field.name)
    return schema_cls(**values)
