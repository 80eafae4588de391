"""`stvg-train recipe`: train our small STVG model from scratch on synthetic scenes with one command.

Stages (each writes `<work>/stages/<stage>.json` when done; a rerun skips finished stages, and SFT
and GRPO resume from their last checkpoint):

  data     training, validation and held-out scenes (disjoint seeds), `prep` with the robot's detector,
           tracker and ID drawing
  init     the untrained small Qwen2.5-VL (`small_model`)
  read     the vision tower learns to read drawn IDs on endless exercises (`id_reading.train_reading`)
  sft      supervised warm start on the GT answers (`sft`), from the `read` model
  grpo     GRPO from the SFT checkpoint with METHOD.md's rewards (`grpo`)
  export   GGUF Q8_0 + mmproj of the SFT-only and the GRPO model (`export`)
  evaluate `stvg-ros eval run` on the held-out set: both models, the baselines, the paraphrased
           queries; `stvg-ros eval replay` of the GRPO model through the ROS graph; held-out mean
           reward (sampled) before and after GRPO
  report   learning curves (PNG) and training_report.json / .md (`report`)
  ship     (only when asked: `--stages ship`) the GGUF + mmproj and a manifest into the package's models

The recipe file (training/configs/recipe_synth_small.yaml) holds every seed and size.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger("stvg_train.recipe")

RECIPES = {"synth-small": Path(__file__).resolve().parents[1] / "configs" / "recipe_synth_small.yaml"}
#: The `read` exercises' largest ID under `id_numbering: clip` (1..K per clip; the recipe's 4-object
#: scenes give K = 3..9 tracks, measured on its 400 training videos), unless `read: {max_id: ...}` says.
CLIP_MAX_ID = 9

STAGES = ("data", "init", "read", "sft", "grpo", "export", "evaluate", "report")


def load_recipe(name_or_path: str) -> dict[str, Any]:
    path = RECIPES.get(name_or_path, Path(name_or_path))
    if not path.is_file():
        raise FileNotFoundError(f"recipe {name_or_path!r} not found (known: {', '.join(RECIPES)}, or a YAML file)")
    recipe = yaml.safe_load(path.read_text(encoding="utf-8"))
    recipe["_path"], recipe["_name"] = str(path), name_or_path
    return recipe


def _scene_spec(recipe: dict[str, Any]) -> dict[str, Any]:
    return dict(recipe["scenes"])


def _prep(recipe: dict[str, Any], synthetic: Path, out: Path, *, videos: int = 0, seed: int = 0) -> dict[str, Any]:
    from stvg_train.prep import PrepOptions, prepare

    return prepare(PrepOptions(
        out_dir=str(out), synthetic=str(synthetic), synthetic_videos=videos, synthetic_seed=seed,
        synthetic_spec=_scene_spec(recipe), num_frames=int(recipe["num_frames"]),
        max_pixels=int(recipe["max_pixels"]), perception_config=dict(recipe["perception"]),
        workers=int(recipe.get("workers", 2)), threads=1,
        first_track_id=tuple(recipe["first_track_id"]) if recipe.get("first_track_id") else None,
        id_numbering=str(recipe.get("id_numbering", "track"))))


def stage_data(recipe: dict[str, Any], work: Path) -> dict[str, Any]:
    from stvg_ros.evaluation.benchsets import make_set

    data = recipe["data"]
    seeds = {data["train_seed"], data["val_seed"], data["heldout_seed"]}
    if len(seeds) != 3:
        raise ValueError("data: train_seed, val_seed and heldout_seed must differ")
    reports = {}
    for split in ("train", "val"):
        reports[split] = _prep(recipe, work / f"synthetic-{split}", work / f"prepared-{split}",
                               videos=int(data[f"{split}_videos"]), seed=int(data[f"{split}_seed"]))
    spec = _scene_spec(recipe)
    heldout = work / "heldout"
    if not (heldout / "benchset.json").is_file():
        make_set(heldout, level=spec.get("difficulty", "mixed"), count=int(data["heldout_videos"]),
                 seed=int(data["heldout_seed"]), seconds=float(spec["seconds"]), fps=float(spec["fps"]),
                 width=int(spec["width"]), height=int(spec["height"]), objects=int(spec["n_objects"]),
                 queries_per_video=int(data["heldout_queries_per_video"]), bags=True)
    if not (work / "heldout-paraphrased" / "queries.json").is_file():
        from stvg_ros.synthetic.paraphrase import paraphrase_set

        paraphrase_set(heldout, work / "heldout-paraphrased", int(data["heldout_seed"]))
    reports["heldout"] = _prep(recipe, heldout, work / "prepared-heldout")
    keys = ("samples", "matched", "id_correct_share", "wall_s")
    return {split: {k: r.get(k) for k in keys} for split, r in reports.items()}


def stage_init(recipe: dict[str, Any], work: Path) -> dict[str, Any]:
    from stvg_train.small_model import build_small_qwen25vl

    out = build_small_qwen25vl(work / "init", seed=int(recipe["model"]["init_seed"]),
                               max_pixels=int(recipe["max_pixels"]))
    return {"model": str(out), **json.loads((out / "stvg_small.json").read_text())}


def _source_size(recipe: dict[str, Any]) -> tuple[int, int]:
    return int(recipe["scenes"]["width"]), int(recipe["scenes"]["height"])


def stage_read(recipe: dict[str, Any], work: Path) -> dict[str, Any]:
    from stvg_train.id_reading import ReadingOptions, train_reading

    if not recipe.get("read"):
        return {"skipped": "the recipe has no read section"}
    read = dict(recipe["read"])
    if recipe.get("id_numbering", "track") == "clip":  # exercises in the range the clips draw
        read.setdefault("max_id", CLIP_MAX_ID)
    return train_reading(ReadingOptions(
        model_dir=str(work / "init"), out_dir=str(work / "read"), scenes=_scene_spec(recipe),
        max_pixels=int(recipe["max_pixels"]), seed=int(recipe["seed"]), threads=int(recipe.get("threads", 2)),
        heldout=str(work / "prepared-val"), source_size=_source_size(recipe), **read))


def _sft_start(work: Path) -> Path:
    """SFT starts from the `read` stage's model when the recipe has one, else from the untrained model."""
    return work / "read" / "final" if (work / "read" / "final").is_dir() else work / "init"


def stage_sft(recipe: dict[str, Any], work: Path) -> dict[str, Any]:
    from stvg_train.sft import SftOptions, train_sft

    opts = SftOptions(model_dir=str(_sft_start(work)), train=str(work / "prepared-train"),
                      heldout=str(work / "prepared-val"), out_dir=str(work / "sft"),
                      scenes=str(work / "synthetic-train"), heldout_scenes=str(work / "synthetic-val"),
                      source_size=_source_size(recipe),
                      seed=int(recipe["seed"]), max_pixels=int(recipe["max_pixels"]),
                      threads=int(recipe.get("threads", 2)), **recipe["sft"])
    return train_sft(opts)


def stage_grpo(recipe: dict[str, Any], work: Path) -> dict[str, Any]:
    from stvg_train.config import config_from_dict
    from stvg_train.grpo import build_trainer, train

    cfg = config_from_dict({**recipe["grpo"], "output_dir": str(work / "grpo"), "seed": int(recipe["seed"]),
                            "resume_from_checkpoint": "auto"})
    cfg.model.name_or_path = str(work / "sft" / "final")
    cfg.model.max_pixels = int(recipe["max_pixels"])
    cfg.data.train = [str(work / "prepared-train")]
    built = build_trainer(cfg)
    summary = train(built)
    built.probe.close()
    return summary


def _export(recipe: dict[str, Any], model_dir: Path, out: Path, name: str) -> dict[str, Any]:
    from stvg_train.export import ExportOptions, export

    return export(ExportOptions(model_dir=str(model_dir), out_dir=str(out), name=name,
                                quants=[recipe["export"]["quant"]], verify=True, threads=2))


def stage_export(recipe: dict[str, Any], work: Path) -> dict[str, Any]:
    name = recipe["name"]
    return {"grpo": _export(recipe, work / "grpo", work / "export", name),
            "sft": _export(recipe, work / "sft" / "final", work / "export-sft", f"{name}-sft")}


def exported_model(work: Path, which: str, recipe: dict[str, Any]) -> tuple[str, Path]:
    """(manifest name, folder holding the manifest) of the exported SFT-only or GRPO model."""
    label = f"{recipe['name']}{'-sft' if which == 'sft' else ''}-{recipe['export']['quant'].lower()}"
    return label, work / ("export-sft" if which == "sft" else "export")


def _perception_params(recipe: dict[str, Any]) -> list[str]:
    """The recipe's perception as graph parameters (`-p NODE:NAME=VALUE` values)."""
    perception = recipe["perception"]
    return [f"tracker_node:detector={perception['model']}",
            f"tracker_node:detect_every={perception.get('detect_every', 1)}"]


def _run_eval_cli(cmd: list[str], out: Path, model_dir: Path | None, timeout_s: float) -> dict[str, Any]:
    """Run a `stvg-ros eval` command (into a fresh `out`, with `model_dir` on STVG_MODELS_PATH); its JSON."""
    env = dict(os.environ)
    if model_dir is not None:
        env["STVG_MODELS_PATH"] = os.pathsep.join([str(model_dir), env.get("STVG_MODELS_PATH", "")])
    shutil.rmtree(out, ignore_errors=True)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[3:5])} failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout[done.stdout.index("{"):])


def eval_run(work: Path, out: Path, *, model: tuple[str, Path] | None = None, baseline: str | None = None,
             heldout: str = "heldout", recipe: dict[str, Any]) -> dict[str, Any]:
    """`stvg-ros eval run` on the held-out set (a subprocess: exactly the user's command); `model` is a
    manifest name and the folder that holds it (put on STVG_MODELS_PATH)."""
    folder = work / heldout  # every query of the set (queries.json), not only annotations.json's first
    cmd = [sys.executable, "-m", "stvg_ros.cli.main", "eval", "run", "--videos", str(folder / "videos"),
           "--annotations", str(folder), "--out", str(out), "--source", "video", "--json", "--no-progress",
           *[a for p in _perception_params(recipe) for a in ("-p", p)]]
    cmd += ["--model", model[0]] if model is not None else ["--baseline", str(baseline)]
    return _run_eval_cli(cmd, out, model[1] if model is not None else None, timeout_s=3600)


#: Table column <- key of `stvg-ros eval run --json`.
_COLUMNS = {"id_accuracy": "id_accuracy", "m_tiou": "m_tIoU", "m_viou": "m_vIoU", "viou@0.3": "vIoU@0.3",
            "viou@0.5": "vIoU@0.5", "queries": "n_queries"}


def eval_replay(work: Path, out: Path, *, model: tuple[str, Path], recipe: dict[str, Any]) -> dict[str, Any]:
    """`stvg-ros eval replay --start-graph` of the held-out set's bags: the same queries through the ROS
    graph (tracker + grounding nodes over DDS, sim time), as on a robot."""
    heldout = work / "heldout"
    sidecars = [str(heldout / s) for s in json.loads((heldout / "benchset.json").read_text())["sidecars"]]
    params = [*_perception_params(recipe), f"grounding_node:model={model[0]}"]
    cmd = [sys.executable, "-m", "stvg_ros.cli.main", "eval", "replay", "--sidecar", sidecars[0],
           "--more-sidecars", *sidecars[1:], "--out", str(out), "--start-graph", "--graph-timeout", "120",
           "--query-timeout", "60", "--json", "--no-progress", *[a for p in params for a in ("-p", p)]]
    return _run_eval_cli(cmd, out, model[1], timeout_s=7200)


def _row(label: str, result: dict[str, Any]) -> dict[str, Any]:
    return {"model": label, **{column: result.get(key) for column, key in _COLUMNS.items()},
            "perception_ceiling_m_viou": (result.get("perception_ceiling") or {}).get("m_vIoU")}


def stage_evaluate(recipe: dict[str, Any], work: Path) -> dict[str, Any]:
    from stvg_train.smoke import heldout_reward

    table, paraphrased = [], []
    runs = work / "eval"
    for label, slug, kwargs in (
            ("baseline: random track", "baseline-random-track", {"baseline": "random"}),
            ("baseline: most-visible track", "baseline-most-visible-track", {"baseline": "most-visible"}),
            ("SFT only", "sft-only", {"model": exported_model(work, "sft", recipe)}),
            ("SFT + GRPO (shipped)", "sft-grpo", {"model": exported_model(work, "grpo", recipe)})):
        table.append(_row(label, eval_run(work, runs / slug, recipe=recipe, **kwargs)))
        if "model" in kwargs:
            result = eval_run(work, runs / f"{slug}-paraphrased", recipe=recipe, heldout="heldout-paraphrased",
                              **kwargs)
            paraphrased.append(_row(label, result))
    table.append(_row("SFT + GRPO through the ROS graph (eval replay)",
                      eval_replay(work, runs / "sft-grpo-replay", model=exported_model(work, "grpo", recipe),
                                  recipe=recipe)))
    sampling = {"rewards": list(recipe["grpo"]["rewards"]), "max_new_tokens": 64, "temperature": 1.0,
                "top_k": 50, "seed": int(recipe["seed"]), "max_pixels": int(recipe["max_pixels"])}
    rewards = {which: heldout_reward(path, work / "prepared-heldout", **sampling)
               for which, path in (("sft", work / "sft" / "final"), ("grpo", work / "grpo"))}
    return {"table": table, "paraphrased": paraphrased, "heldout_reward": rewards}


def stage_report(recipe: dict[str, Any], work: Path) -> dict[str, Any]:
    from stvg_train.report import write_training_report

    evaluation = json.loads((work / "stages" / "evaluate.json").read_text())
    grpo_log = next(iter(sorted((work / "grpo").glob("*.jsonl"))), None)
    reading_log = work / "read" / "log.jsonl"
    return write_training_report(work / "report", sft_log=work / "sft" / "log.jsonl", grpo_log=grpo_log,
                                 evaluation=evaluation, reading_log=reading_log if reading_log.is_file() else None)


#: What the shipped model says about itself wherever it answers (demo, ask, eval reports).
SHIPPED_NOTE = ("our small model trained from scratch on synthetic scenes (coloured shapes moving over a textured background): "
                "it knows only those scenes; on a real camera its answers are meaningless")


def _config_name(recipe: dict[str, Any]) -> str:
    """The recipe file, relative to the repository when it is one of ours."""
    path = Path(recipe["_path"])
    return f"training/configs/{path.name}" if path.parent == next(iter(RECIPES.values())).parent else str(path)


def stage_ship(recipe: dict[str, Any], work: Path, dest: Path | None = None) -> dict[str, Any]:
    """Copy the GRPO model's GGUF + mmproj into the package's models folder (or `dest`) with a manifest
    that records sha256, recipe, seeds, training and held-out results, and what the model can and cannot do.
    Not part of the default stages: it writes into the source tree, for a maintainer to commit."""
    from stvg_ros.core.paths import PACKAGED_MANIFESTS
    from stvg_train.export import sha256_of

    dest = Path(dest) if dest else PACKAGED_MANIFESTS
    label, folder = exported_model(work, "grpo", recipe)
    exported = yaml.safe_load((folder / f"{label}.yaml").read_text(encoding="utf-8"))
    name = recipe["name"]
    files_dir = dest / name
    shutil.rmtree(files_dir, ignore_errors=True)
    files_dir.mkdir(parents=True)
    files = []
    for entry in exported["files"]:
        target = files_dir / entry["name"]
        shutil.copyfile(folder / label / entry["name"], target)
        files.append({"name": entry["name"], "format": entry["format"], "sha256": sha256_of(target),
                      "size": target.stat().st_size, "source": {"packaged": f"stvg_ros/models/{name}/"},
                      **({"matches": entry["matches"]} if "matches" in entry else {})})
    stages = {stage: json.loads((work / "stages" / f"{stage}.json").read_text())
              for stage in ("sft", "grpo", "evaluate") if (work / "stages" / f"{stage}.json").is_file()}
    evaluation = stages.get("evaluate", {})
    manifest = {
        "name": name,
        "kind": "vlm",
        "architecture": "qwen2_5_vl",
        "quantization": exported["quantization"],
        "description": "Small Qwen2.5-VL trained from scratch on our synthetic scenes (SFT warm start + GRPO)",
        "license": "Apache-2.0",
        "meaningful": True,
        "synthetic_only": True,
        "note": SHIPPED_NOTE,
        "input_format": exported["input_format"],
        "recipe": {"command": f"stvg-train recipe {recipe['_name']} --work-dir DIR; then --stages ship",
                   "config": _config_name(recipe), "seed": recipe["seed"],
                   "data": recipe["data"], "scenes": recipe["scenes"], "init_seed": recipe["model"]["init_seed"],
                   "sft_steps": recipe["sft"]["steps"], "grpo_steps": recipe["grpo"]["grpo"]["max_steps"]},
        "can": ["answer which drawn track ID and when for captions of the synthetic scenes' kinds: a colour, "
                "shape (and size) moving up/down/left/right, stopping, starting, turning, turning around, passing",
                f"{exported['input_format'].get('frames_per_clip')} frames of at most "
                f"{exported['input_format'].get('max_pixels_per_frame')} pixels per query, 10 s clips"],
        "cannot": ["real camera images, people or any object that is not one of the synthetic shapes",
                   "captions unlike the generator's (see the paraphrased row of the evaluation)",
                   "clips much longer than the 10 s it was trained on"],
        "evaluation": {"heldout": evaluation.get("table"), "paraphrased": evaluation.get("paraphrased"),
                       "heldout_reward": evaluation.get("heldout_reward")},
        "files": files,
    }
    header = (f"# Written by `stvg-train recipe {recipe['_name']} --stages ship`: our small STVG model, trained from\n"
              "# scratch on synthetic scenes only. Files are package data in ./" + name + "/.\n")
    path = dest / f"{name}.yaml"
    path.write_text(header + yaml.safe_dump(manifest, sort_keys=False, width=110), encoding="utf-8")
    return {"manifest": str(path), "files": [str(files_dir / f["name"]) for f in files]}


STAGE_FUNCTIONS: dict[str, Callable[[dict[str, Any], Path], dict[str, Any]]] = {
    "data": stage_data, "init": stage_init, "read": stage_read, "sft": stage_sft, "grpo": stage_grpo, "export": stage_export,
    "evaluate": stage_evaluate, "report": stage_report, "ship": stage_ship,
}


def run_recipe(name_or_path: str, work_dir: str | Path, *, stages: list[str] | None = None,
               redo: list[str] | None = None) -> dict[str, Any]:
    """Run the recipe's stages in order (all by default); finished stages are skipped unless in `redo`."""
    recipe = load_recipe(name_or_path)
    work = Path(work_dir)
    (work / "stages").mkdir(parents=True, exist_ok=True)
    (work / "recipe.yaml").write_text(Path(recipe["_path"]).read_text(encoding="utf-8"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results: dict[str, Any] = {}
    for stage in stages or STAGES:
        if stage not in STAGE_FUNCTIONS:
            raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGE_FUNCTIONS)}")
        marker = work / "stages" / f"{stage}.json"
        if marker.is_file() and stage not in (redo or []):
            results[stage] = json.loads(marker.read_text())
            log.info("stage %s: done before, skipped", stage)
            continue
        log.info("stage %s: running", stage)
        start = time.monotonic()
        result = STAGE_FUNCTIONS[stage](recipe, work)
        result = {**result, "stage_wall_s": round(time.monotonic() - start, 1)}
        marker.write_text(json.dumps(result, indent=1, default=str))
        results[stage] = result
    return results
