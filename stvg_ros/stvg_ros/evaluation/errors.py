"""The one error type of the evaluation package."""

from __future__ import annotations


class EvalError(ValueError):
    """Input that cannot be evaluated: a missing or malformed annotation or prediction file,
    predictions for unknown videos, frame indices outside the video, a video that does not
    match its annotation. The message says which file or video, and what is wrong."""
