"""The STVG-R1 prompt contract (METHOD.md §4-5): the one place that writes text for the model.

The template is a protocol constant: the released checkpoint was trained on it byte for byte,
so it is loaded from `stvg_r1_prompt.txt` and checked against its SHA-256 at import.
"""

from __future__ import annotations

import hashlib
from importlib import resources

TEMPLATE_SHA256 = "2f9d7b8cc4281de92b9c6101e69793e2dceec73bbfecdcc64d09394d1d99f963"
EVENT_PLACEHOLDER = "[EVENT]"
#: Longest query accepted, in characters (a caption is one sentence; longer input is refused).
MAX_QUERY_CHARS = 1000


def _load_template() -> str:
    text = resources.files("stvg_ros.core").joinpath("stvg_r1_prompt.txt").read_text(encoding="utf-8")
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    if digest != TEMPLATE_SHA256:
        raise RuntimeError(f"stvg_r1_prompt.txt was modified (sha256 {digest}, expected {TEMPLATE_SHA256})")
    return text


QUESTION_TEMPLATE: str = _load_template()


class QueryError(ValueError):
    """A query that cannot be sent to the model (empty, too long, not text)."""


def normalize_query(query: str | bytes) -> str:
    """Clean a user query the way training saw captions: one line, lower-case, no trailing '.'.

    Raises QueryError for empty, oversized or non-UTF-8 input.
    """
    if isinstance(query, bytes):
        try:
            query = query.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise QueryError(f"query is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    if not isinstance(query, str):
        raise QueryError(f"query must be text, got {type(query).__name__}")
    try:  # undecodable bytes from argv or a file arrive as lone surrogates
        query.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise QueryError(f"query is not valid UTF-8 (undecodable character at position {exc.start})") from None
    text = " ".join(query.split())  # newlines and tabs cannot break the template's paragraphs
    if len(text) > MAX_QUERY_CHARS:
        raise QueryError(f"query has {len(text)} characters; the limit is {MAX_QUERY_CHARS}")
    text = text.strip().lower()
    if text.endswith("."):
        text = text[:-1].rstrip()
    # The template quotes the event in double quotes; keep the user's text from closing them.
    text = text.replace('"', "'")
    if not text:
        raise QueryError("query is empty")
    return text


def build_question(query: str | bytes) -> str:
    """The user-turn text for `query`: the trained template with [EVENT] replaced."""
    return QUESTION_TEMPLATE.replace(EVENT_PLACEHOLDER, normalize_query(query))


def frame_label(seconds: float) -> str:
    """Text placed before each frame when a clip is sent as images (llama.cpp, TRL multi-image)."""
    return f"Frame at {seconds:.2f} s:"


def clip_user_content(question: str, timestamps_s, image_urls=None) -> list[dict]:
    """The user turn for a clip sent as images (llama.cpp, HTTP servers, TRL multi-image).

    The question first (METHOD §5: [text, video]), then for every frame its `frame_label` and the
    image. With `image_urls` (data URIs) the parts are OpenAI-style `image_url`; without, they are
    `{"type": "image"}` placeholders that a processor or TRL fills in order.
    """
    if image_urls is not None and len(image_urls) != len(timestamps_s):
        raise ValueError(f"{len(image_urls)} images but {len(timestamps_s)} timestamps")
    content: list[dict] = [{"type": "text", "text": question}]
    for index, seconds in enumerate(timestamps_s):
        content.append({"type": "text", "text": "\n" + frame_label(float(seconds)) + " "})
        if image_urls is None:
            content.append({"type": "image"})
        else:
            content.append({"type": "image_url", "image_url": {"url": image_urls[index]}})
    return content
