"""`prunerzero sweep`: perplexity of several methods over many sparsities, one calibration pass in all."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..settings import resolve
from ..sweep.config import SweepConfig
from .options import add_settings, given, nonempty

OPTIONS = ("model", "methods", "sparsities", "pattern", "group", "calib_data", "nsamples", "seqlen", "seed", "bos",
           "batch_size", "percdamp", "blocksize", "gradients", "eval_data", "eval_seqlen", "eval_tokens", "device",
           "dtype")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="perplexity of several methods over many sparsities (one calibration pass)")
    p.add_argument("--out", type=nonempty, required=True,
                   help="folder for sweep.json, sweep.md, sweep.png and sweep.jsonl")
    add_settings(p, SweepConfig, OPTIONS)
    p.add_argument("--overwrite", action="store_true", help="replace a sweep with other settings in --out")
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args: argparse.Namespace) -> int:
    from ..sweep.config import MD
    from ..sweep.run import run_sweep

    cfg = resolve(SweepConfig, given(args, SweepConfig))
    run_sweep(cfg, Path(args.out), overwrite=args.overwrite, progress=not args.quiet)
    print((Path(args.out) / MD).read_text())
    return 0
