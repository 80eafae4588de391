"""Hand-computed metric cases for the three protocols (METHOD.md §9).

The reference query: a 100-frame HC-STVG clip (20 s, so 5 fps and TubeDETR samples every frame
0..98), GT tube on frames 11..20 (st_frame 11 as written, 10 boxes of 10x10 at the origin; frame
ids are decoded frame numbers), st_time 2.25 s / ed_time 4.05 s (int(t * 5) = frames 11 and 20).
"""

from __future__ import annotations

import pytest

from stvg_ros.evaluation.loaders import load_hcstvg
from stvg_ros.evaluation.metrics import (
    box_iou,
    id_accuracy,
    perception_ceiling,
    score_hcstvg_official,
    score_query,
    score_stvgr1,
    score_tubedetr,
    summarize,
    temporal_iou_frames,
    temporal_iou_seconds,
    tubedetr_frames,
)
from stvg_ros.evaluation.predictions import Prediction

FULL = (0.0, 0.0, 10.0, 10.0)
HALF = (0.0, 0.0, 10.0, 5.0)  # IoU with FULL = 50 / 100


def make_query(
    img_num: int = 100, st_frame: int = 11, n: int = 10, st_time: float = 2.25, ed_time: float = 4.05, frame_base=0
):
    data = {"clip.mp4": {"st_frame": st_frame, "bbox": [[0, 0, 10, 10]] * n, "img_num": img_num,
                         "img_size": [100, 200], "English": "a man", "st_time": st_time, "ed_time": ed_time}}  # fmt: skip
    from pathlib import Path

    return load_hcstvg(data, Path("hand.json"), frame_base=frame_base).queries["clip"]


def pred(start, end, box=FULL, frames=None, **kw) -> Prediction:
    frames = range(start, end) if frames is None else frames
    return Prediction("clip", start, end, {f: box for f in frames}, **kw)


# --------------------------------------------------------------------------------------------
# building blocks


def test_box_iou_by_hand():
    assert box_iou(FULL, FULL) == 1.0
    assert box_iou(FULL, HALF) == 0.5
    assert box_iou(FULL, (5, 5, 15, 15)) == pytest.approx(25 / 175)
    assert box_iou(FULL, (10, 0, 20, 10)) == 0.0  # touching edges do not overlap
    assert box_iou(FULL, None) == 0.0
    assert box_iou((3, 3, 3, 3), (3, 3, 3, 3)) == 0.0  # empty union: 0, not NaN


def test_temporal_iou_by_hand():
    assert temporal_iou_frames((11, 21), (11, 21)) == 1.0
    assert temporal_iou_frames((13, 17), (11, 21)) == 0.4
    assert temporal_iou_frames((30, 40), (11, 21)) == 0.0
    assert temporal_iou_frames((21, 30), (11, 21)) == 0.0  # end-exclusive: adjacent spans share nothing
    assert temporal_iou_seconds((1.0, 3.0), (2.0, 4.0)) == pytest.approx(1 / 3)
    assert temporal_iou_seconds((5.0, 6.0), (1.0, 2.0)) == 0.0
    assert temporal_iou_seconds((2.0, 2.0), (2.0, 2.0)) == 0.0


def test_tubedetr_frame_sampling():
    assert tubedetr_frames(0, 99, 100 / 20) == list(range(99))  # 5 fps clip: every frame but the last
    assert tubedetr_frames(0, 399, 400 / 20) == list(range(0, 399, 4))  # 20 fps clip: every 4th
    thinned = tubedetr_frames(0, 999, 1000 / 200)  # 999 frames kept at rate 1 -> thinned to 200
    assert len(thinned) == 200
    assert thinned[:3] == [0, 4, 9] and thinned[-1] == (199 * 999) // 200


# --------------------------------------------------------------------------------------------
# TubeDETR protocol (default)


def test_tubedetr_identical_disjoint_nested():
    q = make_query()
    s = score_tubedetr(q, pred(11, 21))
    assert (s.tiou, s.viou) == (1.0, 1.0)
    s = score_tubedetr(q, pred(30, 40))
    assert (s.tiou, s.viou) == (0.0, 0.0)
    s = score_tubedetr(q, pred(13, 17))  # nested: 4 of 10 frames
    assert s.tiou == pytest.approx(0.4) and s.viou == pytest.approx(0.4)
    assert (s.union_frames, s.inter_frames) == (10, 4)


def test_tubedetr_partial_overlap_with_half_boxes():
    q = make_query()
    s = score_tubedetr(q, pred(16, 26, HALF))  # inter 16..20 (5), union 11..25 (15)
    assert s.tiou == pytest.approx(5 / 15)
    assert s.viou == pytest.approx(5 * 0.5 / 15)


def test_tubedetr_empty_intersection_frames():
    # 400 frames in 20 s: TubeDETR evaluates every 4th frame. The spans overlap on frames 13..15,
    # none of which is sampled, so vIoU is 0 although tIoU (raw frames) is 3/10.
    q = make_query(img_num=400)
    s = score_tubedetr(q, pred(13, 16))
    assert s.tiou == pytest.approx(0.3)
    assert s.inter_frames == 0 and s.viou == 0.0
    assert s.union_frames == 3  # sampled frames 12, 16, 20 of the union 11..20


def test_tubedetr_boxes_missing_on_some_frames():
    q = make_query()
    s = score_tubedetr(q, pred(11, 21, frames=range(11, 16)))  # boxes on 5 of 10 frames
    assert s.tiou == 1.0 and s.viou == pytest.approx(0.5)


def test_tubedetr_viou_at_threshold_is_strict():
    q = make_query()
    scores = [score_tubedetr(q, pred(11, 21, frames=range(11, 16))), score_tubedetr(q, pred(11, 21))]
    summary = summarize(scores, "tubedetr")
    assert scores[0].viou == pytest.approx(0.5)
    assert summary["vIoU@0.5"] == 0.5  # 0.5 itself is not > 0.5
    assert summary["vIoU@0.3"] == 1.0
    assert summary["m_vIoU"] == pytest.approx(0.75)


# --------------------------------------------------------------------------------------------
# official HC-STVG script (all frames, inclusive ends)


def test_official_identical_disjoint_nested():
    q = make_query()
    s = score_hcstvg_official(q, pred(11, 21))
    assert (s.tiou, s.viou, s.union_frames) == (1.0, 1.0, 10)
    s = score_hcstvg_official(q, pred(30, 40))
    assert (s.tiou, s.viou) == (0.0, 0.0)
    s = score_hcstvg_official(q, pred(13, 17))
    assert s.tiou == pytest.approx(0.4) and s.viou == pytest.approx(0.4)


def test_official_partial_overlap_and_unsampled_frames_count():
    q = make_query()
    s = score_hcstvg_official(q, pred(16, 26, HALF))  # union 25 - 11 + 1 = 15
    assert s.union_frames == 15
    assert s.tiou == pytest.approx(5 / 15) and s.viou == pytest.approx(2.5 / 15)
    # the "empty intersection frames" case of TubeDETR: every frame counts here
    s = score_hcstvg_official(make_query(img_num=400), pred(13, 16))
    assert s.tiou == pytest.approx(0.3) and s.viou == pytest.approx(0.3)


def test_official_missing_boxes_lower_tiou_too():
    # eval_hcvg.py counts tIoU as (GT frames with a predicted box) / union
    s = score_hcstvg_official(make_query(), pred(11, 21, frames=range(11, 16)))
    assert s.tiou == pytest.approx(0.5) and s.viou == pytest.approx(0.5)


def test_official_ignores_boxes_outside_the_predicted_span():
    s = score_hcstvg_official(make_query(), pred(11, 16, frames=range(11, 21)))
    assert s.tiou == pytest.approx(0.5) and s.viou == pytest.approx(0.5)


# --------------------------------------------------------------------------------------------
# STVG-R1 script (seconds, int(t * fps), inclusive ends, GT bbox[d - st_frame], >= thresholds)


def test_stvgr1_identical_span_scores_one_with_decoded_ids():
    # span 2.25..4.05 s -> frames int(11.25) = 11 .. int(20.25) = 20, inclusive: 10 frames, all matched
    q = make_query()
    s = score_stvgr1(q, pred(11, 21, start_s=2.25, end_s=4.05))
    assert s.tiou == pytest.approx(1.0)
    assert (s.union_frames, s.inter_frames) == (10, 10) and s.viou == pytest.approx(1.0)


def test_stvgr1_one_based_ids_miss_the_first_gt_frame():
    # one_based: st_frame 11 is decoded frame 10, and boxes are keyed by decoded + 1. The script reads
    # GT bbox[d - st_frame] with the decoded d, so decoded 10 finds no GT box: 9 of 10 frames score.
    q = make_query(st_time=2.05, ed_time=3.85, frame_base=1)
    s = score_stvgr1(q, pred(11, 21, start_s=2.05, end_s=3.85))
    assert s.tiou == pytest.approx(1.0)
    assert s.union_frames == 10 and s.viou == pytest.approx(0.9)


def test_stvgr1_disjoint_nested_and_one_frame_overlap():
    q = make_query()
    s = score_stvgr1(q, pred(40, 50, start_s=6.0, end_s=8.0))
    assert (s.tiou, s.viou) == (0.0, 0.0)
    # nested 2.65..3.45 s -> frames 13..17 (5 of the union 11..20)
    s = score_stvgr1(q, pred(13, 18, start_s=2.65, end_s=3.45))
    assert s.tiou == pytest.approx(0.8 / 1.8)
    assert s.viou == pytest.approx(5 / 10)
    # one shared frame (20): the script's `overlap_start >= overlap_end` gives 0
    s = score_stvgr1(q, pred(20, 26, start_s=4.05, end_s=5.0))
    assert s.viou == 0.0 and s.tiou == 0.0


def test_stvgr1_span_seconds_rule_the_frames():
    # int(t * fps) truncates: 2.39 s -> frame 11, 4.19 s -> frame 20; the frame span in `sted` is ignored
    q = make_query()
    s = score_stvgr1(q, pred(0, 5, frames=range(11, 21), start_s=2.39, end_s=4.19))
    assert s.viou == pytest.approx(1.0) and s.tiou == pytest.approx((4.05 - 2.39) / (4.19 - 2.25))


def test_stvgr1_frames_without_span_seconds():
    # no span_s: the predicted frames 16..25 are used directly, tIoU from their times 3.2..5.0 s
    q = make_query()
    s = score_stvgr1(q, pred(16, 26, HALF))
    assert s.tiou == pytest.approx((4.05 - 3.2) / (5.0 - 2.25))
    assert s.union_frames == 15 and s.viou == pytest.approx(2.5 / 15)


def test_stvgr1_thresholds_are_inclusive():
    q = make_query()
    scores = [score_stvgr1(q, pred(13, 18, start_s=2.65, end_s=3.45))]  # vIoU exactly 0.5
    summary = summarize(scores, "stvgr1")
    assert summary["vIoU@0.5"] == 1.0 and summary["vIoU@0.7"] == 0.0
    assert summary["tIoU@0.3"] == 1.0 and summary["tIoU@0.5"] == 0.0
    assert summary["threshold_rule"] == ">="


# --------------------------------------------------------------------------------------------
# missing predictions, aggregates, diagnostics


@pytest.mark.parametrize("protocol", ["tubedetr", "hcstvg_official", "stvgr1"])
def test_missing_and_failed_predictions_score_zero(protocol):
    q = make_query()
    for prediction in (None, Prediction.failed("clip")):
        s = score_query(q, prediction, protocol)
        assert (s.tiou, s.viou, s.predicted) == (0.0, 0.0, False)
    summary = summarize([score_query(q, None, protocol), score_query(q, pred(11, 21, start_s=2.25, end_s=4.05),
                                                                     protocol)], protocol)  # fmt: skip
    assert summary["n_queries"] == 2 and summary["n_missing"] == 1
    assert 0.0 <= summary["m_vIoU"] <= 0.5


def test_perception_ceiling_picks_the_best_track():
    import numpy as np

    q = make_query()
    # track 7 covers the target on frames 11..15 only, track 3 sits next to it on every frame
    tracks = {}
    for f in range(0, 99):
        ids, boxes = [3], [[0, 5, 10, 15]]  # IoU 50 / 150 = 1/3 with the GT box
        if 11 <= f <= 15:
            ids.append(7)
            boxes.append(list(FULL))
        tracks[f] = (np.array(ids), np.array(boxes, np.float32))
    ceiling = perception_ceiling(q, tracks, "tubedetr")
    assert ceiling.track_id == 7 and ceiling.viou == pytest.approx(0.5)
    official = perception_ceiling(q, tracks, "hcstvg_official")
    assert official.track_id == 7 and official.viou == pytest.approx(0.5)
    # with the target's track broken in two (IDs 7 then 8), no single track exceeds 1/2
    for f in range(16, 21):
        tracks[f] = (np.array([3, 8]), np.array([[0, 5, 10, 15], list(FULL)], np.float32))
    assert perception_ceiling(q, tracks, "tubedetr").viou == pytest.approx(0.5)
    assert perception_ceiling(q, {}, "tubedetr").track_id is None


def test_id_accuracy():
    assert id_accuracy([(1, 1), (2, 3), (None, 4), (5, None)]) == pytest.approx(1 / 3)
    assert id_accuracy([(1, None)]) is None
