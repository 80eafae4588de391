"""GRPO rewards against hand-computed METHOD.md §7 values (training area, issue 6)."""

from __future__ import annotations

import pytest

import stvg_ros.core.answer as answer_contract
import stvg_ros.evaluation.metrics as metrics
from stvg_train import rewards
from stvg_train.rewards import format_reward, iou_reward, reward_functions, spatial_reward


def done(target_id, a, b, think="the person stands up"):
    return f"<think>{think}</think>\n<answer>Target ID: {target_id}, Time range: {a} to {b}</answer>"


def gt(n, target_id=3, start=4.0, end=8.0):
    return {"gt_target_id": [target_id] * n, "gt_start_s": [start] * n, "gt_end_s": [end] * n}


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        # tIoU = (6 - 4) / (8 - 2) = 1/3, right ID +1
        (done(3, "2.00", "6.00"), 1 / 3 + 1.0),
        (done(4, "2.00", "6.00"), 1 / 3),  # wrong ID
        (done(3, "4.00", "8.00"), 2.0),  # exact
        (done(3, "5.00", "7.00"), 0.5 + 1.0),  # inside: 2 / 4
        (done(3, "0.00", "1.00"), 1.0),  # no overlap: only the ID
        (done(7, "9.50", "12.00"), 0.0),
        # reversed span: the official parser keeps it; inter = max(0, 2 - 6) = 0 -> only the ID
        (done(3, "6.00", "2.00"), 1.0),
        ("<answer>Target ID: 3, Time range: 4 and 6</answer>", 0.5 + 1.0),  # 'and', no decimals, no think
        ("<think>x</think><answer>Target ID: 3</answer>", 0.0),  # no time range: unparsable
        ("<think>x</think><answer>Time range: 4.00 to 8.00</answer>", 0.0),  # no ID
        ("Target ID: 3, Time range: 4.00 to 8.00", 0.0),  # no answer block
        ("<answer>Target ID: [3], Time range: [4.00 to 8.00]</answer>", 0.0),  # brackets: strict parser rejects
        # the LAST answer block counts
        ("<answer>Target ID: 1, Time range: 0 to 1</answer> <answer>Target ID: 3, Time range: 4 to 8</answer>", 2.0),
        ("", 0.0),
    ],
)
def test_iou_reward_matches_method_formula(completion, expected):
    assert iou_reward([completion], **gt(1)) == pytest.approx([expected])


def test_iou_reward_reads_conversational_completions_and_batches():
    completions = [
        [{"role": "assistant", "content": done(3, "2.00", "6.00")}],
        [{"role": "assistant", "content": [{"type": "text", "text": done(2, "4.00", "8.00")}]}],
        "garbage",
    ]
    values = iou_reward(completions, gt_target_id=[3, 2, 3], gt_start_s=[4.0, 4.0, 4.0], gt_end_s=[8.0, 8.0, 8.0])
    assert values == pytest.approx([1 / 3 + 1.0, 2.0, 0.0])


def test_iou_reward_needs_its_columns():
    with pytest.raises(KeyError, match="gt_target_id"):
        iou_reward([done(1, 0, 1)], gt_start_s=[0.0], gt_end_s=[1.0])
    with pytest.raises(ValueError, match="2 values for 1"):
        iou_reward([done(1, 0, 1)], gt_target_id=[1, 1], gt_start_s=[0.0], gt_end_s=[1.0])


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        (done(1, "1.00", "2.00"), 1.0),
        ("  <think>a\nb</think>  <answer>\nTarget ID: 1, Time range: 1.00 to 2.00\n</answer>\n", 1.0),
        ("<think></think><answer></answer>", 1.0),  # the format reward checks the tags only
        ("Sure! " + done(1, "1.00", "2.00"), 0.0),  # text before <think>
        (done(1, "1.00", "2.00") + " done", 0.0),  # text after </answer>
        ("<answer>Target ID: 1, Time range: 1.00 to 2.00</answer>", 0.0),  # no think block
        ("<answer>x</answer><think>y</think>", 0.0),  # wrong order
        ("", 0.0),
    ],
)
def test_format_reward_is_the_whole_completion_regex(completion, expected):
    assert format_reward([completion]) == [expected]
    assert format_reward([[{"role": "assistant", "content": completion}]]) == [expected]


def test_rewards_use_the_one_grammar_and_metric_homes():
    # One home for the answer grammar (core.answer) and the IoUs (evaluation.metrics).
    assert rewards.is_well_formatted is answer_contract.is_well_formatted
    assert rewards.parse_answer is answer_contract.parse_answer
    assert rewards.temporal_iou_seconds is metrics.temporal_iou_seconds
    assert rewards.box_iou is metrics.box_iou


def spatial_columns():
    # 4 sampled frames at 0, 1, 2, 3 s; track 1 and track 2; GT boxes on frames 1..3 (span 1-3 s).
    return {
        "timestamps_s": [[0.0, 1.0, 2.0, 3.0]],
        "frame_track_ids": [[[1, 2], [1, 2], [2], [1, 2]]],
        "frame_track_boxes": [
            [
                [[0, 0, 10, 10], [20, 20, 30, 30]],
                [[0, 0, 10, 10], [20, 20, 30, 30]],  # frame 1: track 1 == GT
                [[20, 20, 30, 30]],  # frame 2: track 1 not tracked
                [[0, 0, 10, 10], [20, 20, 30, 30]],  # frame 3: GT shifted by 5 px
            ]
        ],
        "frame_gt_boxes": [[[], [0, 0, 10, 10], [0, 0, 10, 10], [5, 0, 15, 10]]],
        "gt_start_s": [1.0],
        "gt_end_s": [3.0],
    }


def test_spatial_reward_is_mean_box_iou_over_frames_in_both_spans():
    cols = spatial_columns()
    # Prediction 0-3 s, ID 1: frames 1, 2, 3 are in both spans; IoUs 1, 0 (missing), 50/150 = 1/3.
    assert spatial_reward([done(1, "0.00", "3.00")], **cols) == pytest.approx([(1 + 0 + 1 / 3) / 3])
    # Prediction 0-1.5 s: only frame 1.
    assert spatial_reward([done(1, "0.00", "1.50")], **cols) == pytest.approx([1.0])
    # ID 2 over 1-3 s: IoU([20,20,30,30], GT) = 0 on every frame.
    assert spatial_reward([done(2, "1.00", "3.00")], **cols) == pytest.approx([0.0])
    # No frame inside both spans, and an unparsable answer.
    assert spatial_reward([done(1, "0.00", "0.50")], **cols) == [0.0]
    assert spatial_reward(["nothing"], **cols) == [0.0]


def test_reward_functions_by_name():
    assert reward_functions(["iou", "format"]) == [iou_reward, format_reward]
    with pytest.raises(ValueError, match="unknown reward"):
        reward_functions(["iou", "accuracy"])
