"""Paraphrased synthetic captions (`synthetic/paraphrase.py`) and `stvg-ros eval make-set --paraphrase`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from itertools import product

import numpy as np
import pytest

from stvg_ros.evaluation.benchsets import make_set
from stvg_ros.evaluation.loaders import load_annotations
from stvg_ros.synthetic.paraphrase import (
    DIRECTION_SYNONYMS,
    SHAPE_SYNONYMS,
    SIZE_SYNONYMS,
    paraphrase,
    paraphrase_annotations,
)
from stvg_ros.synthetic.scenes import CAPTION_TEMPLATES, COLOURS, DIRECTIONS, SHAPES, SIZES

LOOKS = [(size, colour, shape) for size in (None, *SIZES) for colour in COLOURS for shape in SHAPES]


def _description(look) -> str:
    size, colour, shape = look
    return f"{size} {colour} {shape}" if size else f"{colour} {shape}"


def _has(text: str, phrase: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(phrase)}(?![\w-])", text) is not None


def _has_direction(text: str, direction: str) -> bool:
    return re.search(rf"\b{direction}(wards?)?\b", text) is not None


def _captions():
    """Every template with every look, every direction where it has one, and a passed object
    cycling through every look (all looks x all directions x all passed objects is 150k captions)."""
    k = 0
    for kind, templates in CAPTION_TEMPLATES.items():
        for template, look in product(templates, LOOKS):
            for direction in DIRECTIONS if "{dir}" in template else [""]:
                other = LOOKS[(k * 37 + 11) % len(LOOKS)] if "{o}" in template else None
                k += 1
                caption = template.format(d=_description(look), dir=direction, o=_description(other) if other else "")
                yield kind, caption, look, direction, other


def test_every_template_look_and_direction_is_paraphrased_with_its_meaning():
    rng = np.random.default_rng(0)
    seen_templates, outputs = set(), set()
    for kind, caption, look, direction, other in _captions():
        seen_templates.add(kind)
        out = paraphrase(caption, rng)
        where = f"{caption!r} -> {out!r}"
        assert out and out != caption and out == out.lower() and len(out) <= 200, where
        assert out == " ".join(out.split()), where
        looks = [look] + ([other] if other else [])
        # colours: the named ones, and no other
        assert {c for c in COLOURS if _has(out, c)} == {c for _, c, _ in looks}, where
        # shapes: a synonym of each named shape, no synonym of another
        for shape in SHAPES:
            named = any(_has(out, s) for s in SHAPE_SYNONYMS[shape])
            assert named == (shape in {s for _, _, s in looks}), where
        # sizes: a synonym of each named size, no synonym of another
        for size in SIZES:
            named = any(_has(out, s) for s in SIZE_SYNONYMS[size])
            assert named == (size in {z for z, _, _ in looks}), where
        # directions: the template's (or its synonyms), no other
        for d in DIRECTIONS:
            assert _has_direction(out, d) == (d == direction), where
        if direction:
            assert any(_has(out, p) for p in DIRECTION_SYNONYMS[direction]), where
        outputs.add(out)
    assert seen_templates == set(CAPTION_TEMPLATES)
    assert len(outputs) > 1000  # not one fixed rewording per template


def test_paraphrases_vary_in_words_and_order():
    caption = "the red circle moving right"
    outs = {paraphrase(caption, np.random.default_rng(seed)) for seed in range(60)}
    assert len(outs) >= 20
    assert any(not o.startswith("the ") for o in outs)  # fronted: "heading right, the red circle"
    assert any("that is red" in o or "in red" in o for o in outs)  # colour after the shape
    assert any(_has(o, "to the right") or "rightward" in o for o in outs)
    assert any(w in o for o in outs for w in ("going", "heading", "travelling"))


def test_paraphrase_is_deterministic_given_the_generator():
    captions = [c for _, c, *_ in _captions()][::97]
    first = [paraphrase(c, np.random.default_rng(5)) for c in captions]
    again = [paraphrase(c, np.random.default_rng(5)) for c in captions]
    other = [paraphrase(c, np.random.default_rng(6)) for c in captions]
    assert first == again
    assert first != other
    rng_a, rng_b = np.random.default_rng(9), np.random.default_rng(9)
    assert [paraphrase(c, rng_a) for c in captions] == [paraphrase(c, rng_b) for c in captions]


def test_captions_outside_the_templates_get_word_synonyms_only():
    rng = np.random.default_rng(0)
    assert paraphrase("The red square  moving across", rng) == "the red square heading across"
    assert paraphrase("a man in black walks to the door", rng) == "a man in black walks to the door"


def _entry(caption: str, target_id: int) -> dict:
    return {"img_num": 60, "img_size": [240, 320], "st_frame": 11, "bbox": [[10, 20, 18, 18]] * 20,
            "st_time": 1.0, "ed_time": 2.9, "English": caption, "fps": 10.0, "target_id": target_id}  # fmt: skip


def test_paraphrase_annotations_round_trip(tmp_path):
    captions = ["the red circle moving right", "the large blue square that stops",
                "the green triangle moving up after it passes the small cyan hexagon"]  # fmt: skip
    source = {f"synth_0_{i:03d}.mp4": _entry(c, i + 1) for i, c in enumerate(captions)}
    src = tmp_path / "annotations.json"
    src.write_text(json.dumps(source, indent=1))
    assert paraphrase_annotations(src, tmp_path / "p1.json", seed=3) == 3
    assert paraphrase_annotations(src, tmp_path / "p2.json", seed=3) == 3
    assert paraphrase_annotations(src, tmp_path / "p3.json", seed=4) == 3
    assert (tmp_path / "p1.json").read_bytes() == (tmp_path / "p2.json").read_bytes()
    assert (tmp_path / "p1.json").read_bytes() != (tmp_path / "p3.json").read_bytes()
    assert json.loads(src.read_text()) == source  # the source is not touched
    out = json.loads((tmp_path / "p1.json").read_text())
    assert list(out) == list(source)
    for key, entry in out.items():
        assert entry["English"] != source[key]["English"]
        assert {k: v for k, v in entry.items() if k != "English"} == {
            k: v for k, v in source[key].items() if k != "English"
        }
    # an entry's paraphrase depends on the seed and its key only, not on the other entries
    single = tmp_path / "single.json"
    key = "synth_0_002.mp4"
    single.write_text(json.dumps({key: source[key]}))
    paraphrase_annotations(single, tmp_path / "p4.json", seed=3)
    assert json.loads((tmp_path / "p4.json").read_text())[key] == out[key]
    # it loads as the same queries, captions aside
    original, reworded = load_annotations(src), load_annotations(tmp_path / "p1.json")
    assert original.format == reworded.format and list(original.queries) == list(reworded.queries)
    for q in original:
        r = reworded.queries[q.query_id]
        assert (r.gt_start, r.gt_end, r.gt_boxes, r.target_id) == (q.gt_start, q.gt_end, q.gt_boxes, q.target_id)
        assert r.caption != q.caption


def test_paraphrase_annotations_rejects_other_formats(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"v.mp4": {"caption": "the red circle moving right"}}))
    with pytest.raises(ValueError, match="English"):
        paraphrase_annotations(bad, tmp_path / "out.json", seed=0)
    bad.write_text(json.dumps([{"English": "x"}]))
    with pytest.raises(ValueError, match="HC-STVG v2"):
        paraphrase_annotations(bad, tmp_path / "out.json", seed=0)


def test_make_set_paraphrase_flag(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "stvg_ros.cli.main", "eval", "make-set", "--out", str(tmp_path / "p"), "--count", "2",
         "--seconds", "6", "--level", "crossing", "--seed", "2", "--no-bags", "--paraphrase", "--json"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    manifest = json.loads(done.stdout)
    root = tmp_path / "p"
    assert manifest["annotations_paraphrased"] == "annotations_paraphrased.json"
    assert json.loads((root / "benchset.json").read_text())["annotations_paraphrased"] == "annotations_paraphrased.json"
    original = json.loads((root / "annotations.json").read_text())
    reworded = json.loads((root / "annotations_paraphrased.json").read_text())
    assert list(reworded) == list(original) and len(reworded) == 2
    for key, entry in reworded.items():
        assert entry["English"] != original[key]["English"]
        assert {k: v for k, v in entry.items() if k != "English"} == {
            k: v for k, v in original[key].items() if k != "English"
        }
    # seeded from --seed: the same as paraphrasing the set's annotations.json with it
    paraphrase_annotations(root / "annotations.json", tmp_path / "again.json", seed=2)
    assert (tmp_path / "again.json").read_bytes() == (root / "annotations_paraphrased.json").read_bytes()
    # without the flag the set is what it was: no extra file, no manifest key, same annotations
    plain = make_set(tmp_path / "q", level="crossing", count=2, seed=2, seconds=6.0, bags=False)
    assert "annotations_paraphrased" not in plain and not (tmp_path / "q" / "annotations_paraphrased.json").exists()
    assert (tmp_path / "q" / "annotations.json").read_bytes() == (root / "annotations.json").read_bytes()
    assert {k: v for k, v in manifest.items() if k not in ("root", "annotations_paraphrased")} == {
        k: v for k, v in plain.items() if k != "root"
    }
    assert list(json.loads((tmp_path / "q" / "benchset.json").read_text())) == [
        k for k in json.loads((root / "benchset.json").read_text()) if k != "annotations_paraphrased"
    ]
