"""Command line: ``kdnas search | report | export | distill | teacher train | demo``.

The CLI owns argument parsing (:mod:`.parser`), progress display (:mod:`.progress`), exit
codes and friendly errors; the commands (:mod:`.commands`) call the library. ``main(argv)
-> int`` is easy to test.
"""

from __future__ import annotations

import logging
import sys

from kdnas.cli.parser import build_parser
from kdnas.core.errors import KdnasError

log = logging.getLogger("kdnas")


def console_logging(verbose: bool = False) -> None:
    """The console speaks kdnas' lines: its own loggers at INFO (DEBUG with ``--verbose``),
    every third-party library's (ONNX Runtime's per-candidate shape inference, Optuna's trial
    lines) at WARNING only."""
    logging.basicConfig(format="%(levelname)s: %(message)s", stream=sys.stderr)
    logging.getLogger().setLevel(logging.WARNING)
    for ours in ("kdnas", "search_spaces", "benchmarks"):
        logging.getLogger(ours).setLevel(logging.DEBUG if verbose else logging.INFO)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if getattr(args, "command", None) == "bench":  # its own entry point parses its options
        args.args = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    console_logging(args.verbose)
    args.run = main  # commands that run others (demo) go through the same door
    args.argv = list(sys.argv[1:] if argv is None else argv)  # --workers starts it again
    try:
        return int(args.func(args) or 0)
    except KdnasError as e:
        print(f"kdnas: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kdnas: interrupted", file=sys.stderr)
        return 130
