"""The grounding node's parameters -> what the grounding core needs, without ROS.

One home for the mapping, used by the grounding node (nodes/grounding_node.py) and by the offline
evaluation runner (evaluation/runner.py), so both load the same backend with the same settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stvg_ros.grounding.pipeline import GroundingConfig
from stvg_ros.perception.sam2_refine import Sam2Config, check_available

#: Node parameters handed to `make_backend` / `resolve_model_files` under the same name.
BACKEND_PARAMETERS = ("model", "mmproj", "endpoint", "n_ctx", "n_threads", "n_gpu_layers", "flash_attn")
DEFAULT_BACKEND = "llama_cpp"
DEFAULT_QUERY_TIMEOUT_S = 120.0


def query_timeout_s(values: Mapping[str, Any]) -> float:
    """The node's `query_timeout_s` (the per-query deadline of the backend and the pipeline)."""
    return float(values.get("query_timeout_s", DEFAULT_QUERY_TIMEOUT_S))


def backend_kwargs(values: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments of `make_backend` / `resolve_model_files` for the node's parameters
    (parameters not given keep the backend's defaults)."""
    kwargs = {key: values[key] for key in BACKEND_PARAMETERS if key in values}
    kwargs["timeout_s"] = query_timeout_s(values)
    return kwargs


def sam2_config(values: Mapping[str, Any]) -> Sam2Config:
    """Sam2Config for the node's `sam2_refine`, `sam2_checkpoint`, `sam2_image_size` (off by default)."""
    defaults = Sam2Config()
    return Sam2Config(
        enabled=bool(values.get("sam2_refine", defaults.enabled)),
        checkpoint=str(values.get("sam2_checkpoint", defaults.checkpoint)),
        image_size=int(values.get("sam2_image_size", defaults.image_size)),
    )


def grounding_config(values: Mapping[str, Any]) -> GroundingConfig:
    """GroundingConfig for the node's parameters (others keep GroundingConfig's defaults).

    Raises Sam2Unavailable when `sam2_refine` is on but the `sam2` package or the checkpoint file is
    missing (checked without loading the model), so the node's configure fails with that message.
    """
    defaults = GroundingConfig()
    sam2 = sam2_config(values)
    if sam2.enabled:
        check_available(sam2)
    return GroundingConfig(
        num_frames=int(values.get("num_frames", defaults.num_frames)),
        max_new_tokens=int(values.get("max_new_tokens", defaults.max_new_tokens)),
        reasoning=bool(values.get("reasoning", defaults.reasoning)),
        timeout_s=query_timeout_s(values),
        sam2=sam2,
    )


def grounding_settings(values: Mapping[str, Any]) -> tuple[str, dict[str, Any], GroundingConfig]:
    """(backend name, make_backend keyword arguments, GroundingConfig) from the grounding node's
    parameters ({name: value}, as `nodes.graph.graph_parameters` or the node's schema gives them)."""
    return str(values.get("backend", DEFAULT_BACKEND)), backend_kwargs(values), grounding_config(values)
