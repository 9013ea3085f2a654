"""`prunerzero search`: the Pruner-Zero metric search from the command line."""
from __future__ import annotations

import argparse
from pathlib import Path

from .errors import UserError, clip, nonempty
from .windows import BOS_HELP, BOS_MODES


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma list of integers: {clip(text, 60)}") from None
    if not values:
        raise argparse.ArgumentTypeError("empty list")
    return values


def _floats(text: str) -> tuple[float, ...]:
    """A comma list of numbers; empty only when the text is (e.g. --owl-lambdas '' = none evolved)."""
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma list of numbers: {clip(text, 60)}") from None


def _names(text: str) -> tuple[str, ...]:
    """A comma list of names; an empty value is an error (it must not quietly mean the default)."""
    values = tuple(v.strip() for v in text.split(",") if v.strip())
    if not values:
        raise argparse.ArgumentTypeError("empty list")
    return values


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {clip(text, 40)}") from None


def _baselines(text: str) -> tuple[str, ...]:
    return () if text.strip().lower() == "none" else _names(text)


def cmd_search(args: argparse.Namespace) -> int:
    from .search.config import SearchConfig
    from .search.executors import ExecutorSpec
    from .search.job import SearchJob
    from .search.run import run_job
    from .search.leaderboard import LEADERBOARD_MD

    # Honoured on --resume too: where candidates run is not part of the run's saved settings.
    executor = ExecutorSpec(args.executor, args.workers, args.ray_address, args.cpus_per_worker)
    if args.resume:
        out, job = Path(args.resume), SearchJob()
    else:
        args.generations = 15 if args.generations is None else args.generations
        if not args.out:
            raise UserError("pass --out DIR for a new search, or --resume DIR to continue one")
        out = Path(args.out)
        settings = args.settings or (f"{args.sparsity}:{args.pattern}" if args.pattern == "unstructured" else args.pattern,)
        search = SearchConfig(population=args.population, generations=args.generations, seed=args.seed,
                              seed_named=not args.no_seed_named, max_depth=args.max_depth, max_size=args.max_size,
                              owl_lambdas=args.owl_lambdas, parsimony=args.parsimony)
        job = SearchJob(model=args.model, settings=tuple(settings), calib_data=args.calib_data, nsamples=args.nsamples,
                        seqlen=args.seqlen, seed=args.seed, bos=args.bos, fitness_data=args.fitness_data,
                        fidelity_tokens=args.fidelity_tokens, ladder=args.ladder, terminal_scale=args.terminals,
                        eval_dtype=args.eval_dtype,
                        device=args.device,
                        dtype=args.dtype, device_map=args.device_map, max_memory=args.max_memory,
                        report_data=args.report_data,
                        report_tokens=args.report_tokens, calib_seeds=args.calib_seeds,
                        leaderboard_top=args.leaderboard_top,
                        baselines=args.baselines, reconstruct=args.reconstruct,
                        reconstruct_mode=args.reconstruct_mode, allocation=args.allocation, owl_m=args.owl_m,
                        owl_lambda=args.owl_lambda, search=search)
    outcome = run_job(job, out, resume=bool(args.resume), overwrite=args.overwrite, progress=not args.quiet,
                      executor=executor, generations=args.generations if args.resume else None)
    result = outcome["result"]
    if result.best.spec.scale == "raw":
        print(f"best metric: {result.best}   (saved to {out}/best_metric.txt, best_tree.json and best_metric.json)")
    else:
        print(f"best metric: {result.best} with scale-free terminals   (saved to {out}/best_metric.json: "
              "prune --metric-file it; the .txt and tree files hold the formula only)")
    s = result.stats
    print(f"evaluations {s['evaluations']}, cache hits {s['cache_hits']}, duplicates replaced "
          f"{s['duplicates_replaced']}, invalid {s['invalid']}; fidelity agreement {s.get('fidelity_spearman')}")
    if s.get("worker_replacements"):
        print(f"Ray workers replaced after dying: {s['worker_replacements']} (their candidates were retried)")
    board = out / LEADERBOARD_MD
    if board.exists():
        print(board.read_text())
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="discover a pruning metric by genetic programming (Pruner-Zero)")
    p.add_argument("--out", type=nonempty, help="run folder (evaluations.jsonl, checkpoint.json, leaderboard.md, ...)")
    p.add_argument("--resume", type=nonempty, metavar="DIR", help="continue the search in DIR after a crash or kill")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier search in --out")
    p.add_argument("--model", type=nonempty, default="smollm2-135m")
    p.add_argument("--sparsity", type=_float, default=0.5)
    p.add_argument("--pattern", type=nonempty, default="unstructured")
    p.add_argument("--settings", type=_names, default=None,
                   help='several settings scored together by geometric-mean perplexity, e.g. "0.5,2:4"')
    p.add_argument("--population", type=int, default=40)
    p.add_argument("--generations", type=int, default=None,
                   help="default 15; with --resume: a new budget (extend a finished search, or stop sooner)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-depth", type=int, default=6)
    p.add_argument("--max-size", type=int, default=25)
    p.add_argument("--no-seed-named", action="store_true", help="do not put the named metrics in generation 0")
    p.add_argument("--calib-data", type=nonempty, default="general", help="general (the default mix of five kinds of text), lambada, squad, c4 or a text file")
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--bos", default="auto", choices=BOS_MODES, help=BOS_HELP)
    p.add_argument("--fitness-data", type=nonempty, default="general",
                   help="scored on its search split (general: 20%% of the mix's documents; lambada: last 20%% of "
                        "passages; squad: last 20%% of articles)")
    p.add_argument("--fidelity-tokens", type=_ints, default=(1024, 4096),
                   help="perplexity token budgets, cheapest first (when no --ladder)")
    p.add_argument("--ladder", type=_names, default=(),
                   help="fidelity rungs, cheapest first: err (layer output error, no forward pass), "
                        "kl:N (KL from the dense model on N tokens), ppl:N (perplexity); e.g. err,kl:4096")
    p.add_argument("--device", type=nonempty, default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    p.add_argument("--eval-dtype", type=nonempty, default="float32", help="float32 or bfloat16 for fitness forwards")
    p.add_argument("--dtype", type=nonempty, default="float32", help="weights as loaded: float32, bfloat16 or float16")
    p.add_argument("--device-map", type=nonempty, default="none",
                   help="none (one --device), or auto / balanced / sequential: one model spread over GPUs "
                        "(serial executor; every layer must fit on a GPU)")
    p.add_argument("--max-memory", type=nonempty, help='with --device-map: memory per device, e.g. "0=70GiB,1=70GiB"')
    p.add_argument("--report-data", type=nonempty, default="wikitext2",
                   help="reporting texts for the leaderboard, comma-separated: wikitext2, qasper (NLP papers), a file")
    p.add_argument("--calib-seeds", type=_ints, default=(),
                   help="the leaderboard prunes with each of these calibration draws and reports mean and spread "
                        "(default: --seed only)")
    p.add_argument("--terminals", default="raw", choices=("raw", "layer"),
                   help="layer: scale-free W, X, G (each divided by its mean over the layer), so sums of terms "
                        "balance the same way on every model; the winner is saved with it in best_metric.json")
    p.add_argument("--parsimony", type=_float, default=0.01,
                   help="fitness values within this relative tolerance count as equal and the smaller formula wins "
                        "(0 = off)")
    p.add_argument("--report-tokens", type=int, default=None, help="first N tokens of the reporting set")
    p.add_argument("--leaderboard-top", type=int, default=3)
    p.add_argument("--baselines", type=_baselines, default=("magnitude", "wanda", "gblm", "ria", "pruner-zero"),
                   help="comma list of methods measured next to the searched metrics, or none")
    p.add_argument("--reconstruct", default="none", choices=("none", "obs", "admm"),
                   help="obs: score candidates with the OBS weight update after their mask (slower per candidate)")
    p.add_argument("--reconstruct-mode", default="fixed", choices=("fixed", "block"))
    p.add_argument("--allocation", default="uniform", choices=("uniform", "owl"),
                   help="owl: OWL layer-wise sparsity for unstructured settings")
    p.add_argument("--owl-m", type=_float, default=5.0)
    p.add_argument("--owl-lambda", type=_float, default=0.08)
    p.add_argument("--owl-lambdas", type=_floats, default=(),
                   help="evolve OWL's lambda with the metric, over these values (e.g. 0,0.04,0.08,0.12); "
                        "each genome carries one")
    p.add_argument("--executor", default="serial", choices=("serial", "ray"),
                   help="where candidates are evaluated: serial (this process) or ray (pip install 'prunerzero[ray]'); "
                        "may differ on --resume")
    p.add_argument("--workers", type=int, default=None,
                   help="Ray workers, each loading the model once (default: one per GPU of the cluster, else 1)")
    p.add_argument("--ray-address", type=nonempty, default=None, metavar="ADDR",
                   help="join a running Ray cluster (auto or HOST:PORT); default: start a local one")
    p.add_argument("--cpus-per-worker", type=int, default=None,
                   help="CPUs (and torch threads) per Ray worker (default: a local cluster's cores split evenly, else 1)")
    p.set_defaults(func=cmd_search)
