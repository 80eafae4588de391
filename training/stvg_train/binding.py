"""Target-match supervision: a per-token loss that teaches the language model where the asked object is.

Answering "which object is the red circle?" needs the language model to bind: find, among a frame's
visual tokens, the one whose object the question describes and copy the number drawn there. Trained
from scratch on the answer alone, the 4-layer model stays at chance for hundreds of steps (the answer's
one digit is the only signal, and it helps only once a whole attention circuit exists). This loss gives
every visual token its own signal: after `layer` decoder layers, a linear head says whether the token
shows the object the sample asks about (its body or its drawn ID). The question comes before the frames
(METHOD §5), so a token can compare what it shows with the question; the answer then only has to find
the tokens that say "match", a lookup by one fixed feature. The head exists only during training (it is
not exported), like `id_reading`'s.

Targets come from the tracks drawn on the frame: the cells the asked track's box covers (the same
coverage rule as `id_reading.attribute_targets`) except those carrying another track's drawn ID, plus
the cells of the asked track's own ID.
"""

from __future__ import annotations

import numpy as np

from stvg_train.id_reading import CELL_PX, cell_targets, covered_cells

#: Decoder layers below the head: in a 4-layer model, two layers to compare, two to answer.
DEFAULT_LAYER = 2


def track_cells(track_ids: list[int], boxes_src: list[list[float]], src_size: tuple[int, int],
                frame_size: tuple[int, int]) -> dict[int, np.ndarray]:
    """Per drawn track, (cells,) bool in raster order of the merged token grid: the cells that show it —
    those its box covers, except where another track's ID is drawn, plus those of its own drawn ID.

    `boxes_src` are the tracks' boxes in source pixels (`src_size` = width, height); `frame_size` is the
    frame the model sees (width, height, multiples of CELL_PX). One ID rendering for the whole frame."""
    if not track_ids:
        return {}
    _, owner = cell_targets(track_ids, boxes_src, src_size, frame_size, with_owner=True)
    sx, sy = frame_size[0] / src_size[0], frame_size[1] / src_size[1]
    cells = {}
    for k, (track, box) in enumerate(zip(track_ids, boxes_src, strict=True)):
        covered = covered_cells([box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy], frame_size)
        cells[int(track)] = (covered & (owner == -1)) | (owner == k)
    return cells


def target_cells(track_ids: list[int], boxes_src: list[list[float]], target_id: int, src_size: tuple[int, int],
                 frame_size: tuple[int, int]) -> np.ndarray:
    """(cells,) float32: 1 where the cell shows `target_id` (`track_cells`); a frame without it is all 0."""
    if target_id not in track_ids:
        return np.zeros((frame_size[1] // CELL_PX) * (frame_size[0] // CELL_PX), np.float32)
    return track_cells(track_ids, boxes_src, src_size, frame_size)[int(target_id)].astype(np.float32)


class TokenHead:
    """A linear head with `outputs` values per visual token on the language model's hidden states after
    `layer` decoder layers; used only in training (not exported)."""

    targets_name = "targets"

    def __init__(self, hidden_size: int, outputs: int, layer: int, seed: int) -> None:
        import torch

        self.layer = layer
        generator = torch.Generator().manual_seed(seed)
        self.linear = torch.nn.Linear(hidden_size, outputs)
        with torch.no_grad():
            self.linear.weight.copy_(torch.randn(self.linear.weight.shape, generator=generator) * 0.02)
            self.linear.bias.zero_()

    def parameters(self):
        return self.linear.parameters()

    def state_dict(self) -> dict:
        return self.linear.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.linear.load_state_dict(state)

    def visual_logits(self, hidden_states, input_ids, image_token_id: int, targets):
        """(visual tokens of the batch, outputs) logits; raises where `targets` has another length."""
        logits = self.linear(hidden_states[self.layer][input_ids == image_token_id].float())
        if logits.shape[0] != targets.shape[0]:
            raise ValueError(f"{logits.shape[0]} visual tokens but {targets.shape[0]} {self.targets_name}")
        return logits


class TargetMatchHead(TokenHead):
    """After `layer` decoder layers, at the visual tokens: does this token show the asked object? Trained
    with binary cross-entropy."""

    targets_name = "match targets"

    def __init__(self, hidden_size: int, layer: int = DEFAULT_LAYER, seed: int = 0) -> None:
        super().__init__(hidden_size, 1, layer, seed)

    def loss(self, hidden_states, input_ids, image_token_id: int, targets):
        """BCE over the visual tokens of a batch. `hidden_states`: the model output's tuple (embeddings,
        then one per layer); `targets`: (visual tokens of the batch,) in order, NaN where not supervised.
        Returns (loss, logits) — loss None when no token is supervised."""
        import torch

        logits = self.visual_logits(hidden_states, input_ids, image_token_id, targets).squeeze(-1)
        known = ~torch.isnan(targets)
        if not bool(known.any()):
            return None, logits
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits[known], targets[known])
        return loss, logits


def unsupervised(cells: int):
    """Targets of `cells` visual tokens the loss ignores (e.g. a "which numbers are drawn?" question)."""
    import torch

    return torch.full((cells,), float("nan"))


def match_scores(head: TargetMatchHead, model, batches: list[dict], image_token_id: int) -> dict[str, float]:
    """Held-out check of the head on collated batches that carry "match" targets (one entry per visual token):
    `top1`, the share of samples whose most confident visual token shows the asked object, and
    `target_share`, the share of supervised visual tokens that do (what a random token scores)."""
    import torch

    hits, asked, shown, cells = 0, 0, 0.0, 0
    model.eval()
    for batch in batches:
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "match", "guides")}
        with torch.no_grad():
            output = model(**inputs, output_hidden_states=True)
            _, logits = head.loss(output.hidden_states, batch["input_ids"], image_token_id, batch["match"])
        counts = (batch["input_ids"] == image_token_id).sum(dim=1).tolist()
        for scores, targets in zip(logits.split(counts), batch["match"].split(counts), strict=True):
            if bool((targets > 0).any()):  # NaN (unsupervised) compares False
                hits += int(targets[scores.argmax()] > 0)
                asked += 1
        supervised = ~torch.isnan(batch["match"])
        shown, cells = shown + float(batch["match"][supervised].sum()), cells + int(supervised.sum())
    model.train()
    return {"top1": hits / max(1, asked), "target_share": shown / max(1, cells)}


# ---------------------------------------------------------------------------------------------------
# Attention guides: the two lookups of the binding circuit, supervised where they happen.
#
# Even with the match loss, the first ≈ 400 steps stay at chance: a visual token can only compare what
# it shows with the question once some head brings the question's words to it, and that head gets a
# gradient only once the comparison exists. The guides break that circle with a direct signal on the
# attention weights (like the match head, training only, nothing exported):
#   - in layer `ATTRIBUTE_LAYER`, head k of every visual token attends to the question's word of
#     attribute k (colour, shape, size: the description that opens every synthetic caption);
#   - in the last layer, head 0 of each position that predicts a digit of the answered ID attends to the
#     visual tokens carrying the asked track's drawn ID.
# The loss of one guide is the mean over its query positions of -log(attention mass on its keys).

#: The layer whose heads 0, 1, 2 gather the colour, shape and size words into every visual token.
ATTRIBUTE_LAYER = 0

#: `attn_implementation` of a guided model: the guides read the language model's attention weights, which
#: only eager attention returns (in the vision tower too, measured as fast as SDPA there for 96 frames at
#: 224x168, and without SDPA's warning that it cannot return weights).
GUIDED_ATTENTION = "eager"


def description_positions(tokenizer, input_ids, prompt_length: int) -> list[list[int]]:
    """Per attribute (colour, shape, size), the prompt positions of the asked object's description words:
    the first shape word, the colour word right before it and a size word right before that (a caption
    or question opens with "the [size] colour shape"). Empty lists where a word is missing."""
    from stvg_train.id_reading import attribute_classes

    colours, shapes, sizes = (set(names) for names in attribute_classes())
    words = [tokenizer.decode([int(t)]).strip().lower() for t in input_ids[:prompt_length]]
    shape = next((i for i, w in enumerate(words) if w in shapes), None)
    if shape is None:
        return [[], [], []]
    colour = shape - 1 if shape >= 1 and words[shape - 1] in colours else None
    size = colour - 1 if colour is not None and colour >= 1 and words[colour - 1] in sizes else None
    return [[colour] if colour is not None else [], [shape], [size] if size is not None else []]


def answer_id_digits(tokenizer, input_ids, labels) -> list[int]:
    """Positions of the answered ID's digits ("Object N", "Target ID: N") among the labelled tokens."""
    pieces = [tokenizer.decode([int(t)]) for t in input_ids]
    digits, inside = [], False
    for i, piece in enumerate(pieces):
        starts = i >= 3 and pieces[i - 1] == " " and (
            pieces[i - 2].endswith("bject") or (pieces[i - 2] == ":" and pieces[i - 3] == " ID"))
        inside = int(labels[i]) != -100 and piece.isdigit() and (inside or starts)
        if inside:
            digits.append(i)
    return digits


def id_cells(track_ids: list[int], boxes_src: list[list[float]], target_id: int, src_size: tuple[int, int],
             frame_size: tuple[int, int]) -> np.ndarray:
    """(cells,) bool in raster order: the cells that read `target_id`'s drawn number."""
    _, owner = cell_targets(track_ids, boxes_src, src_size, frame_size, with_owner=True)
    if target_id not in track_ids:
        return np.zeros(owner.shape[0], bool)
    return owner == track_ids.index(target_id)


def example_guides(tokenizer, input_ids, labels, image_token_id: int, target_id_cells: np.ndarray,
                   answer_layer: int) -> list[tuple[int, int, list[int], list[int]]]:
    """The guides of one encoded example as (layer, head, query positions, key positions);
    `target_id_cells`: (visual tokens,) bool, which of the example's visual tokens carry the asked ID."""
    visual = [int(i) for i in np.flatnonzero(np.asarray(input_ids) == image_token_id)]
    answered = np.flatnonzero(np.asarray(labels) != -100)
    prompt_length = int(answered[0]) if answered.size else len(input_ids)
    guides = []
    for head, keys in enumerate(description_positions(tokenizer, input_ids, prompt_length)):
        if keys and visual:
            guides.append((ATTRIBUTE_LAYER, head, visual, keys))
    keys = [visual[i] for i in np.flatnonzero(target_id_cells)]
    queries = [i - 1 for i in answer_id_digits(tokenizer, input_ids, labels)]  # they predict the digits
    if keys and queries:
        guides.append((answer_layer, 0, queries, keys))
    return guides


def sample_guides(tokenizer, enc: dict, image_token_id: int, frame_track_ids, frame_track_boxes, target_id: int,
                  src_size: tuple[int, int], frame_size: tuple[int, int], answer_layer: int) -> list:
    """`example_guides` of an encoded training example (`input_ids`, `labels`) whose visual tokens are the
    frames of `frame_track_ids` / `frame_track_boxes` in order, each `frame_size` (width, height) pixels."""
    cells = np.concatenate([id_cells(list(ids), list(boxes), target_id, src_size, frame_size)
                            for ids, boxes in zip(frame_track_ids, frame_track_boxes, strict=True)])
    return example_guides(tokenizer, enc["input_ids"], enc["labels"], image_token_id, cells, answer_layer)


def guide_loss(attentions, guides: list[list[tuple[int, int, list[int], list[int]]]]):
    """Mean over the batch's guides of -log(attention mass on the keys), averaged over query positions.
    `attentions`: the model output's per-layer (batch, heads, queries, keys) weights (eager attention);
    `guides`: per batch row, `example_guides`. None when the batch has none.

    One gather per layer (indexing per guide made the backward zero-fill a whole attention map per guide)."""
    import torch

    by_layer: dict[int, list] = {}
    count = 0
    for row, row_guides in enumerate(guides):
        for layer, head, queries, keys in row_guides:
            by_layer.setdefault(layer, []).append((row, head, queries, keys))
            count += 1
    if not count:
        return None
    total = torch.zeros(())
    for layer, entries in by_layer.items():
        weights = attentions[layer]
        rows, heads, queries, scale = [], [], [], []
        mask = np.zeros((sum(len(q) for _, _, q, _ in entries), weights.shape[-1]), bool)
        at = 0
        for row, head, guide_queries, keys in entries:
            n = len(guide_queries)
            rows += [row] * n
            heads += [head] * n
            queries += list(guide_queries)
            scale += [1.0 / n] * n
            mask[at:at + n, keys] = True
            at += n
        picked = weights[torch.as_tensor(rows), torch.as_tensor(heads), torch.as_tensor(queries)]
        mass = (picked.float() * torch.from_numpy(mask)).sum(-1)
        total = total + (-mass.clamp_min(1e-6).log() * torch.as_tensor(scale)).sum()
    return total / count


# ---------------------------------------------------------------------------------------------------
# Time guides: the lookups the answer's span needs (perfect-perception diagnostic first).
#
# The span is one segment of the asked object's motion (when it moves left, after it stops, ...), so a
# visual token must know how its object moved since the previous frame, whether that is the asked event,
# and the answer must copy the time of the first and last frame where it is. Four guides, one per lookup:
#   - `TRACK_GUIDE`: every token showing a track attends to that track's cells one frame earlier (with
#     the cell's position in the values, the layer's MLP can tell the motion);
#   - `EVENT_GUIDE`: every visual token attends to the caption's event words (after the shape word);
#   - `LABEL_GUIDE`: every visual token attends to the time digits of its frame's label;
#   - `START_GUIDE` / `END_GUIDE` (last layer): each position predicting a digit of the answered start
#     (end) time attends to the asked track's cells in the first (last) sampled frame inside the span.

#: (layer, head) of each time guide; layer 0 heads 0-2 and the last layer's head 0 are binding's.
TRACK_GUIDE = (0, 3)
EVENT_GUIDE = (1, 0)
LABEL_GUIDE = (1, 1)
START_HEAD, END_HEAD = 1, 2
#: The motion lookups (`time_guides(motion_lookups=True)`): a track's move is where its cells are now
#: minus where they were, and a cell's own place is not where its track is (a still two-cell object has
#: one cell left and one right of its centre). So two heads of one layer gather the track's cells of the
#: same frame and of the previous frame (the same key/value group: both carry the cells' places), and the
#: layer's MLP can subtract the two means.
NOW_GUIDE = (1, 2)
BEFORE_GUIDE = (1, 3)


def frame_tokens(input_ids, image_token_id: int) -> list[list[int]]:
    """Per frame, the positions of its visual tokens (each frame one run of image tokens)."""
    positions = np.flatnonzero(np.asarray(input_ids) == image_token_id)
    if positions.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(positions) > 1) + 1
    return [run.tolist() for run in np.split(positions, breaks)]


def label_digits(pieces: list[str], frames: list[list[int]], window: int = 12) -> list[list[int]]:
    """Per frame, the positions of the time digits in its label ("Frame at 5.50 s:") before its tokens."""
    labels = []
    for run in frames:
        digits = []
        for i in range(run[0] - 1, max(-1, run[0] - 1 - window), -1):
            if pieces[i] == "Frame":
                break
            if pieces[i].isdigit():
                digits.append(i)
        labels.append(sorted(digits))
    return labels


def event_words(pieces: list[str], prompt_length: int) -> list[int]:
    """Prompt positions of the caption's event words: after its first shape word up to the closing quote."""
    from stvg_train.id_reading import attribute_classes

    shapes = set(attribute_classes()[1])
    shape = next((i for i, w in enumerate(pieces[:prompt_length]) if w.strip().lower() in shapes), None)
    if shape is None:
        return []
    words = []
    for i in range(shape + 1, prompt_length):
        if '"' in pieces[i]:
            break
        words.append(i)
    return words


def answer_time_digits(pieces: list[str], labels) -> tuple[list[int], list[int]]:
    """Positions of the answered start and end times' digits among the labelled tokens ("from a to b",
    "Time range: a to b"; the reasoning block's and the answer's)."""
    start, end, current = [], [], None
    for i, piece in enumerate(pieces):
        if int(labels[i]) == -100:
            current = None
            continue
        if piece.strip() in ("from", "range") or (piece == "rom" and i and pieces[i - 1].strip() == "f"):
            current = start
        elif piece == " to" and current is start:
            current = end
        elif piece.isdigit() and current is not None:
            current.append(i)
        elif piece not in (" ", ".") and current is not None and not piece.isdigit():
            current = None if current is end else current
    return start, end


def span_frames(timestamps_s, start_s: float, end_s: float) -> tuple[int, int]:
    """The first and last sampled frame inside [start_s, end_s]; the frame nearest the span's middle
    for both when none is inside."""
    inside = [k for k, t in enumerate(timestamps_s) if start_s <= t <= end_s]
    if inside:
        return inside[0], inside[-1]
    middle = (start_s + end_s) / 2
    nearest = int(np.argmin([abs(t - middle) for t in timestamps_s]))
    return nearest, nearest


def span_cells(track_cells: list[np.ndarray], timestamps_s, start_s: float, end_s: float) -> np.ndarray:
    """(frames × cells,) float32 targets of the span head on the asked track's cells (`track_cells`, per
    frame): 1 in the sampled frames inside the span (`span_frames`), 0 in the others; NaN (unsupervised)
    on every other cell, which the target-match head already tells apart (with them as 0s the head learned
    to say "outside" everywhere: 0 of the inside frames found after 600 steps)."""
    first, last = span_frames(timestamps_s, start_s, end_s)
    return np.concatenate([np.where(cells, float(first <= k <= last), np.nan).astype(np.float32)
                           for k, cells in enumerate(track_cells)])


def time_guides(tokenizer, input_ids, labels, image_token_id: int, frame_tracks: list[dict[int, np.ndarray]],
                target_id: int, timestamps_s, start_s: float, end_s: float,
                answer_layer: int, motion_lookups: bool = False,
                track_guide: bool = True) -> list[tuple[int, int, list[int], list[int]]]:
    """The time guides of one encoded example, as `example_guides`. `frame_tracks`: per frame, each drawn
    track's cells (bool, the frame's visual tokens); `timestamps_s`, `start_s`, `end_s`: the frames' times
    and the GT span; `motion_lookups`: also `NOW_GUIDE` and `BEFORE_GUIDE`; `track_guide`: `TRACK_GUIDE` too
    (without it, that head is free: e.g. for working out the place, `PlaceHead`)."""
    pieces = [tokenizer.decode([int(t)]) for t in input_ids]
    frames = frame_tokens(input_ids, image_token_id)
    if len(frames) != len(frame_tracks):
        raise ValueError(f"{len(frames)} frames in the tokens but {len(frame_tracks)} in the tracks")
    answered = np.flatnonzero(np.asarray(labels) != -100)
    prompt_length = int(answered[0]) if answered.size else len(input_ids)
    guides = []
    for k in range(1, len(frames)):
        for track, cells in frame_tracks[k].items():
            before = frame_tracks[k - 1].get(track)
            if before is not None and before.any() and cells.any():
                now = [frames[k][i] for i in np.flatnonzero(cells)]
                earlier = [frames[k - 1][i] for i in np.flatnonzero(before)]
                if track_guide:
                    guides.append((*TRACK_GUIDE, now, earlier))
                if motion_lookups:
                    guides += [(*NOW_GUIDE, now, now), (*BEFORE_GUIDE, now, earlier)]
    words = event_words(pieces, prompt_length)
    if words:
        guides.append((*EVENT_GUIDE, [p for run in frames for p in run], words))
    for run, digits in zip(frames, label_digits(pieces, frames), strict=True):
        if digits:
            guides.append((*LABEL_GUIDE, run, digits))
    first, last = span_frames(timestamps_s, start_s, end_s)
    start, end = answer_time_digits(pieces, labels)
    for head, queries, frame in ((START_HEAD, start, first), (END_HEAD, end, last)):
        cells = frame_tracks[frame].get(target_id)
        if queries and cells is not None and cells.any():
            guides.append((answer_layer, head, [q - 1 for q in queries],
                           [frames[frame][i] for i in np.flatnonzero(cells)]))
    return guides


def guide_kinds(answer_layer: int) -> dict[tuple[int, int], str]:
    """The name of each guide's (layer, head), for the diagnostics."""
    return {(ATTRIBUTE_LAYER, 0): "colour", (ATTRIBUTE_LAYER, 1): "shape", (ATTRIBUTE_LAYER, 2): "size",
            (answer_layer, 0): "answer_id", TRACK_GUIDE: "track", EVENT_GUIDE: "event", LABEL_GUIDE: "label",
            (answer_layer, START_HEAD): "start", (answer_layer, END_HEAD): "end", NOW_GUIDE: "track_now",
            BEFORE_GUIDE: "track_before"}


def guide_masses(attentions, guides, answer_layer: int) -> dict[str, list[float]]:
    """Per guide kind (`guide_kinds`), the attention mass each guide's queries put on its keys (mean over
    its queries); for checking held-out examples."""
    kinds = guide_kinds(answer_layer)
    masses: dict[str, list[float]] = {}
    for row, row_guides in enumerate(guides):
        for layer, head, queries, keys in row_guides:
            weights = attentions[layer][row, head][queries][:, keys]
            masses.setdefault(kinds.get((layer, head), f"{layer}.{head}"), []).append(float(weights.sum(-1).mean()))
    return masses


#: Classes of `motion_targets`: how a track moved since the previous sampled frame.
MOTIONS = ("still", "left", "right", "up", "down")
#: A box centre that moved less than this (source pixels) between two sampled frames is "still".
STILL_PX = 6.0


def motion_targets(frame_track_ids, frame_track_boxes, frame_tracks: list[dict[int, np.ndarray]],
                   cells: int) -> np.ndarray:
    """(frames × `cells`,) int64: on each track's cells (`frame_tracks`, as `time_guides`), the index in
    `MOTIONS` of its box centre's move since the previous frame (the larger axis decides); -100 where not
    supervised (other cells, the first frame, a track not drawn one frame earlier)."""
    targets = []
    for k, tracks in enumerate(frame_tracks):
        frame = np.full(cells, -100, np.int64)
        if k and tracks:
            before = {int(t): b for t, b in zip(frame_track_ids[k - 1], frame_track_boxes[k - 1], strict=True)}
            for t, box in zip(frame_track_ids[k], frame_track_boxes[k], strict=True):
                if int(t) in before and int(t) in tracks:
                    (x0, y0), (x1, y1) = (((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b in (before[int(t)], box))
                    dx, dy = x1 - x0, y1 - y0
                    move = 0 if np.hypot(dx, dy) < STILL_PX else (1 + int(dx > 0) if abs(dx) >= abs(dy) else 3 + int(dy > 0))
                    frame[tracks[int(t)]] = move
        targets.append(frame)
    return np.concatenate(targets)


class MotionHead(TokenHead):
    """After `layer` decoder layers, at the visual tokens: how did the token's track move since the
    previous frame (`MOTIONS`)? Cross-entropy."""

    targets_name = "motion targets"

    def __init__(self, hidden_size: int, layer: int = 1, seed: int = 2) -> None:
        super().__init__(hidden_size, len(MOTIONS), layer, seed)

    def loss(self, hidden_states, input_ids, image_token_id: int, targets):
        """(loss or None when nothing is supervised, logits) over the batch's visual tokens; `targets` as
        `motion_targets`, concatenated over the batch."""
        import torch

        logits = self.visual_logits(hidden_states, input_ids, image_token_id, targets)
        if not bool((targets != -100).any()):
            return None, logits
        return torch.nn.functional.cross_entropy(logits, targets, ignore_index=-100), logits


class PlaceHead(TokenHead):
    """After `layer` decoder layers, at the visual tokens: the token's row and column in its frame's grid of
    merged cells. Neither tower has absolute position embeddings, so the language model must derive the
    place from M-RoPE's phases (a vision tower that says where a cell is needs nothing of it). Cross-entropy
    on each."""

    targets_name = "place targets"

    def __init__(self, hidden_size: int, rows: int, columns: int, layer: int = 1, seed: int = 3) -> None:
        super().__init__(hidden_size, rows + columns, layer, seed)
        self.rows = rows

    def loss(self, hidden_states, input_ids, image_token_id: int, targets):
        """(loss, logits); `targets`: (visual tokens of the batch, 2) row and column, in order."""
        import torch

        logits = self.visual_logits(hidden_states, input_ids, image_token_id, targets)
        cross = torch.nn.functional.cross_entropy
        return cross(logits[:, :self.rows], targets[:, 0]) + cross(logits[:, self.rows:], targets[:, 1]), logits

    def right(self, logits, targets) -> tuple[float, float]:
        """Shares of tokens whose row and whose column are called right."""
        rows = (logits[:, :self.rows].argmax(-1) == targets[:, 0]).float().mean()
        columns = (logits[:, self.rows:].argmax(-1) == targets[:, 1]).float().mean()
        return float(rows), float(columns)


def place_targets(frames: int, rows: int, columns: int) -> np.ndarray:
    """(frames × rows × columns, 2) int64: each visual token's row and column (raster order per frame)."""
    cell = np.arange(rows * columns)
    return np.tile(np.stack([cell // columns, cell % columns], axis=1), (frames, 1)).astype(np.int64)


def sample_time_supervision(tokenizer, enc: dict, image_token_id: int, row, src_size: tuple[int, int],
                            frame_size: tuple[int, int], answer_layer: int, *, guides: bool = True,
                            motion_lookups: bool = False, track_guide: bool = True, span: bool = False,
                            motion: bool = False, place: bool = False,
                            frame_tracks: list[dict[int, np.ndarray]] | None = None) -> dict:
    """What the span is supervised with on one encoded full sample (`input_ids`, `labels`) of prepared `row`
    (`frame_track_ids`, `frame_track_boxes` in source pixels, `gt_target_id`, `timestamps_s`, `gt_start_s`,
    `gt_end_s`), whose visual tokens are its frames in order, each `frame_size` (width, height) pixels;
    `frame_tracks`: its `track_cells` per frame, where already computed.

    Returns "guides" (`time_guides`, with `guides`), and the per-visual-token targets asked for: "span"
    (`span_cells`), "motion" (`motion_targets`), "place" (`place_targets`). One place for the symbolic
    diagnostic and SFT on real frames."""
    if frame_tracks is None:
        frame_tracks = [track_cells(list(ids), list(boxes), src_size, frame_size)
                        for ids, boxes in zip(row["frame_track_ids"], row["frame_track_boxes"], strict=True)]
    target_id = int(row["gt_target_id"])
    cells = (frame_size[1] // CELL_PX) * (frame_size[0] // CELL_PX)
    out: dict = {"guides": []}
    if guides:
        out["guides"] = time_guides(tokenizer, enc["input_ids"], enc["labels"], image_token_id, frame_tracks, target_id,
                                    row["timestamps_s"], row["gt_start_s"], row["gt_end_s"], answer_layer,
                                    motion_lookups, track_guide=track_guide)
    if span:
        nowhere = np.zeros(cells, bool)
        out["span"] = span_cells([t.get(target_id, nowhere) for t in frame_tracks], row["timestamps_s"],
                                 row["gt_start_s"], row["gt_end_s"])
    if motion:
        out["motion"] = motion_targets(row["frame_track_ids"], row["frame_track_boxes"], frame_tracks, cells)
    if place:
        out["place"] = place_targets(len(frame_tracks), frame_size[1] // CELL_PX, frame_size[0] // CELL_PX)
    return out
