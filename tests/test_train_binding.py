"""Target-match supervision (training/stvg_train/binding.py): which visual tokens show the asked object, and
the head's loss on the language model's hidden states."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stvg_train.binding import (
    ATTRIBUTE_LAYER,
    BEFORE_GUIDE,
    END_HEAD,
    EVENT_GUIDE,
    LABEL_GUIDE,
    MOTIONS,
    NOW_GUIDE,
    START_HEAD,
    TRACK_GUIDE,
    MotionHead,
    PlaceHead,
    TargetMatchHead,
    answer_time_digits,
    description_positions,
    example_guides,
    guide_loss,
    id_cells,
    match_scores,
    motion_targets,
    place_targets,
    span_cells,
    span_frames,
    target_cells,
    time_guides,
    unsupervised,
)
from tests.train_support import PieceTokenizer

SOURCE, FRAME = (320, 240), (224, 168)  # the frame is 8 x 6 merged cells of 28 px
# a large track 5 over the top-left quarter, a small track 7 in front of it; each ID is drawn at its centre
TRACKS, BOXES = [5, 7], [[0, 0, 160, 120], [20, 20, 60, 60]]


def test_target_cells_cover_the_body_and_own_id_but_not_another_tracks_id():
    big = target_cells(TRACKS, BOXES, 5, SOURCE, FRAME).reshape(6, 8)
    assert big.dtype == np.float32
    expected = np.zeros((6, 8), np.float32)
    expected[:3, :4] = 1.0  # the box covers 4 x 3 cells
    expected[0, 1] = 0.0  # where track 7's ID is drawn: that token says "7"
    np.testing.assert_array_equal(big, expected)

    small = target_cells(TRACKS, BOXES, 7, SOURCE, FRAME).reshape(6, 8)
    assert small[0, 1] == 1.0  # its own ID, inside the big box
    assert small[1, 2] == 0.0  # track 5's ID, inside the small box's reach
    assert small.sum() == 4.0 and small[2:].sum() == 0.0 and small[:, 2:].sum() == 0.0


def test_a_frame_without_the_target_has_no_match():
    assert target_cells(TRACKS, BOXES, 9, SOURCE, FRAME).tolist() == [0.0] * 48
    assert target_cells([], [], 5, SOURCE, FRAME).tolist() == [0.0] * 48


def _hidden(batch: int, length: int, width: int, layers: int = 3, seed: int = 0) -> tuple:
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, length, width, generator=generator) for _ in range(layers + 1))


def test_match_loss_is_taken_at_the_visual_tokens_of_its_layer_and_ignores_unsupervised_ones():
    image_token = 12
    input_ids = torch.tensor([[1, 12, 12, 12, 4], [1, 2, 12, 12, 0]])  # 5 visual tokens in the batch
    hidden = _hidden(2, 5, 16)
    head = TargetMatchHead(16, layer=2)
    targets = torch.tensor([1.0, 0.0, float("nan"), 1.0, 0.0])
    loss, logits = head.loss(hidden, input_ids, image_token, targets)
    assert logits.shape == (5,)
    visual = hidden[2][input_ids == image_token]
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        head.linear(visual).squeeze(-1)[[0, 1, 3, 4]], targets[[0, 1, 3, 4]])
    assert float(loss) == pytest.approx(float(expected))
    loss.backward()
    assert head.linear.weight.grad is not None and head.linear.weight.grad.abs().sum() > 0

    none, _ = head.loss(hidden, input_ids, image_token, unsupervised(5))  # e.g. "which numbers are drawn?"
    assert none is None
    with pytest.raises(ValueError, match="5 visual tokens but 4 match targets"):
        head.loss(hidden, input_ids, image_token, torch.zeros(4))


def test_the_head_learns_a_feature_the_hidden_states_carry_and_its_state_round_trips():
    image_token, generator = 3, torch.Generator().manual_seed(1)
    input_ids = torch.full((4, 12), image_token)
    hidden = list(_hidden(4, 12, 8, seed=1))
    targets = (torch.rand(48, generator=generator) < 0.3).float()
    hidden[2] = hidden[2].clone()
    hidden[2][..., 0] = (targets.view(4, 12) * 2 - 1) * 3  # feature 0 says "match"
    head = TargetMatchHead(8, layer=2)
    optimizer = torch.optim.SGD(head.parameters(), lr=0.5)
    first = None
    for _ in range(60):
        loss, _ = head.loss(tuple(hidden), input_ids, image_token, targets)
        first = first if first is not None else float(loss)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert float(loss) < 0.2 < first
    copy = TargetMatchHead(8, layer=2, seed=5)
    copy.load_state_dict(head.state_dict())
    _, logits = copy.loss(tuple(hidden), input_ids, image_token, targets)
    assert ((logits > 0).float() == targets).all()


class _FeatureModel(torch.nn.Module):
    """Hidden states whose feature 0 at a visual token is +1 on `marked` token positions, -1 elsewhere."""

    def __init__(self, marked: torch.Tensor) -> None:
        super().__init__()
        self.marked = marked

    def forward(self, input_ids, output_hidden_states=False, **_):
        assert output_hidden_states
        hidden = torch.zeros(*input_ids.shape, 4)
        hidden[..., 0] = self.marked.float() * 2 - 1
        return type("Out", (), {"hidden_states": (hidden, hidden, hidden)})()


def test_match_scores_count_samples_whose_most_confident_token_shows_the_target():
    image_token = 7
    input_ids = torch.tensor([[1, 7, 7, 7, 2], [1, 7, 7, 7, 2], [1, 7, 7, 7, 2]])
    marked = torch.tensor([[0, 1, 0, 0, 0], [0, 0, 0, 1, 0], [0, 1, 0, 0, 0]]).bool()
    # sample 0: the marked token is a target; sample 1: it is not; sample 2: unsupervised (not counted)
    targets = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0, float("nan"), float("nan"), float("nan")])
    head = TargetMatchHead(4, layer=2)
    with torch.no_grad():
        head.linear.weight.zero_()
        head.linear.weight[0, 0] = 1.0
    batches = [{"input_ids": input_ids, "labels": input_ids, "match": targets}]
    scores = match_scores(head, _FeatureModel(marked), batches, image_token)
    assert scores == {"top1": 0.5, "target_share": pytest.approx(2 / 6)}  # of the supervised tokens


def test_description_positions_find_the_asked_objects_words_not_a_later_ones():
    pieces = ["W", "hich", " the", " small", " red", " circle", " that", " passes", " the", " blue", " square", "?"]
    tokenizer = PieceTokenizer(pieces)
    assert description_positions(tokenizer, list(range(len(pieces))), len(pieces)) == [[4], [5], [3]]
    # no size word: an empty guide; words past the prompt are not searched
    pieces = ["the", " red", " circle", " big", " blue", " square"]
    assert description_positions(PieceTokenizer(pieces), list(range(6)), 6) == [[1], [2], []]
    assert description_positions(PieceTokenizer(pieces), list(range(6)), 2) == [[], [], []]


def test_example_guides_send_visual_tokens_to_the_words_and_the_answer_digits_to_the_asked_id():
    image = 99
    pieces = {0: "W", 1: " the", 2: " red", 3: " circle", 4: "?", 5: "O", 6: "bject", 7: " ", 8: "4", 9: "2", 10: "."}
    tokenizer = PieceTokenizer([pieces.get(i, "<img>") for i in range(100)])
    input_ids = [0, 1, 2, 3, 4, 99, 99, 99, 5, 6, 7, 8, 9, 10]
    labels = [-100] * 8 + input_ids[8:]
    guides = example_guides(tokenizer, input_ids, labels, image, np.array([False, True, False]), answer_layer=3)
    assert guides == [(ATTRIBUTE_LAYER, 0, [5, 6, 7], [2]), (ATTRIBUTE_LAYER, 1, [5, 6, 7], [3]),
                      (3, 0, [10, 11], [6])]  # the positions before "4" and "2" look at the ID's cell
    # the asked ID drawn nowhere: no answer guide
    assert [g[:2] for g in example_guides(tokenizer, input_ids, labels, image, np.zeros(3, bool), 3)] == [(0, 0), (0, 1)]


def test_id_cells_are_the_cells_reading_the_asked_number():
    cells = id_cells(TRACKS, BOXES, 7, SOURCE, FRAME).reshape(6, 8)
    assert cells.dtype == bool and cells[0, 1] and not cells[1, 2]
    assert not id_cells(TRACKS, BOXES, 9, SOURCE, FRAME).any()


def test_guide_loss_is_minus_log_the_attention_mass_on_the_keys_and_trains_it():
    scores = torch.zeros(2, 1, 4, 5, 5, requires_grad=True)  # (layers, batch, heads, queries, keys)

    def attentions():
        return [layer.softmax(-1) for layer in scores.unbind(0)]

    guides = [[(1, 2, [3, 4], [0, 1])], []]  # row 0: layer 1, head 2; row 1: none
    loss = guide_loss(attentions(), guides)
    assert float(loss) == pytest.approx(-np.log(2 / 5))  # uniform attention: 2 of 5 keys
    assert guide_loss(attentions(), [[], []]) is None
    optimizer = torch.optim.SGD([scores], lr=1.0)
    for _ in range(50):
        optimizer.zero_grad()
        guide_loss(attentions(), guides).backward()
        optimizer.step()
    assert float(attentions()[1][0, 2, 3, :2].sum()) > 0.9
    assert float(scores.grad[0].abs().sum()) == 0.0  # other layers untouched


def _clip_example():
    """A prompt with an event caption, three frames of two cells each, and a reasoning block + answer."""
    prompt = ['"', " the", " red", " circle", " that", " stops", '"', "\n"]
    for seconds in ("0.00", "1.50", "2.50"):
        prompt += ["Frame", " at", " ", seconds[0], ".", seconds[2], seconds[3], " s", ":", " ", "<vs>", "<img>", "<img>",
                   "<ve>"]
    answer = ["f", "rom", " ", "1", ".", "5", "0", " to", " ", "2", ".", "5", "0", ".", "</think>",
              "T", "ime", " range", ":", " ", "1", ".", "4", "0", " to", " ", "2", ".", "6", "0", "</answer>"]
    pieces = prompt + answer
    tokenizer = PieceTokenizer(pieces)
    image = pieces.index("<img>")
    input_ids = [image if p == "<img>" else i for i, p in enumerate(pieces)]
    labels = [-100] * len(prompt) + input_ids[len(prompt):]
    return tokenizer, pieces, input_ids, labels, image, len(prompt)


def test_answer_time_digits_are_the_start_and_end_times_of_the_reasoning_block_and_answer():
    _, pieces, _, labels, _, n = _clip_example()
    start, end = answer_time_digits(pieces, labels)
    assert "".join(pieces[i] for i in start) == "150140" and "".join(pieces[i] for i in end) == "250260"
    assert min(start) > n  # the prompt's frame labels are not answered
    assert answer_time_digits(pieces, [-100] * len(pieces)) == ([], [])


def test_span_frames_and_cells_take_the_sampled_frames_inside_the_span():
    times = [0.0, 1.5, 2.5, 4.0]
    assert span_frames(times, 1.4, 2.6) == (1, 2)
    assert span_frames(times, 1.6, 2.2) == (1, 1)  # none inside: the frame nearest the middle
    tracks = [np.array([True, False]), np.array([True, True]), np.array([False, True]), np.array([True, False])]
    nan = float("nan")
    np.testing.assert_array_equal(span_cells(tracks, times, 1.4, 2.6), [0, nan, 1, 1, nan, 1, 0, nan])


def test_time_guides_link_tracks_across_frames_words_labels_and_the_span():
    tokenizer, pieces, input_ids, labels, image, _ = _clip_example()
    # track 3 on cell 0 then cell 1 then cell 1; track 4 only in the first frame
    tracks = [{3: np.array([True, False]), 4: np.array([False, True])}, {3: np.array([False, True])},
              {3: np.array([False, True])}]
    guides = time_guides(tokenizer, input_ids, labels, image, tracks, 3, [0.0, 1.5, 2.5], 1.4, 2.6, answer_layer=3)
    visual = [i for i, t in enumerate(input_ids) if t == image]
    by_kind = {}
    for layer, head, queries, keys in guides:
        by_kind.setdefault((layer, head), []).append((queries, keys))
    # the track's cell in frame k looks at its cell in frame k - 1; track 4 has no earlier frame to look at
    assert by_kind[TRACK_GUIDE] == [([visual[3]], [visual[0]]), ([visual[5]], [visual[3]])]
    (queries, keys), = by_kind[EVENT_GUIDE]
    assert queries == visual and [pieces[k] for k in keys] == [" that", " stops"]
    assert ["".join(pieces[k] for k in keys) for _, keys in by_kind[LABEL_GUIDE]] == ["000", "150", "250"]
    assert [q for q, _ in by_kind[LABEL_GUIDE]] == [visual[0:2], visual[2:4], visual[4:6]]
    # the start digits (predicted one position earlier) look at track 3 in frame 1, the end digits in frame 2
    (queries, keys), = by_kind[(3, START_HEAD)]
    assert "".join(pieces[q + 1] for q in queries) == "150140" and keys == [visual[3]]
    (queries, keys), = by_kind[(3, END_HEAD)]
    assert "".join(pieces[q + 1] for q in queries) == "250260" and keys == [visual[5]]
    assert NOW_GUIDE not in by_kind and BEFORE_GUIDE not in by_kind
    with pytest.raises(ValueError, match="frames"):
        time_guides(tokenizer, input_ids, labels, image, tracks[:2], 3, [0.0, 1.5], 1.4, 2.6, answer_layer=3)


def test_motion_lookups_gather_a_tracks_cells_now_and_one_frame_earlier_in_one_layer():
    tokenizer, _, input_ids, labels, image, _ = _clip_example()
    tracks = [{3: np.array([True, True])}, {3: np.array([False, True])}, {}]
    guides = time_guides(tokenizer, input_ids, labels, image, tracks, 3, [0.0, 1.5, 2.5], 1.4, 2.6, answer_layer=3,
                         motion_lookups=True)
    visual = [i for i, t in enumerate(input_ids) if t == image]
    by_kind = {}
    for layer, head, queries, keys in guides:
        by_kind.setdefault((layer, head), []).append((queries, keys))
    assert by_kind[NOW_GUIDE] == [([visual[3]], [visual[3]])]
    assert by_kind[BEFORE_GUIDE] == [([visual[3]], [visual[0], visual[1]])]
    assert NOW_GUIDE[0] == BEFORE_GUIDE[0]  # one layer: its MLP sees both places


def test_motion_targets_say_how_each_track_moved_since_the_previous_frame():
    ids = [[3, 4], [3, 4], [3]]
    boxes = [[[0, 0, 10, 10], [50, 50, 60, 60]], [[20, 2, 30, 12], [51, 50, 61, 60]], [[20, 30, 30, 40]]]
    cells = [{3: np.array([True, False, False]), 4: np.array([False, False, True])},
             {3: np.array([False, True, False]), 4: np.array([False, False, True])},
             {3: np.array([True, False, False])}, ]
    targets = motion_targets(ids, boxes, cells, 3)
    names = [MOTIONS[t] if t >= 0 else None for t in targets.tolist()]
    # frame 0: nothing earlier; frame 1: track 3 went right, track 4 moved 1 px (still); frame 2: 3 went down
    assert names == [None, None, None, None, "right", "still", "down", None, None]
    assert motion_targets([[], [5]], [[], [[0, 0, 4, 4]]], [{}, {5: np.array([True, False, False])}], 3).tolist() == [-100] * 6


def test_motion_head_learns_the_classes_and_skips_unsupervised_tokens():
    torch.manual_seed(0)
    image = 7
    input_ids = torch.tensor([[1, 7, 7, 7, 7, 2]])
    hidden = tuple(torch.randn(1, 6, 8) for _ in range(3))
    targets = torch.tensor([0, -100, 3, 4])
    head = MotionHead(8, layer=1)
    loss, logits = head.loss(hidden, input_ids, image, targets)
    assert logits.shape == (4, len(MOTIONS)) and float(loss) == pytest.approx(np.log(len(MOTIONS)), abs=0.05)
    assert head.loss(hidden, input_ids, image, torch.full((4,), -100))[0] is None
    optimizer = torch.optim.Adam(head.parameters(), lr=0.1)
    for _ in range(100):
        optimizer.zero_grad()
        head.loss(hidden, input_ids, image, targets)[0].backward()
        optimizer.step()
    _, logits = head.loss(hidden, input_ids, image, targets)
    assert logits.argmax(-1)[[0, 2, 3]].tolist() == [0, 3, 4]
    with pytest.raises(ValueError, match="motion targets"):
        head.loss(hidden, input_ids, image, targets[:3])


def test_place_targets_and_head_give_each_visual_token_its_row_and_column():
    targets = place_targets(2, 2, 3)
    assert targets.tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]] * 2
    torch.manual_seed(0)
    input_ids = torch.tensor([[1] + [7] * 12 + [2]])
    hidden = tuple(torch.randn(1, 14, 16) for _ in range(2))
    head = PlaceHead(16, 2, 3, layer=1)
    labels = torch.from_numpy(targets)
    loss, _ = head.loss(hidden, input_ids, 7, labels)
    assert float(loss) == pytest.approx(np.log(2) + np.log(3), abs=0.1)
    optimizer = torch.optim.Adam(head.parameters(), lr=0.1)
    for _ in range(150):
        optimizer.zero_grad()
        head.loss(hidden, input_ids, 7, labels)[0].backward()
        optimizer.step()
    assert head.right(head.loss(hidden, input_ids, 7, labels)[1], labels) == (1.0, 1.0)
    with pytest.raises(ValueError, match="place targets"):
        head.loss(hidden, input_ids, 7, labels[:5])


def test_without_the_track_guide_its_head_is_free():
    tokenizer, _, input_ids, labels, image, _ = _clip_example()
    tracks = [{3: np.array([True, True])}, {3: np.array([False, True])}, {}]
    guides = time_guides(tokenizer, input_ids, labels, image, tracks, 3, [0.0, 1.5, 2.5], 1.4, 2.6, answer_layer=3,
                         motion_lookups=True, track_guide=False)
    kinds = {(layer, head) for layer, head, _, _ in guides}
    assert TRACK_GUIDE not in kinds and BEFORE_GUIDE in kinds and NOW_GUIDE in kinds
