"""Evaluation: annotation loaders, the STVG metrics, prediction files, the offline runner, rosbag
replay, reports and synthetic benchmark sets.

The metrics live in `metrics.py` and nowhere else; everything that scores (the CLI, the runner,
replay, benchmarks) calls them. Frame-index conventions are documented in `loaders.py` and
docs/evaluation.md.
"""

from stvg_ros.evaluation.errors import EvalError

__all__ = ["EvalError"]
