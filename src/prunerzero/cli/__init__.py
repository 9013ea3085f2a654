"""`prunerzero` command line: one module per subcommand, each a thin wrapper over the library API.

  prune.py    prune a model and measure it       evaluate.py  measure any model
  sweep.py    perplexity vs sparsity              search.py    the Pruner-Zero metric search
  analyze.py  what search runs found              metric.py    inspect and convert formulas
  options.py  the parser, value parsers, and options made from the settings' declarations

Bad input exits with code 2 and one line on stderr; heavy imports happen inside the commands so
`prunerzero --help` is instant.
"""
from __future__ import annotations

import argparse
import errno
import sys
from typing import Callable

from ..errors import UserError, clip, one_line
from . import analyze, evaluate, metric, prune, search, sweep
from .options import Parser

COMMANDS = (prune, evaluate, metric, search, analyze, sweep)  # each: register(subparsers)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="prunerzero",
                    description="Post-training pruning of causal LMs and the Pruner-Zero metric search")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for command in COMMANDS:
        command.register(sub)
    parser.prune_parser = sub.choices["prune"]  # type: ignore[attr-defined]
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_libraries()
    if getattr(args, "quiet", False):
        _no_library_bars()
    try:
        handler: Callable[[argparse.Namespace], int] = args.func
        return handler(args)
    except UserError as exc:
        print(f"prunerzero: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno != errno.ENAMETOOLONG:
            raise
        print(f"prunerzero: error: file name too long: {clip(exc.filename, 60)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("prunerzero: interrupted", file=sys.stderr)
        return 130


def _no_library_bars() -> None:
    """--quiet: libraries' own bars (transformers' GGUF conversion uses plain tqdm) default to off.
    Our bars pass `disable=` explicitly, and call-time keywords override a partialmethod's."""
    from functools import partialmethod

    from tqdm import tqdm

    tqdm.__init__ = partialmethod(tqdm.__init__, disable=True)  # type: ignore[method-assign]


def _quiet_libraries() -> None:
    """Library chatter (weight-loading bars, deprecation notes) would bury our own progress bars."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
