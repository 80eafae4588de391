"""Helpers shared by the training tests."""

from __future__ import annotations


class PieceTokenizer:
    """A tokenizer stand-in whose token i decodes to pieces[i]."""

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = pieces

    def decode(self, ids: list[int]) -> str:
        return "".join(self.pieces[i] for i in ids)
