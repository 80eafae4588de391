"""Training report (training area): learning curves as PNG from synthetic SFT and GRPO JSON-lines logs,
training_report.json with first/last/best per curve, training_report.md with the evaluation table."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from stvg_train.report import plot_grpo, plot_reading, plot_sft, write_training_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _sft_records() -> list[dict]:
    records = []
    for i in range(1, 31):
        step = 10 * i
        record = {"step": step, "loss": 4.0 / i, "grad_norm": 1.0 / i, "lr": 1e-3, "elapsed_s": 2.0 * i}
        if step % 100 == 0:
            record.update(heldout_id_accuracy=0.2 * step / 100, heldout_tiou=0.1 * step / 100,
                          heldout_reward=0.5 * step / 100, heldout_n=8, heldout_example="<answer>1 0.0 1.0</answer>")
        if i == 7:
            del record["grad_norm"]  # a key missing from one line
        records.append(record)
    return records


def _grpo_records() -> list[dict]:
    records = []
    for step in range(1, 25):
        record = {"step": step, "time": 1.7e9 + step, "loss": 0.01 * (-1) ** step, "grad_norm": 0.5,
                  "learning_rate": 1e-6, "reward": 0.1 + 0.03 * step, "reward_std": 0.2,
                  "rewards/iou_reward/mean": 0.02 * step, "rewards/iou_reward/std": 0.1,
                  "rewards/format_reward/mean": 0.1 + 0.01 * step, "rewards/format_reward/std": 0.05,
                  "kl": 0.001 * step, "entropy": 1.0, "completions/mean_length": 40.0 + step,
                  "clip_ratio/region_mean": 0.0}
        if step <= 2:
            del record["kl"]  # not logged on the first steps
        if step == 5:
            del record["completions/mean_length"]
        records.append(record)
    records.append({"step": 24, "time": 1.7e9 + 30, "train_runtime": 123.4, "train_samples_per_second": 0.8,
                    "train_loss": 0.002, "epoch": 1.0})
    return records


EVALUATION = {"table": [
    {"model": "base", "id_accuracy": 0.41, "m_tiou": 0.22, "m_viou": 0.15, "viou@0.3": 0.18, "viou@0.5": 0.07,
     "queries": 120},
    {"model": "grpo", "id_accuracy": 0.63, "m_tiou": 0.37, "m_viou": 0.29, "viou@0.3": 0.4, "viou@0.5": 0.21,
     "queries": 120},
], "benchmark": "synthetic"}


def _assert_png(path: Path) -> None:
    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
    assert width > 100 and height > 100, (path, image.size)


def test_report_plots_every_curve_and_summarises_first_last_best(tmp_path):
    sft_log = _write_jsonl(tmp_path / "log.jsonl", _sft_records())
    grpo_log = _write_jsonl(tmp_path / "grpo_log.jsonl", _grpo_records())
    out = tmp_path / "report"

    report = write_training_report(out, sft_log=sft_log, grpo_log=grpo_log, evaluation=EVALUATION)

    names = ["sft_loss.png", "sft_heldout.png", "grpo_rewards.png", "grpo_loss_kl.png", "grpo_length.png"]
    for name in names:
        _assert_png(out / name)
    assert report["sft"]["plots"] == names[:2] and report["grpo"]["plots"] == names[2:]
    assert json.loads((out / "training_report.json").read_text()) == report
    assert report["evaluation"] == EVALUATION

    sft = report["sft"]["curves"]
    assert set(sft) == {"loss", "heldout_id_accuracy", "heldout_tiou", "heldout_reward"}
    assert sft["loss"]["first"] == {"step": 10, "value": 4.0}
    assert sft["loss"]["last"] == {"step": 300, "value": pytest.approx(4.0 / 30)}
    assert sft["loss"]["best"] == sft["loss"]["last"] and sft["loss"]["points"] == 30
    assert sft["heldout_id_accuracy"]["first"] == {"step": 100, "value": pytest.approx(0.2)}
    assert sft["heldout_id_accuracy"]["last"] == {"step": 300, "value": pytest.approx(0.6)}
    assert sft["heldout_tiou"]["points"] == 3

    grpo = report["grpo"]["curves"]
    assert set(grpo) == {"reward", "rewards/iou_reward/mean", "rewards/format_reward/mean", "loss", "kl",
                         "completions/mean_length"}
    assert grpo["reward"]["first"] == {"step": 1, "value": pytest.approx(0.13)}
    assert grpo["reward"]["last"] == {"step": 24, "value": pytest.approx(0.82)}  # not the summary record
    assert grpo["reward"]["best"] == grpo["reward"]["last"]
    assert grpo["rewards/iou_reward/mean"]["label"] == "iou_reward"
    assert grpo["kl"]["first"] == {"step": 3, "value": pytest.approx(0.003)} and grpo["kl"]["points"] == 22
    assert grpo["completions/mean_length"]["points"] == 23 and grpo["loss"]["best"] is None
    assert report["grpo"]["final"]["train_runtime"] == 123.4 and report["grpo"]["final"]["train_loss"] == 0.002

    md = (out / "training_report.md").read_text()
    assert "| model | ID accuracy | m_tIoU | m_vIoU | vIoU@0.3 | vIoU@0.5 | queries |" in md
    assert "| base | 0.410 | 0.220 | 0.150 | 0.180 | 0.070 | 120 |" in md
    assert "| grpo | 0.630 | 0.370 | 0.290 | 0.400 | 0.210 | 120 |" in md
    for name in names:
        assert f"]({name})" in md  # relative links, next to the report


def test_plots_only_what_a_log_has(tmp_path):
    # SFT without held-out evaluation; GRPO from an older TRL: `rewards/<func>`, `completion_length`, no KL.
    sft_log = _write_jsonl(tmp_path / "sft.jsonl", [{"step": s, "loss": 1.0 / s} for s in range(1, 6)])
    grpo_log = _write_jsonl(tmp_path / "grpo.jsonl", [
        *({"step": s, "loss": 0.0, "reward": 0.1 * s, "rewards/iou_reward": 0.05 * s, "completion_length": 30.0}
          for s in range(1, 6)),
        {"step": 5, "train_runtime": 9.0, "train_loss": 0.0},
    ])
    assert plot_sft(sft_log, tmp_path / "a") == [tmp_path / "a" / "sft_loss.png"]
    paths = plot_grpo(grpo_log, tmp_path / "b")
    assert [p.name for p in paths] == ["grpo_rewards.png", "grpo_loss_kl.png", "grpo_length.png"]
    for path in paths:
        _assert_png(path)

    report = write_training_report(tmp_path / "c", grpo_log=grpo_log)
    assert "sft" not in report and report["evaluation"] is None
    assert set(report["grpo"]["curves"]) == {"reward", "rewards/iou_reward", "loss", "completion_length"}
    assert "## Evaluation" not in (tmp_path / "c" / "training_report.md").read_text()


def test_reading_stage_curves_come_first_in_the_report(tmp_path):
    records = [{"step": s, "id_reading_loss": 3.0 / s, "grad_norm": 1.0, "lr": 1e-3} for s in range(10, 101, 10)]
    for r in records[4::5]:  # held-out reading every 50 steps
        r.update(heldout_exercises_exact=r["step"] / 200, heldout_exercises_place=r["step"] / 150,
                 heldout_exercises_cells=120, heldout_id_reading_exact=r["step"] / 250,
                 heldout_exercises_object_attributes=r["step"] / 120)
    reading_log = _write_jsonl(tmp_path / "read.jsonl", records)
    [path] = plot_reading(reading_log, tmp_path / "a")
    assert path.name == "read_id.png"
    _assert_png(path)
    report = write_training_report(tmp_path / "b", reading_log=reading_log,
                                   sft_log=_write_jsonl(tmp_path / "sft.jsonl", _sft_records()))
    assert report["read"]["plots"] == ["read_id.png"]
    curves = report["read"]["curves"]
    assert set(curves) == {"id_reading_loss", "heldout_exercises_exact", "heldout_exercises_place",
                           "heldout_id_reading_exact", "heldout_exercises_object_attributes"}
    assert curves["heldout_exercises_exact"]["best"] == {"step": 100, "value": 0.5}
    markdown = (tmp_path / "b" / "training_report.md").read_text()
    assert markdown.index("## ID reading (before SFT)") < markdown.index("## SFT")
    # a reading log without its loss is refused, naming the file, before anything is written
    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"step": 1, "heldout_exercises_exact": 0.1}])
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        write_training_report(tmp_path / "c", reading_log=bad)
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("content", [None, "", "\n\n"], ids=["missing", "empty", "blank-lines"])
@pytest.mark.parametrize("plot", [plot_sft, plot_grpo, plot_reading])
def test_a_missing_or_empty_log_is_a_clear_error(tmp_path, content, plot):
    log = tmp_path / "log.jsonl"
    if content is not None:
        log.write_text(content)
    error = FileNotFoundError if content is None else ValueError
    with pytest.raises(error, match=re.escape(str(log))):
        plot(log, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unusable_logs_name_the_file(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss"\n')
    with pytest.raises(ValueError, match=re.escape(f"{bad}:2")):
        plot_sft(bad, tmp_path)
    summary_only = _write_jsonl(tmp_path / "summary.jsonl", [{"step": 3, "train_runtime": 1.0, "train_loss": 0.1}])
    with pytest.raises(ValueError, match=re.escape(str(summary_only))):
        plot_grpo(summary_only, tmp_path)
    with pytest.raises(ValueError, match=re.escape(str(summary_only))):
        write_training_report(tmp_path / "out", sft_log=summary_only)
    assert not (tmp_path / "out").exists()


def test_matplotlib_is_imported_only_when_plotting():
    code = "import sys, stvg_train.report; print('matplotlib' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "False"
