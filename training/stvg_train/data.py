"""Prepared samples on disk and the rows GRPOTrainer reads.

`stvg-train prep` writes one row per (video, query) with the columns of `SAMPLE_FEATURES`: the
sampled frames with IDs already drawn (the robot's renderer), their timestamps, the question, the
GT target ID from the METHOD §6 vote and the GT span. `training_dataset` turns those rows into
TRL's conversational multi-image format: a clip is a LIST OF IMAGES, each preceded by its
timestamp in the text (`core.prompt.frame_label`) — the representation the llama.cpp backend sends
at inference, and the one TRL 1.16 carries into the loss (it drops video tensors there).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
from datasets import Features, Image, List, Value

from stvg_ros.core.prompt import build_question, clip_user_content

#: Columns of a prepared sample (one row per query). Rewards read the gt_* and frame_* columns.
SAMPLE_FEATURES = Features(
    {
        "sample_id": Value("string"),
        "source": Value("string"),  # dataset name: hcstvg, vidstg, synthetic
        "video": Value("string"),
        "caption": Value("string"),  # as annotated
        "question": Value("string"),  # build_question(caption): the user-turn text
        "images": List(Image()),  # sampled frames, IDs drawn by core.render.render_ids
        "timestamps_s": List(Value("float32")),  # of the images, seconds from the clip start
        "clip_duration_s": Value("float32"),
        "gt_start_s": Value("float32"),
        "gt_end_s": Value("float32"),
        "gt_target_id": Value("int64"),  # -1: no track matched the GT boxes
        "gt_vote_share": Value("float32"),  # share of voting GT frames won by gt_target_id
        "gt_mean_iou": Value("float32"),  # mean IoU of gt_target_id's box with the GT box where it won
        "gt_voting_frames": Value("int32"),
        "gt_frames": Value("int32"),
        "annotated_target_id": Value("int64"),  # identity given by the annotation (synthetic), else -1
        "frame_track_ids": List(List(Value("int64"))),  # per image: the tracks drawn on it
        "frame_track_boxes": List(List(List(Value("float32")))),  # per image: xyxy of those tracks
        "frame_gt_boxes": List(List(Value("float32"))),  # per image: GT xyxy, [] where none
    }
)

#: Columns the trainer does not need per step (kept on disk for inspection and reports).
_NOT_FOR_TRAINING = ("caption", "question", "source", "video", "gt_frames", "gt_voting_frames")


def clip_prompt(question: str, timestamps_s: Sequence[float]) -> list[dict[str, Any]]:
    """The conversation for a clip sent as images: one user turn built by `core.prompt.clip_user_content`
    (the question, then `Frame at t s:` + image per frame), exactly what the llama.cpp backend sends.

    Image parts are placeholders; TRL fills them from the `images` column in order.
    """
    return [{"role": "user", "content": clip_user_content(question, list(timestamps_s))}]


def make_sample(
    *,
    sample_id: str,
    source: str,
    video: str,
    caption: str,
    images: Sequence[Any],
    timestamps_s: Sequence[float],
    clip_duration_s: float,
    gt_start_s: float,
    gt_end_s: float,
    gt_target_id: int,
    gt_vote_share: float = 0.0,
    gt_mean_iou: float = 0.0,
    gt_voting_frames: int = 0,
    gt_frames: int = 0,
    annotated_target_id: int = -1,
    frame_track_ids: Sequence[Sequence[int]] = (),
    frame_track_boxes: Sequence[Sequence[Sequence[float]]] = (),
    frame_gt_boxes: Sequence[Sequence[float]] = (),
) -> dict[str, Any]:
    """One prepared row (the question is built here with the robot's template)."""
    n = len(images)
    if len(timestamps_s) != n:
        raise ValueError(f"{sample_id}: {n} images but {len(timestamps_s)} timestamps")
    return {
        "sample_id": sample_id,
        "source": source,
        "video": video,
        "caption": caption,
        "question": build_question(caption),
        "images": list(images),
        "timestamps_s": [float(t) for t in timestamps_s],
        "clip_duration_s": float(clip_duration_s),
        "gt_start_s": float(gt_start_s),
        "gt_end_s": float(gt_end_s),
        "gt_target_id": int(gt_target_id),
        "gt_vote_share": float(gt_vote_share),
        "gt_mean_iou": float(gt_mean_iou),
        "gt_voting_frames": int(gt_voting_frames),
        "gt_frames": int(gt_frames),
        "annotated_target_id": int(annotated_target_id),
        "frame_track_ids": [list(map(int, ids)) for ids in frame_track_ids] or [[] for _ in range(n)],
        "frame_track_boxes": [[list(map(float, b)) for b in boxes] for boxes in frame_track_boxes]
        or [[] for _ in range(n)],
        "frame_gt_boxes": [list(map(float, b)) if b is not None else [] for b in frame_gt_boxes]
        or [[] for _ in range(n)],
    }


def load_prepared(paths: Sequence[str | Path]) -> datasets.Dataset:
    """Concatenate prepared datasets (`stvg-train prep` output folders, or their dataset/ inside)."""
    if not paths:
        raise FileNotFoundError("no prepared dataset given (data.train in the config, or --data)")
    parts = []
    for path in paths:
        path = Path(path)
        if (path / "dataset").is_dir():  # a `stvg-train prep` output folder
            path = path / "dataset"
        if not (path / "dataset_info.json").is_file() and not (path / "state.json").is_file():
            raise FileNotFoundError(f"{path} is not a prepared dataset (run `stvg-train prep` first)")
        parts.append(datasets.load_from_disk(str(path)))
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def prepared_id_numbering(paths: Sequence[str | Path]) -> str:
    """How the IDs of prepared datasets are numbered, from each prep folder's report.json: "track"
    (the tracker's IDs) or "clip" (1..K per clip, `grounding.sampling.ID_NUMBERINGS`)."""
    found = set()
    for path in paths:
        path = Path(path)
        report = path / "report.json" if (path / "dataset").is_dir() else path.parent / "report.json"
        found.add(json.loads(report.read_text()).get("id_numbering", "track") if report.is_file() else "track")
    if len(found) > 1:
        raise ValueError(f"prepared datasets mix ID numberings {sorted(found)}: prepare them alike")
    return found.pop() if found else "track"


def gt_id_drawn(gt_target_id: int, frame_track_ids: Sequence[Sequence[int]]) -> bool:
    """Whether a sample has a GT ID and it is drawn on at least one of its frames: the model cannot
    answer with an ID it never sees (a short-lived track that the sampled frames miss)."""
    return gt_target_id >= 0 and any(gt_target_id in ids for ids in frame_track_ids)


def training_dataset(
    prepared: datasets.Dataset, *, min_vote_share: float = 0.0, max_samples: int | None = None
) -> datasets.Dataset:
    """TRL rows: `prompt` (conversation with image placeholders), `images`, and the reward columns.

    Samples without a GT ID (no track matched), those whose GT ID is drawn on none of their frames
    (nothing to answer with) and those whose vote share is below `min_vote_share` are left out;
    `stvg-train prep` reports them (`unmatched_samples`, `gt_not_drawn_samples`, `low_confidence`).
    """

    def usable(gt_id: int, share: float, frame_ids: list[list[int]]) -> bool:
        return share >= min_vote_share and gt_id_drawn(gt_id, frame_ids)

    kept = prepared.filter(
        lambda ids, shares, frames: [usable(*row) for row in zip(ids, shares, frames, strict=True)],
        input_columns=["gt_target_id", "gt_vote_share", "frame_track_ids"],
        batched=True,
    )
    if max_samples is not None:
        kept = kept.select(range(min(max_samples, len(kept))))
    if len(kept) == 0:
        raise ValueError("no training sample has a GT target ID (see the prep report)")
    # The prompt is built on access, not stored: datasets would union the part dicts' keys
    # ({"type", "text"} and {"type"}) and hand the chat template parts with text=None.
    kept = kept.remove_columns([c for c in _NOT_FOR_TRAINING if c in kept.column_names and c != "question"])
    return kept.with_transform(_with_prompts)


def _with_prompts(batch: dict[str, list]) -> dict[str, list]:
    batch["prompt"] = [clip_prompt(q, ts) for q, ts in zip(batch["question"], batch["timestamps_s"], strict=True)]
    return batch
