"""Regex-constrained decoding for transformers: only tokens that keep the output a prefix of the
answer language (core.answer.answer_regex, the regex twin of the GBNF grammar) may be chosen.

The check uses the `regex` module's partial matching. To stay fast on a 150 k vocabulary, the
characters that may come next are found first (one partial match per printable ASCII character)
and only tokens starting with one of them are tested.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

#: Characters the answer language can contain (printable ASCII and newline).
_ALPHABET = [chr(c) for c in range(0x20, 0x7F)] + ["\n"]


class TokenTable:
    """The text of every token of a tokenizer (None for special tokens and partial UTF-8 bytes)."""

    def __init__(self, tokenizer) -> None:
        special = set(tokenizer.all_special_ids)
        size = len(tokenizer)
        texts: list[str | None] = [None] * size
        by_first: dict[str, list[int]] = defaultdict(list)
        for token_id in range(size):
            if token_id in special:
                continue
            text = tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)
            if not text or "\ufffd" in text or not all(ch in _ALPHABET for ch in text):
                continue
            texts[token_id] = text
            by_first[text[0]].append(token_id)
        self.texts = texts
        self.by_first = {ch: np.array(ids, dtype=np.int64) for ch, ids in by_first.items()}


class RegexLogitsProcessor:
    """A transformers logits processor: keeps the best `keep` tokens that extend a valid prefix.

    When the text so far is a complete match, only the end-of-sequence tokens remain allowed.
    """

    def __init__(self, table: TokenTable, pattern: str, prompt_length: int, eos_ids: list[int], keep: int = 1) -> None:
        import regex

        self.table = table
        self.pattern = regex.compile(pattern, flags=regex.DOTALL)
        self.prompt_length = prompt_length
        self.eos_ids = list(eos_ids)
        self.keep = max(1, keep)
        self._text = ""
        self._seen = prompt_length

    def _extend(self, input_ids) -> None:
        ids = input_ids[0].tolist()
        for token_id in ids[self._seen :]:
            self._text += self.table.texts[token_id] or ""
        self._seen = len(ids)

    def _valid(self, text: str) -> bool:
        return self.pattern.fullmatch(text, partial=True) is not None

    def __call__(self, input_ids, scores):
        import torch

        self._extend(input_ids)
        text = self._text
        allowed_mask = torch.full_like(scores, float("-inf"))
        if self.pattern.fullmatch(text) is not None:
            allowed_mask[0, self.eos_ids] = 0.0
            return scores + allowed_mask
        next_chars = [ch for ch in _ALPHABET if self._valid(text + ch)]
        candidates = [self.table.by_first[ch] for ch in next_chars if ch in self.table.by_first]
        if not candidates:
            allowed_mask[0, self.eos_ids] = 0.0  # dead end (cannot happen for a well-formed pattern)
            return scores + allowed_mask
        ids = np.concatenate(candidates)
        order = ids[np.argsort(-scores[0, torch.as_tensor(ids)].float().cpu().numpy(), kind="stable")]
        kept = []
        for token_id in order.tolist():
            if self._valid(text + self.table.texts[token_id]):
                kept.append(token_id)
                if len(kept) >= self.keep:
                    break
        allowed_mask[0, kept] = 0.0
        return scores + allowed_mask
