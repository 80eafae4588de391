"""Paraphrased synthetic captions: the same query in other words, to test language generalisation.

A model trained on `scenes.CAPTION_TEMPLATES` may learn the templates rather than the language.
`paraphrase(caption, rng)` parses a generator caption back into its parts (event kind, target
description "[size ]colour shape", direction, the passed object) and writes it again with other
words and another word order, keeping its meaning: the colour word is kept as is, sizes, shapes,
directions and events only get synonyms that mean the same (large -> big, circle -> round shape,
right -> to the right / rightward, stops -> comes to rest, turns around -> does a u-turn, ...).
The result is lower-case, never equal to the input, and picked with `rng`, a numpy
`np.random.Generator`: the same caption and generator state give the same paraphrase.

Captions outside the generator's grammar (hand-written ones) only get word-level synonyms and may
come back unchanged.

`paraphrase_annotations(src, dst, seed)` copies an HC-STVG v2 annotation file (a synthetic set's
annotations.json) with every `English` caption paraphrased; each entry is seeded from (seed, its
key), so an entry's paraphrase does not depend on the others. `stvg-ros eval make-set --paraphrase`
writes one as annotations_paraphrased.json.
"""

from __future__ import annotations

import json
import re
import zlib
from pathlib import Path

import numpy as np

from stvg_ros.synthetic.scenes import CAPTION_TEMPLATES, COLOURS, DIRECTIONS, SHAPES, SIZES

#: Size word -> words with the same meaning (the size classes are relative: no "tiny", "huge").
SIZE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "small": ("small", "little"),
    "medium": ("medium", "medium-sized", "mid-sized"),
    "large": ("large", "big"),
}
#: Shape word -> noun phrases naming the same shape.
SHAPE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "round shape", "disc"),
    "square": ("square", "box shape", "square shape"),
    "triangle": ("triangle", "triangular shape"),
    "diamond": ("diamond", "diamond shape", "rhombus"),
    "hexagon": ("hexagon", "six-sided shape", "hexagonal shape"),
}
#: Screen direction -> phrases after a motion verb; each contains the direction word itself.
DIRECTION_SYNONYMS: dict[str, tuple[str, ...]] = {
    "right": ("right", "to the right", "rightward", "rightwards"),
    "left": ("left", "to the left", "leftward", "leftwards"),
    "up": ("up", "upward", "upwards"),
    "down": ("down", "downward", "downwards"),
}

_MOVING = ("moving", "going", "heading", "travelling")
_MOVES = ("moves", "goes", "heads", "travels")

# Event phrases per kind: (participle phrases, verb phrases after "that"/"which").
# {dirp}: a DIRECTION_SYNONYMS phrase, {dir}: the bare direction, {o}: the passed object,
# {moving}/{moves}: a motion verb. Phrases with {dir} before a noun ("a {dir} turn") are marked
# "lr": only for left/right.
_EVENTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "move": (
        ("{moving} {dirp}", "making its way {dirp}"),
        ("{moves} {dirp}", "is {moving} {dirp}", "makes its way {dirp}"),
    ),
    "stop": (
        ("coming to a halt", "coming to rest", "coming to a standstill", "halting", "stopping"),
        ("halts", "comes to rest", "comes to a halt", "comes to a standstill", "stops", "stops its motion"),
    ),
    "start": (
        ("setting off", "beginning to move", "starting to move", "getting going", "beginning to move off"),
        ("begins to move", "sets off", "begins moving", "gets going", "sets itself in motion"),
    ),
    "turn": (
        (
            "lr:making a {dir} turn",
            "lr:taking a {dir} turn",
            "lr:turning to the {dir}",
            "veering {dirp}",
            "turning {dirp}",
        ),
        ("lr:makes a {dir} turn", "lr:takes a {dir} turn", "lr:turns to the {dir}", "veers {dirp}", "turns {dirp}"),
    ),
    "reverse": (
        (
            "doing a u-turn",
            "making a u-turn",
            "turning back",
            "doubling back",
            "reversing its direction",
            "turning round",
        ),
        (
            "does a u-turn",
            "makes a u-turn",
            "turns back",
            "doubles back",
            "reverses its direction",
            "turns round",
            "goes back the way it came",
        ),
    ),
    "pass": (
        (
            "{moving} {dirp} after it passes the {o}",
            "{moving} {dirp} after going past the {o}",
            "{moving} {dirp} once it has passed the {o}",
            "still {moving} {dirp} after passing the {o}",
            "continuing {dirp} after it goes past the {o}",
        ),
        (
            "{moves} {dirp} after it passes the {o}",
            "keeps {moving} {dirp} after going past the {o}",
            "carries on {moving} {dirp} once it has passed the {o}",
            "continues {dirp} after passing the {o}",
            "goes on {moving} {dirp} after it has gone past the {o}",
        ),
    ),
}
#: Kinds whose participle also reads well after "that is" ("the red circle that is heading up").
_PROGRESSIVE = ("move", "pass")

_DESCRIPTION = rf"(?:(?:{'|'.join(SIZES)}) )?(?:{'|'.join(COLOURS)}) (?:{'|'.join(SHAPES)})"
_DIRECTION = "|".join(DIRECTIONS)
#: Word-level synonyms for captions outside the generator's grammar.
_WORDS = {"moving": "heading", "moves": "heads", "stops": "halts", "starts": "begins", "large": "big",
          "small": "little"}  # fmt: skip
_MAX_CHARS = 200
_PARAPHRASE_STREAM = 0x50415241  # keeps paraphrase seeds apart from the scene seeds of the same set seed


def _template_pattern(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{d\}|\{dir\}|\{o\})", template)
    groups = {"{d}": rf"(?P<d>{_DESCRIPTION})", "{dir}": rf"(?P<dir>{_DIRECTION})", "{o}": rf"(?P<o>{_DESCRIPTION})"}
    return re.compile("".join(groups.get(p, re.escape(p)) for p in parts))


_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    (kind, _template_pattern(template)) for kind, templates in CAPTION_TEMPLATES.items() for template in templates
]


def _pick(rng: np.random.Generator, options) -> str:
    return options[int(rng.integers(len(options)))]


def _parse_description(text: str) -> tuple[str | None, str, str]:
    words = text.split()
    size = words[0] if len(words) == 3 else None
    return size, words[-2], words[-1]


def _noun_phrase(text: str, rng: np.random.Generator, relative_ok: bool = True) -> tuple[str, bool]:
    """A description "[size ]colour shape" in other words; True when it ends in a relative clause."""
    size, colour, shape = _parse_description(text)
    noun = _pick(rng, SHAPE_SYNONYMS[shape])
    adjective = f"{_pick(rng, SIZE_SYNONYMS[size])} " if size else ""
    forms = ["plain", "in"] + (["relative"] if relative_ok else [])
    form = _pick(rng, forms)
    if form == "relative":
        return f"{adjective}{noun} that is {colour}", True
    if form == "in":
        return f"{adjective}{noun} in {colour}", False
    return f"{adjective}{colour} {noun}", False


def _event_phrase(phrase: str, direction: str, other: str, rng: np.random.Generator) -> str:
    return phrase.format(
        dir=direction,
        dirp=_pick(rng, DIRECTION_SYNONYMS[direction]) if direction else "",
        o=_noun_phrase(other, rng)[0] if other else "",
        moving=_pick(rng, _MOVING),
        moves=_pick(rng, _MOVES),
    )


def _phrases(kind: str, direction: str) -> tuple[list[str], list[str]]:
    participles, verbs = _EVENTS[kind]

    def usable(options):
        return [p.removeprefix("lr:") for p in options if not p.startswith("lr:") or direction in ("left", "right")]

    return usable(participles), usable(verbs)


def _rewrite(kind: str, groups: dict[str, str], rng: np.random.Generator) -> str:
    direction, other = groups.get("dir", ""), groups.get("o", "")
    participles, verbs = _phrases(kind, direction)
    structure = _pick(rng, ("participle", "relative", "fronted") + (("progressive",) if kind in _PROGRESSIVE else ()))
    noun, relative = _noun_phrase(groups["d"], rng, relative_ok=structure != "fronted")
    if structure == "participle":
        event = _event_phrase(_pick(rng, participles), direction, other, rng)
        return f"the {noun}, {event}" if relative else f"the {noun} {event}"
    if structure == "progressive":
        event = _event_phrase(_pick(rng, participles), direction, other, rng)
        return f"the {noun}, {event}" if relative else f"the {noun} that is {event}"
    if structure == "relative":
        event = _event_phrase(_pick(rng, verbs), direction, other, rng)
        return f"the {noun}, which {event}" if relative else f"the {noun} {_pick(rng, ('that', 'which'))} {event}"
    event = _event_phrase(_pick(rng, participles), direction, other, rng)
    return f"{event}, the {noun}"


def _parse(caption: str) -> tuple[str, dict[str, str]] | None:
    for kind, pattern in _PATTERNS:
        match = pattern.fullmatch(caption)
        if match and kind in _EVENTS:
            return kind, match.groupdict()
    return None


def paraphrase(caption: str, rng: np.random.Generator) -> str:
    """`caption` (a `scenes.CAPTION_TEMPLATES` caption) in other words with the same meaning.

    `rng` is a numpy Generator (`np.random.default_rng(seed)`); the result depends only on the
    caption and its state. Always lower-case and different from the caption when the caption is a
    generator caption; others get word-level synonyms only."""
    text = " ".join(caption.strip().lower().split())
    parsed = _parse(text)
    if parsed is None:
        return " ".join(_WORDS.get(word, word) for word in text.split())
    kind, groups = parsed
    for _ in range(8):
        out = _rewrite(kind, groups, rng)
        if out != text and len(out) <= _MAX_CHARS:
            return out
    # a fronted participle never starts with "the", as every template does
    participles, _ = _phrases(kind, groups.get("dir", ""))
    event = _event_phrase(participles[0], groups.get("dir", ""), groups.get("o", ""), rng)
    return f"{event}, the {_noun_phrase(groups['d'], rng, relative_ok=False)[0]}"


def entry_rng(seed: int, key: str) -> np.random.Generator:
    """The generator of one annotation entry: from the set's seed and the entry's key."""
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(key.encode()), _PARAPHRASE_STREAM]))


def paraphrase_annotations(src: Path, dst: Path, seed: int) -> int:
    """Copy the HC-STVG v2 annotations `src` ({video: {..., "English": caption}}) to `dst` with
    every caption paraphrased; the rest of each entry is unchanged. Returns the number of captions.
    Raises ValueError when `src` is not in that format or `seed` is negative."""
    src, dst = Path(src), Path(dst)
    if seed < 0:
        raise ValueError(f"the paraphrase seed must be non-negative, got {seed}")
    data = json.loads(src.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{src}: expected HC-STVG v2 annotations (an object keyed by video)")
    for key, entry in data.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("English"), str):
            raise ValueError(f"{src}: entry {key!r} has no 'English' caption")
        entry["English"] = paraphrase(entry["English"], entry_rng(seed, key))
    dst.write_text(json.dumps(data, indent=1))
    return len(data)


def paraphrase_set(src_root: Path, dst_root: Path, seed: int) -> int:
    """A synthetic set (`stvg-ros synth` / `eval make-set` folder) whose every query is paraphrased:
    `dst_root` gets paraphrased `queries.json` and `annotations.json`, a copy of `index.json`, and
    links to the source's videos, bags and gt. Returns the number of paraphrased queries."""
    src_root, dst_root = Path(src_root), Path(dst_root)
    dst_root.mkdir(parents=True, exist_ok=True)
    for name in ("videos", "bags", "gt"):
        link = dst_root / name
        if (src_root / name).is_dir() and not link.exists():
            link.symlink_to((src_root / name).resolve(), target_is_directory=True)
    (dst_root / "index.json").write_text((src_root / "index.json").read_text())
    paraphrase_annotations(src_root / "annotations.json", dst_root / "annotations.json", seed)
    queries = json.loads((src_root / "queries.json").read_text())
    if not isinstance(queries, list):
        raise ValueError(f"{src_root / 'queries.json'}: expected a list of queries")
    for rank, query in enumerate(queries):
        query["text"] = paraphrase(query["text"], entry_rng(seed, f"{query.get('video', '')}#{rank}"))
    (dst_root / "queries.json").write_text(json.dumps(queries, indent=1))
    return len(queries)
