"""Reports: report.json, report.md, report.html and plots (matplotlib, Agg backend, no display needed).

Plots: `hist_tiou.png`, `hist_viou.png` (per-query histograms) and `timeline.png` (per query, the GT
span against the predicted span, in frames).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from stvg_ros.evaluation.loaders import AnnotationSet
from stvg_ros.evaluation.predictions import Prediction

HEADLINE = ("m_tIoU", "m_vIoU", "vIoU@0.3", "vIoU@0.5")
TIMELINE_MAX_QUERIES = 40

#: Published results, in % as (m_tIoU, m_vIoU, vIoU@0.3, vIoU@0.5), per benchmark. Source: the
#: papers' tables and official READMEs as gathered in ANCHORS_STVG.md (STVG-R1 also METHOD.md §11).
#: HC-STVG v2 numbers are on the val split. Per METHOD.md §9 the baselines' numbers come from
#: TubeDETR's evaluator (our `tubedetr` protocol), STVG-R1's own from its evaluate.py (`stvgr1`).
PUBLISHED_ANCHORS: dict[str, tuple[tuple[str, str, tuple[float, float, float, float]], ...]] = {
    "hcstvg_v1": (
        ("STVG-R1 (ICLR 2026, 7B)", "stvgr1", (56.9, 39.1, 66.7, 38.6)),
        ("STVG-o1 (2025, Qwen2.5-VL-7B + GRPO)", "tubedetr", (60.3, 44.1, 73.3, 43.5)),
        ("TA-STVG (ICLR 2025)", "tubedetr", (53.0, 39.1, 63.1, 36.8)),
        ("CG-STVG (CVPR 2024)", "tubedetr", (52.8, 38.4, 61.5, 36.3)),
        ("Qwen2.5-VL-7B zero-shot", "tubedetr", (25.6, 19.1, 20.2, 12.6)),
    ),
    "hcstvg_v2": (
        ("STVG-R1 (ICLR 2026, 7B; README, paper 61.3 / 40.8 / 67.9 / 38.8)", "stvgr1", (62.0, 40.2, 67.8, 38.8)),
        ("STVG-o1 (2025, Qwen2.5-VL-7B + GRPO)", "tubedetr", (63.8, 41.2, 68.5, 39.6)),
        ("TA-STVG (ICLR 2025)", "tubedetr", (60.4, 40.2, 65.8, 36.7)),
        ("CG-STVG (CVPR 2024)", "tubedetr", (60.0, 39.5, 64.5, 36.3)),
        ("Qwen2.5-VL-7B zero-shot", "tubedetr", (22.9, 13.0, 15.6, 6.4)),
    ),
    "vidstg_declarative": (
        ("STVG-o1 (2025, Qwen2.5-VL-7B + GRPO)", "tubedetr", (52.1, 33.5, 48.4, 32.0)),
        ("TA-STVG (ICLR 2025)", "tubedetr", (51.7, 34.4, 48.2, 33.5)),
        ("CG-STVG (CVPR 2024)", "tubedetr", (51.4, 34.0, 47.7, 33.1)),
        ("Qwen2.5-VL-7B zero-shot", "tubedetr", (16.8, 10.9, 14.3, 5.4)),
    ),
    "vidstg_interrogative": (
        ("STVG-o1 (2025, Qwen2.5-VL-7B + GRPO)", "tubedetr", (50.5, 27.9, 39.8, 26.0)),
        ("TA-STVG (ICLR 2025)", "tubedetr", (50.2, 29.5, 41.5, 28.0)),
        ("CG-STVG (CVPR 2024)", "tubedetr", (49.9, 29.0, 40.5, 27.5)),
        ("Qwen2.5-VL-7B zero-shot", "tubedetr", (13.8, 8.5, 11.3, 4.4)),
    ),
}
ANCHOR_SOURCE = "papers' tables and official READMEs (ANCHORS_STVG.md, METHOD.md §11)"
BENCHMARK_NAMES = {"hcstvg_v1": "HC-STVG v1", "hcstvg_v2": "HC-STVG v2 (val)", "vidstg_declarative":
                   "VidSTG declarative", "vidstg_interrogative": "VidSTG interrogative"}  # fmt: skip
FRAME_IDS_MEANING = {
    "decoded": "0-based decoded frame numbers, st_frame as written (TubeDETR's)",
    "one_based": "decoded frame d has id d + 1 (st_frame read as 1-based)",
}


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * float(value):.1f}"


def summary_lines(summary: Mapping) -> list[str]:
    """A short human-readable summary (what `stvg-ros eval score` prints without --json)."""
    keys = [k for k in summary if k.startswith(("m_", "vIoU@", "tIoU@"))]
    lines = [f"protocol {summary.get('protocol')}, frame ids {summary.get('frame_ids', 'n/a')} "
             f"({summary.get('n_queries')} queries, {summary.get('n_missing', 0)} without prediction); "
             "values in %"]  # fmt: skip
    lines += [f"  {key:12s} {_pct(summary[key])}" for key in keys]
    for qtype, part in (summary.get("by_qtype") or {}).items():
        lines.append(f"  {qtype}: " + ", ".join(f"{k} {_pct(v)}" for k, v in part.items() if k.startswith(("m_", "vIoU@"))))
    if summary.get("id_accuracy") is not None:
        lines.append(f"  {'ID accuracy':12s} {_pct(summary['id_accuracy'])} (reference: {summary.get('id_reference')})")
    ceiling = summary.get("perception_ceiling")
    if ceiling:
        lines.append("  perception ceiling: " + ", ".join(f"{k} {_pct(v)}" for k, v in ceiling.items()))
    if summary.get("error_sources"):
        lines.append("  error sources: " + ", ".join(f"{k} {v}" for k, v in summary["error_sources"].items()))
    for warning in summary.get("warnings", [])[:5]:
        lines.append(f"  warning: {warning}")
    return lines


def _plots(out: Path, summary: Mapping, annotations: AnnotationSet, predictions: Mapping[str, Prediction]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_video = summary.get("per_video", {})
    written = []
    for key, name in (("tIoU", "hist_tiou.png"), ("vIoU", "hist_viou.png")):
        values = [v[key] for v in per_video.values()]
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.hist(values, bins=20, range=(0.0, 1.0), color="#4c72b0", edgecolor="white")
        ax.set_xlabel(f"{key} per query ({summary.get('protocol')})")
        ax.set_ylabel("queries")
        ax.set_title(f"{key}: mean {_pct(summary.get('m_' + key))} %")
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        written.append(name)

    queries = list(annotations.queries.values())[:TIMELINE_MAX_QUERIES]
    if queries:
        fig, ax = plt.subplots(figsize=(8, 0.32 * len(queries) + 1.2))
        for row, query in enumerate(queries):
            ax.barh(row + 0.18, query.gt_end - query.gt_start, left=query.gt_start, height=0.34, color="#55a868",
                    label="GT" if row == 0 else None)  # fmt: skip
            pred = predictions.get(query.query_id)
            if pred is not None and not pred.empty:
                ax.barh(row - 0.18, pred.end - pred.start, left=pred.start, height=0.34, color="#c44e52",
                        label="predicted" if row == 0 else None)  # fmt: skip
            ax.plot([query.first_frame, query.end_frame - 1], [row, row], color="#cccccc", lw=0.6, zorder=0)
        ax.set_yticks(range(len(queries)))
        ax.set_yticklabels([q.query_id[:24] for q in queries], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel(f"frame id ({annotations.frame_ids})")
        ax.legend(loc="upper right", fontsize=7)
        ax.set_title("GT vs predicted span")
        fig.tight_layout()
        fig.savefig(out / "timeline.png", dpi=100)
        plt.close(fig)
        written.append("timeline.png")
    return written


def _tables(summary: Mapping, annotations: AnnotationSet, predictions: Mapping[str, Prediction]) -> list[tuple]:
    """The report's content as (title, header, rows) tables, shared by report.md and report.html."""
    metrics = [(k, _pct(v)) for k, v in summary.items() if k.startswith(("m_", "vIoU@", "tIoU@"))]
    if summary.get("id_accuracy") is not None:
        metrics.append((f"ID accuracy ({summary.get('id_reference')})", _pct(summary["id_accuracy"])))
    for key, value in (summary.get("perception_ceiling") or {}).items():
        metrics.append((f"perception ceiling {key}", _pct(value)))
    for qtype, part in (summary.get("by_qtype") or {}).items():
        metrics += [(f"{qtype} {k}", _pct(v)) for k, v in part.items() if k.startswith(("m_", "vIoU@", "tIoU@"))]
    tables = [("", ("metric", "value (%)"), metrics), *anchor_tables(summary)]
    if summary.get("error_sources"):
        tables.append(("Where queries failed", ("error source", "queries"),
                       [(k, str(v)) for k, v in summary["error_sources"].items()]))  # fmt: skip
    worst = sorted(summary.get("per_video", {}).items(), key=lambda kv: kv[1]["vIoU"])[:15]
    rows = []
    for query_id, entry in worst:
        query = annotations.queries.get(query_id)
        pred = predictions.get(query_id)
        gt = f"[{query.gt_start}, {query.gt_end})" if query else "?"
        span = f"[{pred.start}, {pred.end})" if pred is not None and not pred.empty else "none"
        caption = (query.caption if query else "")[:60]
        rows.append((query_id, caption, gt, span, f"{entry['tIoU']:.3f}", f"{entry['vIoU']:.3f}",
                     _fmt(entry.get("ceiling_vIoU")), str(entry.get("error_source", ""))))  # fmt: skip
    if rows:
        tables.append(("Lowest vIoU", ("query", "caption", "GT span", "predicted", "tIoU", "vIoU", "ceiling",
                                       "source"), rows))  # fmt: skip
    return tables


def anchor_tables(summary: Mapping) -> list[tuple]:
    """Our headline numbers beside the published ones on the same benchmark, one table per
    benchmark part (VidSTG: declarative and interrogative); none for other annotations."""
    benchmark = summary.get("benchmark") or ""
    if benchmark == "vidstg":
        parts = [(f"vidstg_{qtype}", (summary.get("by_qtype") or {}).get(qtype)) for qtype in
                 ("declarative", "interrogative")]  # fmt: skip
    else:
        parts = [(benchmark, summary)]
    header = ("method", "protocol", *HEADLINE)
    tables = []
    for key, ours in parts:
        if key not in PUBLISHED_ANCHORS:
            continue
        ours_row = ("this run", f"{summary.get('protocol')}, frame ids {summary.get('frame_ids', 'n/a')}",
                    *(_pct((ours or {}).get(k)) for k in HEADLINE))  # fmt: skip
        rows = [ours_row] + [(name, protocol, *(f"{v:.1f}" for v in values))
                             for name, protocol, values in PUBLISHED_ANCHORS[key]]  # fmt: skip
        title = f"Published results on {BENCHMARK_NAMES[key]} (in %; protocol as METHOD.md §9 attributes it; source: {ANCHOR_SOURCE})"
        tables.append((title, header, rows))
    return tables


def _intro(summary: Mapping) -> str:
    rule = summary.get("threshold_rule", ">")
    frame_ids = summary.get("frame_ids", "n/a")
    meaning = FRAME_IDS_MEANING.get(frame_ids)
    return (f"Protocol {summary.get('protocol')} (vIoU@R counts vIoU {rule} R); frame ids {frame_ids}"
            f"{f' ({meaning})' if meaning else ''}; {summary.get('n_queries')} queries, "
            f"{summary.get('n_missing', 0)} without prediction.")  # fmt: skip


def markdown(
    summary: Mapping, annotations: AnnotationSet, predictions: Mapping[str, Prediction], plots: list[str]
) -> str:
    """report.md: headline metrics, diagnostics, the worst queries, the plots."""
    lines = ["# Evaluation report", "", _intro(summary)]
    for title, header, rows in _tables(summary, annotations, predictions):
        lines += ["", f"## {title}", ""] if title else [""]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{name}]({name})" for name in plots]
    if summary.get("warnings"):
        lines.append("")
    for warning in summary.get("warnings", []):
        lines.append(f"- warning: {warning}")
    return "\n".join(lines) + "\n"


def html_report(
    summary: Mapping, annotations: AnnotationSet, predictions: Mapping[str, Prediction], plots: list[str]
) -> str:
    """report.html: the same content as report.md, one self-contained page (plots beside it)."""
    from html import escape

    parts = ["<!DOCTYPE html>", '<html><head><meta charset="utf-8"><title>Evaluation report</title>',
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #bbb;padding:3px 8px;text-align:left}</style></head><body>",
             "<h1>Evaluation report</h1>", f"<p>{escape(_intro(summary))}</p>"]  # fmt: skip
    for title, header, rows in _tables(summary, annotations, predictions):
        if title:
            parts.append(f"<h2>{escape(title)}</h2>")
        parts.append("<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in header) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>" for row in rows]
        parts.append("</table>")
    if plots:
        parts.append("<h2>Plots</h2>")
        parts += [f'<img src="{escape(name)}" alt="{escape(name)}">' for name in plots]
    if summary.get("warnings"):
        parts.append("<ul>" + "".join(f"<li>warning: {escape(w)}</li>" for w in summary["warnings"]) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _fmt(value) -> str:
    return "" if value is None else f"{float(value):.3f}"


def write_report(
    out_dir: str | Path,
    summary: Mapping,
    annotations: AnnotationSet,
    predictions: Mapping[str, Prediction],
    plots: bool = True,
) -> dict[str, Path]:
    """Write report.json, report.md, report.html and the plots into `out_dir`; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    names = _plots(out, summary, annotations, predictions) if plots else []
    (out / "report.md").write_text(markdown(summary, annotations, predictions, names), encoding="utf-8")
    (out / "report.html").write_text(html_report(summary, annotations, predictions, names), encoding="utf-8")
    return {name: out / name for name in ["report.json", "report.md", "report.html", *names]}
