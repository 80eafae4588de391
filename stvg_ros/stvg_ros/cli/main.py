"""`stvg-ros` entry point: parses arguments and dispatches to one subcommand module.

Each subcommand module defines `add_parser(subparsers) -> argparse.ArgumentParser` and
`run(args) -> int`. Modules are imported lazily so `stvg-ros synth` does not import torch.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import importlib
import logging
import sys

#: subcommand -> (module, one-line help). The names are the public interface: keep them stable.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("stvg_ros.cli.demo", "run the whole graph on a generated video and ask one query"),
    "up": ("stvg_ros.cli.up", "start the node graph in this process (what the launch file starts)"),
    "ask": ("stvg_ros.cli.ask", "send a query to a running grounding node (service or action)"),
    "ground": ("stvg_ros.cli.ground", "ground a query in a video file offline, without ROS"),
    "synth": ("stvg_ros.cli.synth", "write synthetic scenes: videos, rosbag2 files, annotations"),
    "eval": ("stvg_ros.cli.eval", "score predictions, run the pipeline on a dataset, replay bags"),
    "bench": ("stvg_ros.cli.bench", "benchmarks that print figures as JSON"),
    "models": ("stvg_ros.cli.models", "list, pull and verify model files from models/ manifests"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stvg-ros", description="Spatio-temporal video grounding for ROS 2.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # Import only the module of the command being run; list the others by their help line.
    wanted = next((a for a in argv if a in SUBCOMMANDS), None)
    for name, (module, help_text) in SUBCOMMANDS.items():
        if name == wanted:
            importlib.import_module(module).add_parser(sub)
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    with contextlib.suppress(OSError, ValueError):  # no stderr file (captured by a test)
        faulthandler.enable()  # a crash in native code (DDS, ONNX Runtime, llama.cpp) prints every thread's stack
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.command:
        parser.print_help()
        return 2
    module = importlib.import_module(SUBCOMMANDS[args.command][0])
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the last line of defence: one line, never a traceback
        if args.verbose:
            raise
        print(f"stvg-ros {args.command}: error: {error_line(exc)}", file=sys.stderr)
        return 1


def error_line(exc: BaseException) -> str:
    """One line for an error that reached the entry point: the file and what the OS said for an OS
    error (disk full, read-only folder, missing file), else the exception's own message; errors
    nobody expected say how to get the traceback."""
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror}{where}"
    message = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, (ValueError, LookupError, RuntimeError)):
        return message
    return f"unexpected {type(exc).__name__}: {message} (run with -v for the traceback, and please report it)"


if __name__ == "__main__":
    sys.exit(main())
