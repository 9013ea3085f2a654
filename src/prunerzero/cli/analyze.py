"""`prunerzero analyze`: what one search run found (analysis.md), or what several runs agree on
(cross_runs.md)."""
from __future__ import annotations

import argparse
from pathlib import Path

from .options import nonempty


def cmd_analyze(args: argparse.Namespace) -> int:
    from ..analysis import analyze_run

    if len(args.run) > 1:
        return _cmd_analyze_runs(args)
    result = analyze_run(Path(args.run[0]), args.out)
    print(f"{result['candidates']} distinct valid candidates; wrote {result['markdown']} and "
          f"{len(result['figures'])} figure(s)")
    if result["principles"]:
        print("principles this run supports:")
        for line in result["principles"]:
            print(f"  - {line}")
    else:
        print(f"no property correlates with {result['word']} at p < 0.05")
    return 0


def _cmd_analyze_runs(args: argparse.Namespace) -> int:
    from ..analysis import analyze_runs

    result = analyze_runs([Path(r) for r in args.run], args.out)
    print(f"{len(result['runs'])} runs, {result['n']} candidates pooled on the {result['scale']}; wrote "
          f"{result['markdown']}" + (" and 1 figure" if result["figure"] is not None else ""))
    if result["principles"]:
        print("principles these runs support:")
        for line in result["principles"]:
            print(f"  - {line}")
    else:
        print(f"no property correlates with the within-run fitness rank below the Bonferroni threshold "
              f"({result['threshold']:.2g}) without a run against it")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="figures and statistics of a search run (writes analysis.md); with several "
                       "runs, which metric properties go with fitness across them (writes cross_runs.md)")
    p.add_argument("run", nargs="+", type=nonempty,
                   help="search run folder(s) (runs/<name>, holding evaluations.jsonl)")
    p.add_argument("--out", type=nonempty,
                   help="one run: write analysis.md and the figures here instead of the run folder; several runs: "
                        "write cross_runs.md and its figure here instead of the runs' common parent folder")
    p.set_defaults(func=cmd_analyze)
