"""`prunerzero analyze` (what a search run found) and `prunerzero sweep` (perplexity vs sparsity).

Heavy imports happen inside the commands, so `prunerzero --help` stays instant.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .errors import nonempty
from .windows import BOS_HELP, BOS_MODES


def _names(text: str) -> tuple[str, ...]:
    values = tuple(v.strip() for v in text.split(",") if v.strip())
    if not values:  # an empty value must not quietly mean the default
        raise argparse.ArgumentTypeError("empty list")
    return values


def cmd_analyze(args: argparse.Namespace) -> int:
    from .analysis import analyze_run

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
    from .analysis import analyze_runs

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


def cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep.config import MD, SweepConfig
    from .sweep.run import run_sweep

    cfg = SweepConfig(model=args.model, methods=args.methods, sparsities=args.sparsities, pattern=args.pattern,
                      group=args.group, calib_data=args.calib_data, nsamples=args.nsamples, seqlen=args.seqlen,
                      seed=args.seed, bos=args.bos, batch_size=args.batch_size, percdamp=args.percdamp, blocksize=args.blocksize,
                      gradients=args.gradients, eval_data=args.eval_data, eval_seqlen=args.eval_seqlen,
                      eval_tokens=args.eval_tokens, device=args.device, dtype=args.dtype)
    run_sweep(cfg, Path(args.out), overwrite=args.overwrite, progress=not args.quiet)
    print((Path(args.out) / MD).read_text())
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="figures and statistics of a search run (writes analysis.md); with several "
                       "runs, which metric properties go with fitness across them (writes cross_runs.md)")
    p.add_argument("run", nargs="+", type=nonempty, help="search run folder(s) (runs/<name>, holding evaluations.jsonl)")
    p.add_argument("--out", type=nonempty, help="one run: write analysis.md and the figures here instead of the run folder; "
                   "several runs: write cross_runs.md and its figure here instead of the runs' common parent folder")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("sweep", help="perplexity of several methods over many sparsities (one calibration pass)")
    p.add_argument("--out", type=nonempty, required=True,
                   help="folder for sweep.json, sweep.md, sweep.png and sweep.jsonl")
    p.add_argument("--model", type=nonempty, default="smollm2-135m")
    p.add_argument("--methods", type=_names, default=("magnitude", "wanda", "sparsegpt", "pruner-zero"),
                   help="comma list of methods (magnitude, wanda, sparsegpt, gblm, ria, pruner-zero)")
    p.add_argument("--sparsities", type=nonempty, default=None,
                   help="start:stop:step (stop included) or a comma list; default 0.1:0.8:0.1, or N/M for N:M")
    p.add_argument("--pattern", type=nonempty, default="unstructured",
                   help="unstructured, or N:M (then only its own sparsity)")
    p.add_argument("--group", type=nonempty, default="row",
                   help="comparison group for unstructured sparsity: row or layer")
    p.add_argument("--calib-data", type=nonempty, default="general", help="general (default mix), lambada, squad, c4, wikitext2 (train) or a text file")
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=512, help="calibration window (and eval window by default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bos", default="auto", choices=BOS_MODES, help=BOS_HELP)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--percdamp", type=float, default=0.01, help="SparseGPT damping")
    p.add_argument("--blocksize", type=int, default=128, help="SparseGPT column block")
    p.add_argument("--gradients", type=nonempty,
                   help="precomputed gradient file (else computed and cached when G is used)")
    p.add_argument("--eval-data", type=nonempty, default="wikitext2",
                   help="wikitext2, c4, ptb, lambada, squad or a text file")
    p.add_argument("--eval-seqlen", type=int, default=None)
    p.add_argument("--eval-tokens", type=int, default=None, help="evaluate only the first N test tokens")
    p.add_argument("--device", type=nonempty, default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    p.add_argument("--dtype", type=nonempty, default="float32", help="weights as loaded: float32, bfloat16 or float16")
    p.add_argument("--overwrite", action="store_true", help="replace a sweep with other settings in --out")
    p.set_defaults(func=cmd_sweep)
