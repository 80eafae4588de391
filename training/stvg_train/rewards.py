"""GRPO rewards for STVG-R1 (METHOD.md §7) as plain functions.

Each reward has TRL's signature `reward(completions, **dataset_columns) -> list[float]`: the dataset
columns of the prepared samples (see `stvg_train.data`) arrive as keyword arguments, one value per
completion. Answers are read with the robot's parser (`stvg_ros.core.answer`, strict mode, which is
the official parser), so training and deployment read the same grammar.

- `iou_reward`     temporal IoU of the predicted and GT spans (seconds) + 1 if the ID is right; [0, 2]
- `format_reward`  1 if the completion is exactly `<think>…</think> <answer>…</answer>`; {0, 1}
- `spatial_reward` optional continuous spatial term: mean box IoU of the chosen track with the GT boxes
                   on the sampled frames inside both spans; [0, 1]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from stvg_ros.core.answer import ParsedAnswer, is_well_formatted, parse_answer
from stvg_ros.evaluation.metrics import box_iou, temporal_iou_seconds

RewardFunction = Callable[..., list[float]]


def completion_text(completion: Any) -> str:
    """The text of one completion: TRL passes strings, or a message list for conversational prompts."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return completion_text(completion.get("content", ""))
    if isinstance(completion, Sequence):
        # A message list ([{"role": "assistant", "content": ...}]) or a content list of parts.
        parts = []
        for item in completion:
            if isinstance(item, dict) and item.get("type") not in (None, "text"):
                continue
            parts.append(completion_text(item.get("text", item.get("content", "")) if isinstance(item, dict) else item))
        return "".join(parts)
    return "" if completion is None else str(completion)


def _parsed(completion: Any) -> ParsedAnswer:
    return parse_answer(completion_text(completion), strict=True)


def _has_fields(answer: ParsedAnswer) -> bool:
    # The official reward uses whatever the official parser extracts; it does not reject start > end,
    # so a reversed span still scores by the formula (strict parse_answer reports it but keeps the fields).
    return answer.target_id is not None and answer.start is not None and answer.end is not None


def _column(values: Any, n: int, name: str) -> list:
    if values is None:
        raise KeyError(f"reward needs the dataset column {name!r}")
    values = list(values)
    if len(values) != n:
        raise ValueError(f"column {name!r} has {len(values)} values for {n} completions")
    return values


def iou_reward(
    completions: Sequence[Any],
    gt_target_id: Sequence[int] | None = None,
    gt_start_s: Sequence[float] | None = None,
    gt_end_s: Sequence[float] | None = None,
    **_: Any,
) -> list[float]:
    """STVG-R1's `iou` reward: temporal IoU (seconds) + ID match, in [0, 2]; 0 for an unparsable answer."""
    n = len(completions)
    ids = _column(gt_target_id, n, "gt_target_id")
    starts = _column(gt_start_s, n, "gt_start_s")
    ends = _column(gt_end_s, n, "gt_end_s")
    rewards = []
    for completion, gid, gs, ge in zip(completions, ids, starts, ends, strict=True):
        answer = _parsed(completion)
        if not _has_fields(answer):
            rewards.append(0.0)
            continue
        t_iou = temporal_iou_seconds((answer.start, answer.end), (float(gs), float(ge)))
        id_match = 1.0 if gid is not None and int(gid) >= 0 and answer.target_id == int(gid) else 0.0
        rewards.append(float(t_iou + id_match))
    return rewards


def format_reward(completions: Sequence[Any], **_: Any) -> list[float]:
    """STVG-R1's `format` reward: 1.0 iff the whole completion is a think block then an answer block."""
    return [1.0 if is_well_formatted(completion_text(c)) else 0.0 for c in completions]


def spatial_reward(
    completions: Sequence[Any],
    timestamps_s: Sequence[Sequence[float]] | None = None,
    frame_track_ids: Sequence[Sequence[Sequence[int]]] | None = None,
    frame_track_boxes: Sequence[Sequence[Sequence[Sequence[float]]]] | None = None,
    frame_gt_boxes: Sequence[Sequence[Sequence[float]]] | None = None,
    gt_start_s: Sequence[float] | None = None,
    gt_end_s: Sequence[float] | None = None,
    **_: Any,
) -> list[float]:
    """Continuous spatial reward (the paper's ablation): mean IoU of the chosen track's box with the GT box.

    Averaged over the sampled frames whose time lies inside both the predicted and the GT span and
    that have a GT box (an empty GT box list means "no GT box on this frame"); a frame where the chosen
    ID is not tracked scores 0. No such frame, or an unparsable answer, gives 0.
    """
    n = len(completions)
    times = _column(timestamps_s, n, "timestamps_s")
    ids = _column(frame_track_ids, n, "frame_track_ids")
    boxes = _column(frame_track_boxes, n, "frame_track_boxes")
    gts = _column(frame_gt_boxes, n, "frame_gt_boxes")
    starts = _column(gt_start_s, n, "gt_start_s")
    ends = _column(gt_end_s, n, "gt_end_s")
    rewards = []
    for i, completion in enumerate(completions):
        answer = _parsed(completion)
        if not _has_fields(answer):
            rewards.append(0.0)
            continue
        lo = max(answer.start, float(starts[i]))
        hi = min(answer.end, float(ends[i]))
        ious = []
        for t, frame_ids, frame_boxes, gt_box in zip(times[i], ids[i], boxes[i], gts[i], strict=True):
            if not (lo <= float(t) <= hi) or gt_box is None or len(gt_box) != 4:
                continue
            rows = np.flatnonzero(np.asarray(frame_ids, dtype=np.int64) == answer.target_id)
            ious.append(box_iou(frame_boxes[rows[0]], gt_box) if len(rows) else 0.0)
        rewards.append(float(np.mean(ious)) if ious else 0.0)
    return rewards


#: Names usable in a training config's `rewards:` list.
REWARDS: dict[str, RewardFunction] = {
    "iou": iou_reward,
    "format": format_reward,
    "spatial": spatial_reward,
}


def reward_functions(names: Sequence[str]) -> list[RewardFunction]:
    """The reward functions for `names` (keys of REWARDS), in order; an unknown name is a clear error."""
    unknown = [name for name in names if name not in REWARDS]
    if unknown:
        raise ValueError(f"unknown reward(s) {unknown}; choose from {sorted(REWARDS)}")
    return [REWARDS[name] for name in names]
