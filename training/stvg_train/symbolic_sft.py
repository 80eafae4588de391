"""Diagnostic: SFT of the language model on *symbolic* visual tokens, i.e. given perfect perception.

Every merged visual token of a prepared sample is replaced by a sum of learned embeddings of what a
perfect vision tower would put there: the drawn ID's digit per place (`id_reading.cell_targets`) and the
colour, shape and size of the object the cell shows (`id_reading.attribute_targets`; each track is
matched to its scene object by box IoU). The vision tower never runs. The held-out ID accuracy it
reaches bounds what SFT of the same language model can reach with any vision tower.

    python -m stvg_train.symbolic_sft --work-dir RUN --out OUT [--steps 400] [--which-object 32]
    # binding alone: single-frame which-object questions of freshly generated scenes
    python -m stvg_train.symbolic_sft --work-dir RUN --out OUT --fresh-scenes 1200 --which-object 64 --questions-only
    # the same with the target-match loss on the visual tokens (binding.py), which takes it off chance
    python -m stvg_train.symbolic_sft --work-dir RUN --out OUT --fresh-scenes 800 --which-object 64 --questions-only \
        --steps 800 --match-weight 1
    # the span: time guides (binding.time_guides), the span head, tokens that know their cell's place
    python -m stvg_train.symbolic_sft --work-dir RUN --out OUT --fresh-scenes 1500 --which-object 32 --steps 600 \
        --lr 3e-4 --match-weight 1 --guide-weight 1 --time-guides --span-weight 1 --cell-positions
    # the motion: each track's cells now and one frame earlier in one layer, fixed linear place codes (run 4),
    # then the span head after layer 3 (run 5); RUN2 is the run above continued for 200 steps (docs/training.md)
    python -m stvg_train.symbolic_sft --work-dir RUN --out OUT4 --init-state RUN2/final.pt --fresh-scenes 600 \
        --which-object 32 --steps 200 --lr 3e-4 --match-weight 1 --guide-weight 1 --time-guides --span-weight 1 \
        --cell-positions --motion-weight 1 --motion-lookups --fixed-positions 2
    python -m stvg_train.symbolic_sft --work-dir RUN --out OUT5 --init-state OUT4/final.pt --fresh-scenes 800 \
        --which-object 32 --steps 300 --lr 3e-4 --match-weight 1 --guide-weight 1 --time-guides --span-weight 2 \
        --span-layer 3 --cell-positions --motion-weight 1 --motion-lookups --fixed-positions 2
    # the place from M-RoPE alone: no place codes, the place head after the first layer (from run 5's state)
    python -m stvg_train.symbolic_sft --work-dir RUN --out OUT --init-state OUT5/final.pt --fresh-scenes 600 \
        --which-object 32 --steps 200 --lr 3e-4 --match-weight 1 --guide-weight 1 --time-guides --span-weight 2 \
        --span-layer 3 --motion-weight 1 --motion-lookups --place-weight 1
    # where a trained state looks (teacher-forced guide masses, span-head calls), with its run's options
    python -m stvg_train.symbolic_sft --work-dir RUN --out OUT2 --init-state OUT/final.pt --eval-only [options]

RUN is a `stvg-train recipe synth-small` work folder with its `data` and `init` stages done. Not part
of the recipe: it measures, it ships nothing. One JSON line per logged step goes to OUT/log.jsonl; the trained
state to OUT/last.pt at each evaluation and to OUT/final.pt at the end.
"""

from __future__ import annotations

import argparse
import json
import random
import time
import types
from pathlib import Path

import numpy as np

from stvg_train.binding import (
    DEFAULT_LAYER,
    GUIDED_ATTENTION,
    MotionHead,
    PlaceHead,
    TargetMatchHead,
    answer_id_digits,
    guide_loss,
    guide_masses,
    place_targets,
    sample_guides,
    sample_time_supervision,
    target_cells,
    track_cells,
    unsupervised,
)
from stvg_train.id_reading import CELL_PX, ID_DIGITS, NO_DIGIT, attribute_classes, attribute_targets, cell_targets
from stvg_train.sft import (
    FrameQuestion,
    VideoFrames,
    collate,
    encode_example,
    encode_frame_question,
    greedy_scores,
    id_questions,
    question_scores,
    reference_completion,
    unique_description,
    usable_rows,
    warmup_cosine_lr,
)


class SymbolicScenes:
    """Per prepared row, the (frames × cells, ID_DIGITS + 3) classes a perfect vision tower would encode;
    with `positions`, two more columns: the cell's row and column (a tower that says where a cell is)."""

    def __init__(self, scenes_dir: str | Path | None, source_size: tuple[int, int], frame_size: tuple[int, int],
                 positions: bool = False) -> None:
        self.scenes_dir, self.source_size, self.frame_size = Path(scenes_dir or "."), source_size, frame_size
        self.positions = positions
        self.names = attribute_classes()
        self.cache: dict[str, dict] = {}

    def scene(self, video: str) -> dict:
        if video not in self.cache:
            self.cache[video] = json.loads((self.scenes_dir / "gt" / f"{video}.json").read_text())
        return self.cache[video]

    def classes(self, row) -> np.ndarray:
        from stvg_ros.evaluation.metrics import box_iou

        scene = self.scene(row["video"])
        objects = {o["id"]: o for o in scene["objects"]}
        sx, sy = self.frame_size[0] / self.source_size[0], self.frame_size[1] / self.source_size[1]
        frames = []
        for t, ids, boxes in zip(row["timestamps_s"], row["frame_track_ids"], row["frame_track_boxes"], strict=True):
            shown = scene["frames"][min(round(t * scene["fps"]), len(scene["frames"]) - 1)]["objects"]
            digits, owner = cell_targets(ids, boxes, self.source_size, self.frame_size, with_owner=True)
            bodies = []
            for box in boxes:
                best = max(shown, key=lambda o, b=box: box_iou(np.asarray(b), np.asarray(o["xyxy"], float)))
                obj = objects[best["id"]]
                classes = tuple(names.index(obj[key]) for names, key in zip(self.names, ("colour", "shape", "size"),
                                                                           strict=True))
                bodies.append(([box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy], classes, obj["z"]))
            back_to_front = sorted(range(len(bodies)), key=lambda k: bodies[k][2])
            position = np.empty(len(bodies), np.int64)
            position[back_to_front] = np.arange(len(bodies))
            owner = np.where(owner >= 0, position[np.clip(owner, 0, None)] if len(bodies) else owner, owner)
            attributes = attribute_targets([bodies[k][:2] for k in back_to_front], owner, self.frame_size)
            columns = [digits[:, :ID_DIGITS], attributes]
            if self.positions:
                columns.append(place_targets(1, self.frame_size[1] // CELL_PX, self.frame_size[0] // CELL_PX))
            frames.append(np.concatenate(columns, axis=1))
        return np.concatenate(frames)


def set_linear_codes(table, norm: float, seed: int = 5) -> None:
    """Make an embedding table of places 0..n-1 a fixed code linear in the place: row i is
    (2i/(n-1) - 1) × `norm` × one random unit vector (so a difference of two places' codes is a multiple of
    the vector), frozen."""
    import torch

    places = table.weight.shape[0]
    direction = torch.randn(table.weight.shape[1], generator=torch.Generator().manual_seed(seed + places))
    steps = torch.linspace(-1.0, 1.0, places).unsqueeze(1)
    with torch.no_grad():
        table.weight.copy_(steps * norm * direction / direction.norm())
    table.weight.requires_grad_(False)


#: Where prep's clip buffer (2 fps, 10-s scenes) puts the 8 sampled frames.
FRAME_TIMES_S = (0.0, 1.5, 2.5, 4.0, 5.5, 7.0, 8.0, 9.5)


def fresh_scene_rows(scenes: SymbolicScenes, seed: int, count: int, spec: dict) -> list[dict]:
    """Rows like prep's from `count` newly generated scenes with perfect perception: the scene's own
    objects as tracks (at least half visible), numbered 1..K in order of first appearance; blank images
    (the symbolic classes replace them). Unlimited training data without rendering or perception."""
    from PIL import Image

    from stvg_ros.core.prompt import build_question
    from stvg_ros.grounding.sampling import clip_numbers
    from stvg_ros.synthetic.scenes import SceneSpec, generate_scene, scene_seed

    blank = Image.new("RGB", scenes.frame_size)
    rows = []
    for index in range(count):
        gt = generate_scene(scene_seed(seed, index), SceneSpec(**spec)).gt_json()
        scenes.cache[gt["name"]] = gt
        shown = [sorted((o for o in gt["frames"][min(round(t * gt["fps"]), len(gt["frames"]) - 1)]["objects"]
                         if o.get("visible", 1) >= 0.5), key=lambda o: o["id"]) for t in FRAME_TIMES_S]
        numbers = clip_numbers([[o["id"] for o in objects] for objects in shown])  # as the robot numbers a clip
        ids = [[numbers[o["id"]] for o in objects] for objects in shown]
        boxes = [[[float(v) for v in o["xyxy"]] for o in objects] for objects in shown]
        for query in gt["queries"]:
            if query["target_id"] not in numbers:
                continue
            rows.append({"video": gt["name"], "caption": query["text"], "question": build_question(query["text"]),
                         "images": [blank] * len(FRAME_TIMES_S), "timestamps_s": list(FRAME_TIMES_S),
                         "frame_track_ids": ids, "frame_track_boxes": boxes, "gt_target_id": numbers[query["target_id"]],
                         "gt_start_s": float(query["start_s"]), "gt_end_s": float(query["end_s"]),
                         "numbered_objects": sorted(numbers, key=numbers.get)})  # number n: object [n - 1]
    return rows


def fresh_which_object_questions(rows: list[dict], scenes: SymbolicScenes) -> list[FrameQuestion]:
    """"Which object is the <description>?" -> "Object N." on every frame of `fresh_scene_rows`' scenes, for
    every object drawn there that its colour and shape (and size) name alone (one video's rows share frames)."""
    questions, seen = [], set()
    for index, row in enumerate(rows):
        if row["video"] in seen:
            continue
        seen.add(row["video"])
        objects = scenes.cache[row["video"]]["objects"]
        for frame, numbers in enumerate(row["frame_track_ids"]):
            for number in numbers:
                description = unique_description(objects, row["numbered_objects"][number - 1])
                if description is not None:
                    questions.append(FrameQuestion(index, frame, f"Which object is the {description}?",
                                                   f"Object {number}.", number))
    return questions


def release_freed_memory() -> None:
    """Give freed heap memory back to the OS (glibc): the processor's pixel arrays of every encoded
    sample are freed at once, but between the small tensors kept they fragment the heap (≈ 4 MB per
    sample otherwise, 23 GB for 8 k samples)."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def clip_local_ids(row: dict) -> dict:
    """The row with its drawn IDs renumbered 1..K as the robot numbers a clip (`grounding.sampling.clip_numbers`:
    first appearance, within a frame the oldest ID first), gt_target_id too (-1 where never drawn)."""
    from stvg_ros.grounding.sampling import clip_numbers

    numbers = clip_numbers(row["frame_track_ids"])
    return {"frame_track_ids": [[numbers[int(t)] for t in ids] for ids in row["frame_track_ids"]],
            "gt_target_id": numbers.get(int(row["gt_target_id"]), -1)}


def init_from_words(tables, word_embeddings, tokenizer) -> None:
    """Each digit class at the embedding of its digit token, each attribute class at its word's (" red")."""
    import torch

    def embedding_of(text: str):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return word_embeddings[ids].mean(0)

    with torch.no_grad():
        for table in tables[:ID_DIGITS]:
            for digit in range(10):
                table.weight[digit] = embedding_of(str(digit)) / ID_DIGITS
        for table, names in zip(tables[ID_DIGITS:], attribute_classes(), strict=True):
            for k, name in enumerate(names):
                table.weight[k] = embedding_of(" " + name)


def answer_id_weights(tokenizer, input_ids, labels, weight: float):
    """Per-token loss weights: `weight` on the digits of the ID after "Object " and "Target ID: "."""
    import torch

    weights = torch.ones(len(input_ids))
    weights[answer_id_digits(tokenizer, input_ids, labels)] = weight
    return weights


def main(argv: list[str] | None = None) -> None:
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from stvg_ros.grounding.sampling import smart_resize
    from stvg_train.grpo import set_pixel_budget
    from stvg_train.recipe import load_recipe

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", required=True, help="a synth-small recipe folder (data + init done)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", help="default: WORK/init")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--which-object", type=int, default=0, help="single-frame which-object questions per step")
    parser.add_argument("--id-weight", type=float, default=1.0, help="loss weight of the answer's ID digits")
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--eval-samples", type=int, default=40)
    parser.add_argument("--limit", type=int, default=0, help="use the first N training samples only")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clip-local-ids", action="store_true",
                        help="renumber each sample's drawn IDs 1..K in order of first appearance")
    parser.add_argument("--fresh-scenes", type=int, default=0,
                        help="train on this many newly generated scenes with perfect tracks instead of WORK's")
    parser.add_argument("--questions-only", action="store_true",
                        help="train on the which-object questions alone (needs --which-object N)")
    parser.add_argument("--match-weight", type=float, default=0.0,
                        help="weight of the target-match loss on the visual tokens (binding.py; 0: none)")
    parser.add_argument("--match-layer", type=int, default=0, help="decoder layers below the match head (0: default)")
    parser.add_argument("--word-init", action="store_true",
                        help="start each symbolic embedding at the language model's embedding of its word or digit")
    parser.add_argument("--init-state", help="start from another run's OUT/final.pt (model, embeddings, match head)")
    parser.add_argument("--guide-weight", type=float, default=0.0,
                        help="weight of the attention guides (binding.guide_loss; 0: none)")
    parser.add_argument("--cell-positions", action="store_true",
                        help="the symbolic tokens also say where their cell is (row, column embeddings)")
    parser.add_argument("--time-guides", action="store_true",
                        help="add binding.time_guides (weighted by --guide-weight): track, event words, labels, span")
    parser.add_argument("--span-weight", type=float, default=0.0,
                        help="weight of the span head's loss (the asked object's cells in the span's frames)")
    parser.add_argument("--span-layer", type=int, default=0,
                        help="decoder layers below the span head (0: the match head's)")
    parser.add_argument("--motion-weight", type=float, default=0.0,
                        help="weight of the motion head's loss (each track's move since the previous frame, layer 1)")
    parser.add_argument("--motion-lookups", action="store_true",
                        help="with --time-guides: layer 1 gathers each track's cells now and one frame earlier "
                             "(binding.NOW_GUIDE, BEFORE_GUIDE); the motion head reads after layer 2")
    parser.add_argument("--fixed-positions", type=float, default=0.0,
                        help="with --cell-positions: fixed codes linear in the row and column, of this norm at the "
                             "far edge, instead of learned embeddings (0: learned)")
    parser.add_argument("--place-weight", type=float, default=0.0,
                        help="weight of the place head's loss (binding.PlaceHead: each visual token's row and column "
                             "after the first decoder layer, from M-RoPE alone; frees TRACK_GUIDE's head)")
    parser.add_argument("--eval-only", action="store_true", help="evaluate --init-state's model and exit")
    args = parser.parse_args(argv)
    if args.time_guides and args.guide_weight <= 0:
        parser.error("--time-guides needs --guide-weight > 0")
    if args.motion_lookups and not args.time_guides:
        parser.error("--motion-lookups needs --time-guides")
    if args.fixed_positions and not args.cell_positions:
        parser.error("--fixed-positions needs --cell-positions")
    if args.place_weight and args.cell_positions:
        parser.error("--place-weight asks the model to work out the place: not with --cell-positions, which give it")

    torch.set_num_threads(args.threads)
    work, out = Path(args.work_dir), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    processor = AutoProcessor.from_pretrained(args.model or work / "init")
    recipe = load_recipe(str(work / "recipe.yaml"))
    spec = dict(recipe["scenes"])
    source_size = (int(spec["width"]), int(spec["height"]))
    height, width = smart_resize(source_size[1], source_size[0], max_pixels=int(recipe["max_pixels"]))
    cells_per_frame = (height // CELL_PX) * (width // CELL_PX)
    set_pixel_budget(processor, max_pixels=int(recipe["max_pixels"]))
    model = AutoModelForImageTextToText.from_pretrained(
        args.model or work / "init", dtype=torch.float32,
        attn_implementation=GUIDED_ATTENTION if args.guide_weight > 0 else None).train()
    hidden = model.config.text_config.hidden_size
    torch.manual_seed(0)
    tables = torch.nn.ModuleList([torch.nn.Embedding(NO_DIGIT + 1, hidden) for _ in range(ID_DIGITS)]
                                 + [torch.nn.Embedding(len(n) + 1, hidden) for n in attribute_classes()]
                                 + [torch.nn.Embedding(n, hidden) for n in ((height // CELL_PX, width // CELL_PX)
                                                                            if args.cell_positions else ())])
    for table in tables:
        torch.nn.init.normal_(table.weight, std=0.02)
    if args.word_init:
        init_from_words(tables, model.get_input_embeddings().weight, processor.tokenizer)

    match = None
    if args.match_weight > 0:
        match = TargetMatchHead(hidden, args.match_layer or DEFAULT_LAYER)
    span_layer = args.span_layer or args.match_layer or DEFAULT_LAYER
    span = TargetMatchHead(hidden, span_layer, seed=1) if args.span_weight > 0 else None
    motion = MotionHead(hidden, layer=2 if args.motion_lookups else 1) if args.motion_weight > 0 else None
    grid = (height // CELL_PX, width // CELL_PX)
    place = PlaceHead(hidden, *grid) if args.place_weight > 0 else None
    if args.init_state:
        state = torch.load(args.init_state)
        model.load_state_dict(state["model"])
        tables.load_state_dict(state["tables"], strict=args.cell_positions)  # without: no place tables
        if match is not None and state.get("match"):
            match.load_state_dict(state["match"])
        # a head is kept where it reads the same layer (states before "layers" was saved: span 2, motion 1)
        saved = {"span": DEFAULT_LAYER, "motion": 1, "place": 1, **state.get("layers", {})}
        for name, head in (("span", span), ("motion", motion), ("place", place)):
            if head is not None and state.get(name) and saved[name] == head.layer:
                head.load_state_dict(state[name])
    if args.fixed_positions:
        for table in tables[-2:]:
            set_linear_codes(table, args.fixed_positions)
    image_token = model.config.image_token_id
    answer_layer = model.config.text_config.num_hidden_layers - 1
    guided = args.guide_weight > 0

    def guides_of(enc: dict, frames_ids, frames_boxes, target_id: int) -> list:
        return sample_guides(processor.tokenizer, enc, image_token, frames_ids, frames_boxes, target_id, source_size,
                             (width, height), answer_layer)

    def frames_track_cells(row) -> list[dict[int, np.ndarray]]:
        return [track_cells(list(ids), list(boxes), source_size, (width, height))
                for ids, boxes in zip(row["frame_track_ids"], row["frame_track_boxes"], strict=True)]

    def image_features(pixel_values, image_grid_thw=None, **_):
        embedded = sum(table(pixel_values[:, k]) for k, table in enumerate(tables))
        return types.SimpleNamespace(pooler_output=torch.split(embedded, (image_grid_thw.prod(-1) // 4).tolist()))

    model.model.get_image_features = image_features  # the symbolic classes travel as "pixel_values"

    def encode(rows, scenes: SymbolicScenes, index: int, with_answer: bool) -> dict:
        row = rows[index]
        completion = reference_completion(row["gt_target_id"], row["gt_start_s"], row["gt_end_s"])
        enc = encode_example(processor, row, completion if with_answer else None)
        enc["pixel_values"] = torch.from_numpy(scenes.classes(row))
        if with_answer:
            enc["weights"] = answer_id_weights(processor.tokenizer, enc["input_ids"], enc["labels"], args.id_weight)
        if with_answer and guided:
            enc["guides"] = guides_of(enc, row["frame_track_ids"], row["frame_track_boxes"], row["gt_target_id"])
        if with_answer and (args.time_guides or any(h is not None for h in (span, motion, match, place))):
            tracks = frames_track_cells(row)
            nowhere = np.zeros(cells_per_frame, bool)
            if match is not None:
                enc["match"] = torch.from_numpy(np.concatenate(
                    [t.get(row["gt_target_id"], nowhere) for t in tracks]).astype(np.float32))
            timed = sample_time_supervision(
                processor.tokenizer, enc, image_token, row, source_size, (width, height), answer_layer,
                guides=args.time_guides, motion_lookups=args.motion_lookups, track_guide=place is None,
                span=span is not None, motion=motion is not None, place=place is not None, frame_tracks=tracks)
            enc["guides"] = enc.get("guides", []) + timed.pop("guides")
            enc.update({name: torch.from_numpy(targets) for name, targets in timed.items()})
        return enc

    def batch_of(examples: list[dict]) -> dict:
        batch = collate(examples, processor.tokenizer.pad_token_id)
        batch["pixel_values"] = torch.cat([e["pixel_values"] for e in examples])
        if match is not None:
            batch["match"] = torch.cat([e["match"] for e in examples])
        if any("motion" in e for e in examples):
            batch["motion"] = torch.cat([e["motion"] if "motion" in e else torch.full((len(e["pixel_values"]),), -100)
                                         for e in examples])
        if any("place" in e for e in examples):
            batch["place"] = torch.cat([e["place"] if "place" in e else torch.zeros((len(e["pixel_values"]), 2),
                                                                                    dtype=torch.long)
                                        for e in examples])
        if any("span" in e for e in examples):
            batch["span"] = torch.cat([e["span"] if "span" in e else unsupervised(len(e["pixel_values"]))
                                       for e in examples])
        if guided:
            batch["guides"] = [e.get("guides", []) for e in examples]
        return batch

    def match_loss(batch: dict, output):
        loss, _ = match.loss(output.hidden_states, batch["input_ids"], image_token, batch["match"])
        return args.match_weight * loss if loss is not None else 0.0

    span_losses: list[float] = []
    motion_losses: list[float] = []
    place_losses: list[float] = []

    def head_loss(head, weight: float, logged: list[float], batch: dict, targets, output):
        """`weight` × a token head's loss (0 without the head or supervised tokens); logged apart."""
        if head is None or targets is None:
            return 0.0
        loss, _ = head.loss(output.hidden_states, batch["input_ids"], image_token, targets)
        if loss is None:
            return 0.0
        logged.append(float(loss.detach()))
        return weight * loss

    guide_losses: list[float] = []

    def guidance(guides, output):
        if not guided:
            return 0.0
        loss = guide_loss(output.attentions, guides)
        if loss is None:
            return 0.0
        guide_losses.append(float(loss.detach()))
        return args.guide_weight * loss

    started = time.monotonic()
    train_scenes = SymbolicScenes(work / "synthetic-train", source_size, (width, height), args.cell_positions)
    val_scenes = SymbolicScenes(work / "synthetic-val", source_size, (width, height), args.cell_positions)
    train_rows, val_rows = usable_rows(str(work / "prepared-train")), usable_rows(str(work / "prepared-val"))
    if args.limit:
        train_rows = train_rows.select(range(min(args.limit, len(train_rows))))
    if args.clip_local_ids:
        train_rows, val_rows = train_rows.map(clip_local_ids), val_rows.map(clip_local_ids)
    if args.fresh_scenes:
        train_scenes = SymbolicScenes(None, source_size, (width, height), args.cell_positions)
        train_rows = fresh_scene_rows(train_scenes, 31337, args.fresh_scenes, spec)
    if args.questions_only and not args.which_object:
        parser.error("--questions-only needs --which-object N (questions per step)")
    train = []
    for i in range(0 if args.questions_only or args.eval_only else len(train_rows)):
        train.append(encode(train_rows, train_scenes, i, True))
        if i % 256 == 255:
            release_freed_memory()
    val = [(val_rows[i], encode(val_rows, val_scenes, i, False))
           for i in range(0 if args.questions_only else min(args.eval_samples, len(val_rows)))]
    # teacher-forced on the same samples: the guides' attention and the span head, where they are trained
    answered = ([encode(val_rows, val_scenes, i, True) for i in range(len(val))]
                if guided or any(h is not None for h in (span, motion, place)) else [])

    def questions(rows, scenes: SymbolicScenes, picked) -> list[dict]:
        frames, classes, encoded = rows if isinstance(rows, list) else VideoFrames(rows), {}, []
        for q in picked:
            if q.row not in classes:
                classes[q.row] = torch.from_numpy(scenes.classes(rows[q.row]))
            enc = encode_frame_question(processor, frames[q.row], q)
            enc["pixel_values"] = classes[q.row][q.frame * cells_per_frame:(q.frame + 1) * cells_per_frame]
            row = frames[q.row]  # the frame lists, read once per video
            if guided:
                enc["guides"] = guides_of(enc, [row["frame_track_ids"][q.frame]], [row["frame_track_boxes"][q.frame]],
                                          q.target_id)
            if match is not None:
                enc["match"] = torch.from_numpy(target_cells(
                    row["frame_track_ids"][q.frame], row["frame_track_boxes"][q.frame], q.target_id, source_size,
                    (width, height)))
            encoded.append(enc)
            if len(encoded) % 256 == 0:
                release_freed_memory()
        release_freed_memory()
        return encoded

    which, which_val = [], []
    if args.which_object and args.fresh_scenes:  # held out: scenes of another seed, perfect tracks too
        which = questions(train_rows, train_scenes, fresh_which_object_questions(train_rows, train_scenes))
        held_scenes = SymbolicScenes(None, source_size, (width, height), args.cell_positions)
        held_rows = fresh_scene_rows(held_scenes, 4242, 60, spec)
        asked = random.Random(0).sample(fresh_which_object_questions(held_rows, held_scenes), 192)
        held = questions(held_rows, held_scenes, asked)
        which_val = [batch_of(held[i:i + 16]) for i in range(0, len(held), 16)]
    elif args.which_object:
        which = questions(train_rows, train_scenes, id_questions(train_rows, work / "synthetic-train"))
        asked = random.Random(0).sample(id_questions(val_rows, work / "synthetic-val"), 48)
        held = questions(val_rows, val_scenes, asked)
        which_val = [batch_of(held[i:i + 16]) for i in range(0, len(held), 16)]
    print(json.dumps({"encoded": len(train), "which_object": len(which), "s": round(time.monotonic() - started)}),
          flush=True)

    def evaluate() -> dict:
        scores = greedy_scores(model, processor, [row for row, _ in val], encoded=[enc for _, enc in val]) if val else {}
        if which_val:
            scores.update({f"which_object_{k}": v for k, v in question_scores(model, which_val).items()})
        if answered:
            scores.update(teacher_forced_scores())
        return scores

    def teacher_forced_scores() -> dict:
        """Mean attention mass of each guide kind, and the span head's per-frame calls on the asked track
        (its mean logit over the track's cells > 0 means "inside the span") against the GT."""
        masses: dict[str, list[float]] = {}
        calls, motion_calls, place_calls = [], [], []
        model.eval()
        for i in range(0, len(answered), 8):
            examples = answered[i:i + 8]
            batch = batch_of(examples)
            batch.pop("labels")
            batch.pop("match", None)
            targets, guides, moves = batch.pop("span", None), batch.pop("guides", None), batch.pop("motion", None)
            places = batch.pop("place", None)
            with torch.no_grad():
                output = model(**batch, output_hidden_states=True, output_attentions=guided)
                logits = span.loss(output.hidden_states, batch["input_ids"], image_token, targets)[1] if span else None
                if motion is not None and moves is not None:
                    _, motion_logits = motion.loss(output.hidden_states, batch["input_ids"], image_token, moves)
                    known = moves != -100
                    motion_calls.extend((motion_logits[known].argmax(-1) == moves[known]).tolist())
                if place is not None and places is not None:
                    place_calls.append(place.right(place.loss(output.hidden_states, batch["input_ids"], image_token,
                                                              places)[1], places))
            if guides:
                for kind, values in guide_masses(output.attentions, guides, answer_layer).items():
                    masses.setdefault(kind, []).extend(values)
            if logits is not None:  # the span targets are set on the asked track's cells only
                for frame in range(len(targets) // cells_per_frame):
                    cells = slice(frame * cells_per_frame, (frame + 1) * cells_per_frame)
                    asked = ~torch.isnan(targets[cells])
                    if bool(asked.any()):
                        calls.append((float(logits[cells][asked].mean()) > 0, bool(targets[cells][asked].max() > 0)))
        model.train()
        scores = {f"mass_{kind}": round(float(np.mean(v)), 3) for kind, v in masses.items()}
        if place_calls:
            scores["place_row_right"], scores["place_column_right"] = (round(float(np.mean(v)), 3)
                                                                       for v in zip(*place_calls, strict=True))
        if motion_calls:
            scores["motion_right"] = round(float(np.mean(motion_calls)), 3)
        if calls:
            inside = [c for c in calls if c[1]]
            scores.update(span_frames_right=round(float(np.mean([p == t for p, t in calls])), 3),
                          span_frames_inside_found=round(float(np.mean([p for p, _ in inside])), 3) if inside else 0.0,
                          span_frames_inside_share=round(len(inside) / len(calls), 3))
        return scores

    if args.eval_only:
        if not args.init_state:
            parser.error("--eval-only needs --init-state")
        print(json.dumps({"init_state": args.init_state, **evaluate()}), flush=True)
        return

    params = [*model.parameters(), *(p for p in tables.parameters() if p.requires_grad),
              *(p for head in (match, span, motion, place) if head for p in head.parameters())]
    optimizer = torch.optim.AdamW(params, lr=args.lr)
    rng, order, recent = random.Random(0), [], []

    def save_state(path: Path) -> None:
        """The trained state (`--init-state` reads it): model, symbolic tables, heads and their layers."""
        heads = {"span": span, "motion": motion, "place": place}
        torch.save({"model": model.state_dict(), "tables": tables.state_dict(),
                    "match": match.state_dict() if match else None,
                    **{name: head.state_dict() if head else None for name, head in heads.items()},
                    "layers": {name: head.layer for name, head in heads.items() if head}}, path)

    with (out / "log.jsonl").open("w") as log:
        for step in range(1, args.steps + 1):
            for group in optimizer.param_groups:
                group["lr"] = warmup_cosine_lr(args.lr, 50, args.steps, step - 1)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = torch.zeros(())
                if train:
                    if len(order) < args.batch_size:
                        epoch = list(range(len(train)))
                        rng.shuffle(epoch)
                        order += epoch
                    picked, order = order[: args.batch_size], order[args.batch_size:]
                    batch = batch_of([train[i] for i in picked])
                    labels = batch.pop("labels")[:, 1:]
                    targets = batch.pop("match", None)
                    span_targets = batch.pop("span", None)
                    moves = batch.pop("motion", None)
                    places = batch.pop("place", None)
                    guides = batch.pop("guides", None)
                    heads = (match, span, motion, place)
                    output = model(**batch, output_hidden_states=any(h is not None for h in heads),
                                   output_attentions=guided)
                    logits = output.logits[:, :-1].float()
                    per_token = torch.nn.functional.cross_entropy(
                        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none",
                        ignore_index=-100).view(labels.shape)
                    weights = torch.nn.utils.rnn.pad_sequence([train[i]["weights"] for i in picked], batch_first=True)
                    loss = (per_token * weights[:, 1:] * (labels != -100)).sum() / (labels != -100).sum()
                    if match is not None:
                        loss = loss + match_loss({**batch, "match": targets}, output)
                    loss = loss + guidance(guides, output)
                    loss = loss + head_loss(span, args.span_weight, span_losses, batch, span_targets, output)
                    loss = loss + head_loss(motion, args.motion_weight, motion_losses, batch, moves, output)
                    loss = loss + head_loss(place, args.place_weight, place_losses, batch, places, output)
                if which:
                    batch = batch_of([rng.choice(which) for _ in range(args.which_object)])
                    targets = batch.pop("match", None)
                    guides = batch.pop("guides", None)
                    output = model(**batch, output_hidden_states=match is not None, output_attentions=guided)
                    loss = loss + output.loss
                    if match is not None:
                        loss = loss + match_loss({**batch, "match": targets}, output)
                    loss = loss + guidance(guides, output)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad()
            recent.append(float(loss.detach()))
            if step % 10 == 0 or step == args.steps:
                entry = {"step": step, "loss": sum(recent) / len(recent), "elapsed_s": round(time.monotonic() - started)}
                recent = []
                if guide_losses:
                    entry["guide_loss"] = round(sum(guide_losses) / len(guide_losses), 4)
                    guide_losses.clear()
                if motion_losses:
                    entry["motion_loss"] = round(sum(motion_losses) / len(motion_losses), 4)
                    motion_losses.clear()
                if place_losses:
                    entry["place_loss"] = round(sum(place_losses) / len(place_losses), 4)
                    place_losses.clear()
                if span_losses:
                    entry["span_loss"] = round(sum(span_losses) / len(span_losses), 4)
                    span_losses.clear()
                if step % args.eval_every == 0 or step == args.steps:
                    entry.update(evaluate())
                    save_state(out / "last.pt")  # a run stopped early keeps its state (`--init-state`)
                print(json.dumps(entry), flush=True)
                log.write(json.dumps(entry) + "\n")
                log.flush()
    save_state(out / "final.pt")


if __name__ == "__main__":
    main()
