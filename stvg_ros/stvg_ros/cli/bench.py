"""`stvg-ros bench NAME`: benchmarks that print their figures (JSON with --json)."""

from __future__ import annotations

import argparse
import importlib
import json
import sys

#: benchmark name -> module with `add_arguments(parser)` and `run(args) -> dict`.
BENCHMARKS: dict[str, str] = {
    "perception": "stvg_ros.benchmarks.perception",
    "grounding": "stvg_ros.benchmarks.grounding",
    "soak": "stvg_ros.benchmarks.soak",
}


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser("bench", help="benchmarks that print figures as JSON")
    names = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name, module in BENCHMARKS.items():
        bench_parser = names.add_parser(name, help=f"the {name} benchmark")
        bench_parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
        importlib.import_module(module).add_arguments(bench_parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print its figures; exit code 1 when it reports `"pass": false` (soak)."""
    figures = importlib.import_module(BENCHMARKS[args.benchmark]).run(args)
    if args.json:
        json.dump(figures, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        for key, value in sorted(figures.items()):
            print(f"{key:32s} {value}")
    return 0 if figures.get("pass", True) else 1
