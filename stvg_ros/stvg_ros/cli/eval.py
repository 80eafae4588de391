"""`stvg-ros eval`: score prediction files, run the pipeline over a dataset, replay bags, make sets.

    stvg-ros eval score --annotations A --predictions P [--protocol tubedetr|hcstvg_official|stvgr1] [--json]
    stvg-ros eval run --videos DIR --annotations A --out DIR [--backend B --model M]
    stvg-ros eval replay --bag B --sidecar S --out DIR
    stvg-ros eval make-set --out DIR --level occlusion [--count N --seed S]

Bad input ends with exit code 2 and one line on stderr (`stvg-ros eval: error: ...`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

log = logging.getLogger("stvg_ros.eval")

PROTOCOL_HELP = (
    "tubedetr (default; TubeDETR's evaluator, 5 fps sampling, end-exclusive spans), "
    "hcstvg_official (HC-STVG eval_hcvg.py: all frames, inclusive ends), "
    "stvgr1 (STVG-R1 evaluate.py: seconds, >= thresholds)"
)


def add_parser(sub) -> argparse.ArgumentParser:
    from stvg_ros.evaluation.loaders import FORMATS
    from stvg_ros.evaluation.metrics import DEFAULT_PROTOCOL, PROTOCOLS

    parser = sub.add_parser("eval", help="score predictions, run the pipeline on a dataset, replay bags")
    actions = parser.add_subparsers(dest="eval_command", metavar="ACTION", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--protocol", choices=PROTOCOLS, default=DEFAULT_PROTOCOL, help=PROTOCOL_HELP)
        p.add_argument("--format", dest="annotation_format", choices=FORMATS, default="auto",
                       help="annotation format (default: detected)")  # fmt: skip
        p.add_argument("--vidor-dir", default=None, help="VidOR annotation folder (original VidSTG files only)")
        p.add_argument("--json", action="store_true", help="print the result as one JSON object")

    score = actions.add_parser("score", help="score a prediction file against annotations")
    score.add_argument("--annotations", required=True, help="annotation file (HC-STVG, TubeDETR list, VidSTG, synth)")
    score.add_argument("--predictions", required=True, help="prediction JSON {query_id: {sted, boxes}}")
    score.add_argument("--tracks", default=None, help="tracks.jsonl of the run: adds the perception ceiling")
    score.add_argument("--require-all", action="store_true", help="fail when a query has no prediction")
    score.add_argument("--report", default=None, metavar="DIR", help="also write report.json/.md and plots here")
    common(score)

    run = actions.add_parser("run", help="videos + annotations -> the pipeline -> predictions, metrics, report")
    run.add_argument("--videos", required=True, help="folder with the video files (name = video id + extension)")
    run.add_argument("--annotations", required=True)
    run.add_argument("--out", required=True, help="output folder")
    common(run)
    from stvg_ros.evaluation.runner import add_run_arguments

    add_run_arguments(run)

    replay = actions.add_parser("replay", help="replay a rosbag2 into the running graph with sim time and score")
    replay.add_argument("--sidecar", required=True, help="the bag's queries and annotations (JSON, see docs)")
    replay.add_argument("--bag", default=None, help="rosbag2 folder or file (sqlite3 or MCAP); default: the sidecar's")
    replay.add_argument("--out", required=True, help="output folder")
    common(replay)
    from stvg_ros.evaluation.replay import add_replay_arguments

    add_replay_arguments(replay)

    make_set = actions.add_parser("make-set", help="write a seeded synthetic benchmark set (videos, bags, annotations)")
    from stvg_ros.evaluation.benchsets import add_make_set_arguments

    add_make_set_arguments(make_set)
    make_set.add_argument("--json", action="store_true", help="print the set's manifest as JSON")
    return parser


def _print_summary(summary: dict, as_json: bool) -> None:
    if as_json:
        json.dump(summary, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
        return
    from stvg_ros.evaluation.report import summary_lines

    print("\n".join(summary_lines(summary)))


def _score(args: argparse.Namespace) -> int:
    from stvg_ros.evaluation.scoring import score_files

    summary = score_files(
        args.annotations,
        args.predictions,
        protocol=args.protocol,
        annotation_format=args.annotation_format,
        vidor_dir=args.vidor_dir,
        tracks=args.tracks,
        require_all=args.require_all,
        report_dir=args.report,
    )
    _print_summary(summary, args.json)
    return 0


def _run(args: argparse.Namespace) -> int:
    from stvg_ros.evaluation.runner import run_from_args

    _print_summary(run_from_args(args), args.json)
    return 0


def _replay(args: argparse.Namespace) -> int:
    from stvg_ros.evaluation.replay import replay_from_args

    _print_summary(replay_from_args(args), args.json)
    return 0


def _make_set(args: argparse.Namespace) -> int:
    from stvg_ros.evaluation.benchsets import make_set_from_args

    manifest = make_set_from_args(args)
    if args.json:
        json.dump(manifest, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        print(f"wrote {manifest['n_queries']} queries ({manifest['level']}) to {manifest['root']}")
    return 0


def run(args: argparse.Namespace) -> int:
    from stvg_ros.evaluation.errors import EvalError

    handlers = {"score": _score, "run": _run, "replay": _replay, "make-set": _make_set}
    expected: tuple[type[BaseException], ...] = (EvalError, OSError)
    try:
        from stvg_ros.core.bag_io import BagError
        from stvg_ros.core.video_io import VideoError

        expected += (BagError, VideoError)
    except ImportError:  # pragma: no cover - core always ships these
        pass
    try:
        return handlers[args.eval_command](args)
    except expected as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"stvg-ros eval: error: {message}", file=sys.stderr)
        return 2
