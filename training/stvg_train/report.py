"""Training report: learning curves (PNG) from the SFT and GRPO JSON-lines logs, plus a JSON and a Markdown summary.

Inputs are the SFT `log.jsonl` (`sft.py`: step, loss, grad_norm, lr, elapsed_s, heldout_* on evaluation
steps) and the GRPO log (`grpo.JsonLogCallback`: step, time and TRL GRPOTrainer's keys). Keys a log does
not have (older TRL, other reward functions) are left out of the plots; a missing, empty or unreadable
log is a ValueError/FileNotFoundError that names the file.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: GRPO reward components: `rewards/<func>/mean` (TRL >= 0.15) or `rewards/<func>` (older TRL).
_REWARD_KEY = re.compile(r"^rewards/([^/]+?)(/mean)?$")
#: Mean completion length in tokens, newest TRL key first.
_LENGTH_KEYS = ("completions/mean_length", "completion_length")
#: Columns of the evaluation table in the Markdown report: (key, header).
_TABLE_COLUMNS = (("model", "model"), ("id_accuracy", "ID accuracy"), ("m_tiou", "m_tIoU"),
                  ("m_viou", "m_vIoU"), ("viou@0.3", "vIoU@0.3"), ("viou@0.5", "vIoU@0.5"),
                  ("queries", "queries"))


@dataclass(frozen=True)
class Curve:
    """One logged quantity against the training step; `goal` says which end is best ("min", "max" or None)."""

    key: str
    label: str
    steps: list[int | float]
    values: list[int | float]
    goal: str | None

    def summary(self) -> dict[str, Any]:
        """First, last and best point, each as {"step", "value"}; best is None for a curve without a goal."""
        def point(i: int) -> dict[str, int | float]:
            return {"step": self.steps[i], "value": self.values[i]}

        out: dict[str, Any] = {"label": self.label, "points": len(self.values), "first": point(0), "last": point(-1)}
        pick = {"min": min, "max": max}.get(self.goal or "")
        out["best"] = point(pick(range(len(self.values)), key=self.values.__getitem__)) if pick else None
        return out


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines log; FileNotFoundError or ValueError (naming the file) when there are none."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training log {path} does not exist")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{number}: not a JSON line ({e})") from e
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        records.append(record)
    if not records:
        raise ValueError(f"training log {path} is empty")
    return records


def _number(value: Any) -> int | float | None:
    """A finite int or float as it is (steps stay ints in the JSON), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return value


def _curve(records: list[dict[str, Any]], key: str, label: str, goal: str | None) -> Curve | None:
    """The finite numeric values of `key` in records that have a step; None when there are none."""
    points = [(s, v) for r in records
              if (s := _number(r.get("step"))) is not None and (v := _number(r.get(key))) is not None]
    if not points:
        return None
    return Curve(key, label, [s for s, _ in points], [v for _, v in points], goal)


def _present(*curves: Curve | None) -> list[Curve]:
    return [c for c in curves if c is not None]


def _save_figure(path: Path, title: str, panels: list[tuple[str, str, list[Curve]]], *, log_y: bool = False) -> Path:
    """One row of panels (panel title, y label, curves) against the step, saved as PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(6.0 * len(panels), 4.0), squeeze=False)
    try:
        for ax, (panel_title, ylabel, curves) in zip(axes[0], panels, strict=True):
            for c in curves:
                ax.plot(c.steps, c.values, marker="." if len(c.values) <= 50 else None, label=c.label)
            if log_y and all(v > 0 for c in curves for v in c.values):
                ax.set_yscale("log")
                ylabel += " (log scale)"
            ax.set_title(panel_title)
            ax.set_xlabel("training step")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            if len(curves) > 1:
                ax.legend()
        fig.suptitle(title)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path


#: (key, label, better) of a curve; in each spec the first curve is required: its log must have it.
CurveSpec = tuple[str, str, str]

_SFT_CURVES: tuple[CurveSpec, ...] = (
    ("loss", "training loss", "min"), ("heldout_id_accuracy", "held-out ID accuracy", "max"),
    ("heldout_tiou", "held-out mean tIoU", "max"), ("heldout_reward", "held-out mean reward", "max"),
    ("heldout_which_object_exact", "held-out \"which object is the …?\" right", "max"),
    ("heldout_read_exact", "held-out \"which numbers are drawn?\" right", "max"))
_READING_CURVES: tuple[CurveSpec, ...] = (
    ("id_reading_loss", "ID-reading loss", "min"),
    ("heldout_exercises_exact", "unseen exercises: IDs read exactly", "max"),
    ("heldout_id_reading_exact", "robot's held-out frames: IDs read exactly", "max"),
    ("heldout_exercises_place", "unseen exercises: digits right", "max"),
    ("heldout_exercises_object_attributes", "unseen exercises: objects' colour+shape+size right", "max"),
    ("heldout_exercises_id_cell_attributes", "unseen exercises: ID cells naming their object right", "max"),
    ("heldout_exercises_object_shape", "unseen exercises: objects' shape right", "max"))


def _logged_curves(records: list[dict[str, Any]], log_path: Path, what: str,
                   specs: tuple[CurveSpec, ...]) -> dict[str, Curve]:
    """The curves of `specs` present in a log; a log without the first (required) one is refused."""
    required, *optional = specs
    first = _curve(records, *required)
    if first is None:
        raise ValueError(f"{what} log {log_path} has no `{required[0]}` entries with a `step`")
    return {c.key: c for c in _present(first, *(_curve(records, *spec) for spec in optional))}


def _sft_curves(records: list[dict[str, Any]], log_path: Path) -> dict[str, Curve]:
    return _logged_curves(records, log_path, "SFT", _SFT_CURVES)


def _plot_sft(curves: dict[str, Curve], out_dir: Path) -> list[Path]:
    paths = [_save_figure(out_dir / "sft_loss.png", "SFT training loss",
                          [("loss vs step", "mean token cross-entropy", [curves["loss"]])], log_y=True)]
    scores = _present(curves.get("heldout_id_accuracy"), curves.get("heldout_tiou"))
    reward = curves.get("heldout_reward")
    questions = _present(curves.get("heldout_which_object_exact"), curves.get("heldout_read_exact"))
    panels = ([("held-out ID accuracy and tIoU", "fraction / IoU", scores)] if scores else []) + (
        [("held-out mean reward", "mean summed reward", [reward])] if reward else []) + (
        [("held-out single-frame questions", "answered exactly", questions)] if questions else [])
    if panels:
        paths.append(_save_figure(out_dir / "sft_heldout.png", "SFT held-out evaluation (greedy decoding)", panels))
    return paths


def _reading_curves(records: list[dict[str, Any]], log_path: Path) -> dict[str, Curve]:
    return _logged_curves(records, log_path, "ID-reading", _READING_CURVES)


def _plot_reading(curves: dict[str, Curve], out_dir: Path) -> list[Path]:
    panels = [("loss vs step", "cross-entropy per ID cell", [curves["id_reading_loss"]])]
    scores = [c for k, c in curves.items() if k != "id_reading_loss"]
    if scores:
        panels.append(("held-out reading and object attributes", "share of cells", scores))
    return [_save_figure(out_dir / "read_id.png", "Reading the drawn IDs (vision tower, before SFT)", panels)]


def _grpo_curves(records: list[dict[str, Any]], log_path: Path) -> dict[str, Curve]:
    components = {k: m.group(1) for r in records for k in r if (m := _REWARD_KEY.match(k))}
    length_key = next((k for k in _LENGTH_KEYS if any(k in r for r in records)), _LENGTH_KEYS[0])
    curves = _present(_curve(records, "reward", "total reward", "max"),
                      *(_curve(records, k, name, "max") for k, name in components.items()),
                      _curve(records, "loss", "GRPO loss", None),
                      _curve(records, "kl", "KL to the reference model", None),
                      _curve(records, length_key, "mean completion length", None))
    if not curves:
        raise ValueError(f"GRPO log {log_path} has no reward, loss, KL or completion-length entries with a `step`")
    return {c.key: c for c in curves}


def _plot_grpo(curves: dict[str, Curve], out_dir: Path) -> list[Path]:
    paths = []
    rewards = [c for k, c in curves.items() if k == "reward" or _REWARD_KEY.match(k)]
    if rewards:
        paths.append(_save_figure(out_dir / "grpo_rewards.png", "GRPO rewards (mean over completions)",
                                  [("total reward and components", "mean reward", rewards)]))
    panels = [(title, ylabel, [curves[key]]) for key, title, ylabel in
              (("loss", "GRPO loss", "loss"), ("kl", "KL divergence to the reference model", "KL"))
              if key in curves]
    if panels:
        paths.append(_save_figure(out_dir / "grpo_loss_kl.png", "GRPO loss and KL", panels))
    length = next((curves[k] for k in _LENGTH_KEYS if k in curves), None)
    if length is not None:
        paths.append(_save_figure(out_dir / "grpo_length.png", "GRPO completion length",
                                  [("mean completion length", "tokens", [length])]))
    return paths


def plot_sft(log_path: str | Path, out_dir: str | Path) -> list[Path]:
    """sft_loss.png (loss, log y) and, with held-out entries, sft_heldout.png in out_dir; returns their paths."""
    return _plot_sft(_sft_curves(read_log(log_path), Path(log_path)), Path(out_dir))


def plot_reading(log_path: str | Path, out_dir: str | Path) -> list[Path]:
    """read_id.png (the `read` stage's loss and held-out reading) in out_dir; returns its path."""
    return _plot_reading(_reading_curves(read_log(log_path), Path(log_path)), Path(out_dir))


def plot_grpo(log_path: str | Path, out_dir: str | Path) -> list[Path]:
    """grpo_rewards.png, grpo_loss_kl.png and grpo_length.png in out_dir, each when its keys are logged."""
    return _plot_grpo(_grpo_curves(read_log(log_path), Path(log_path)), Path(out_dir))


def _cell(value: Any, spec: str = ".3f") -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return format(value, spec)
    return str(value).replace("|", "\\|")


def _markdown(report: dict[str, Any]) -> str:
    lines = ["# Training report", ""]
    table = (report["evaluation"] or {}).get("table")
    if table:
        lines += ["## Evaluation", "",
                  "| " + " | ".join(h for _, h in _TABLE_COLUMNS) + " |",
                  "|" + "---|" * len(_TABLE_COLUMNS)]
        lines += ["| " + " | ".join(_cell(row.get(k)) for k, _ in _TABLE_COLUMNS) + " |" for row in table]
        lines.append("")
    for name, title in (("read", "ID reading (before SFT)"), ("sft", "SFT"), ("grpo", "GRPO")):
        if name not in report:
            continue
        part = report[name]
        lines += [f"## {title}", "", f"Log: `{part['log']}`", "", "| curve | first | last | best |", "|---|---|---|---|"]
        for s in part["curves"].values():
            best = f"{_cell(s['best']['value'], '.4g')} (step {s['best']['step']:g})" if s["best"] else "–"
            lines.append(f"| {s['label']} | {_cell(s['first']['value'], '.4g')} | "
                         f"{_cell(s['last']['value'], '.4g')} | {best} |")
        lines.append("")
        lines += [line for p in part["plots"] for line in (f"![{Path(p).stem}]({p})", "")]
    return "\n".join(lines)


def write_training_report(out_dir: str | Path, *, sft_log: str | Path | None = None,
                          grpo_log: str | Path | None = None, evaluation: dict | None = None,
                          reading_log: str | Path | None = None) -> dict:
    """Plots into out_dir, training_report.json (plots relative to out_dir, first/last/best per curve, the
    evaluation as given, the GRPO run's final train_* summary) and training_report.md; returns the JSON dict."""
    if reading_log is None and sft_log is None and grpo_log is None and evaluation is None:
        raise ValueError("write_training_report needs an ID-reading, SFT or GRPO log or an evaluation")
    # Both logs are read before anything is written: a bad one leaves out_dir untouched.
    reading = _reading_curves(read_log(reading_log), Path(reading_log)) if reading_log is not None else None
    sft = _sft_curves(read_log(sft_log), Path(sft_log)) if sft_log is not None else None
    grpo_records = read_log(grpo_log) if grpo_log is not None else None
    grpo = _grpo_curves(grpo_records, Path(grpo_log)) if grpo_records is not None else None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {}
    if reading is not None:
        report["read"] = {"log": str(reading_log), "plots": [p.name for p in _plot_reading(reading, out)],
                          "curves": {k: c.summary() for k, c in reading.items()}}
    if sft is not None:
        report["sft"] = {"log": str(sft_log), "plots": [p.name for p in _plot_sft(sft, out)],
                         "curves": {k: c.summary() for k, c in sft.items()}}
    if grpo is not None:
        final = {k: v for r in grpo_records for k, v in r.items() if k.startswith("train_")}
        report["grpo"] = {"log": str(grpo_log), "plots": [p.name for p in _plot_grpo(grpo, out)],
                          "curves": {k: c.summary() for k, c in grpo.items()}, "final": final}
    report["evaluation"] = evaluation
    (out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / "training_report.md").write_text(_markdown(report), encoding="utf-8")
    return report
