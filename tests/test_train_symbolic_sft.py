"""The perfect-perception diagnostic weighs exactly the answer's ID digits."""

from __future__ import annotations

import torch

from stvg_train.symbolic_sft import answer_id_weights


class PieceTokenizer:
    """Token i decodes to pieces[i]."""

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = pieces

    def decode(self, ids: list[int]) -> str:
        return "".join(self.pieces[i] for i in ids)


def test_only_the_id_digits_after_object_and_target_id_are_weighted():
    pieces = ["user", " 1", "5", "<think", ">Object", " ", "1", "5", "8", " from", " ", "3", ".", "0",
              "<answer", ">Target", " ID", ":", " ", "1", "5", "8", ",", " Time", " range", ":", " ", "3"]
    ids = torch.arange(len(pieces))
    labels = ids.clone()
    labels[:3] = -100  # the prompt: its digits are never weighted
    weights = answer_id_weights(PieceTokenizer(pieces), ids, labels, 5.0)
    weighted = [pieces[i] for i in range(len(pieces)) if weights[i] == 5.0]
    assert weighted == ["1", "5", "8", "1", "5", "8"]
    assert (weights[[i for i in range(len(pieces)) if weights[i] != 5.0]] == 1.0).all()
