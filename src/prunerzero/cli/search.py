"""`prunerzero search`: the Pruner-Zero metric search from the command line (``search.run.run_job``)."""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from ..config import PruneConfig
from ..errors import UserError
from ..search.config import SearchConfig
from ..search.job import SearchJob
from ..settings import resolve
from .options import add_settings, given, nonempty

# A new search from the command line weighs formula size, and re-scores a tenth of each generation at the
# expensive rung of the default ladder; the API's defaults stay as runs saved before them were made.
# Only gauge-invariant formulas by default: a metric whose masks change when the same model is
# parameterised differently ranks the next model's weights by its scales (docs/BENCHMARKS.md,
# "gauge-transfer": the seed-0 search's 2:4 winner lost 1.74x on a regauged SmolLM2).
# Formulas that prune alike are evaluated once: div divides by a scalar and many trees are monotone
# transforms of one another, so 60% of a gauge search's candidates were clones of a few masks
# (runs/seeds/gauge-seed0: 128 of 343 cheap evaluations scored 94.529, every one ranking like G * W).
CLI_SEARCH_DEFAULTS = {"parsimony": 0.01, "rescore_fraction": 0.1, "invariance": "gauge", "dedup": "masks"}
# An invariant search's language adds the per-row and per-column normalisers: invariant scores whose
# rows scale differently (W sqrt(X) and G W) can only be summed once each is normalised per row.
INVARIANT_EXTRA_OPS = ("rown", "coln")
# The fidelity ladder chosen by the fitness study (docs/BENCHMARKS.md, "fitness"): perplexity on 1024 tokens
# of the search split ranks candidates for selection at a fifth of the cost of 4k, and the full sequential
# pipeline, the only rung that ranks the best metrics at 2:4 like the truth, decides the hall of fame.
DEFAULT_LADDER = ("ppl:1024", "seq:4096")


def cmd_search(args: argparse.Namespace) -> int:
    from ..masks import parse_setting, per_row_twin
    from ..search.executors import ExecutorSpec
    from ..search.leaderboard import LEADERBOARD_MD
    from ..search.run import run_job
    from ..symbolic import named_match

    # Honoured on --resume too: where candidates run is not part of the run's saved settings.
    executor = ExecutorSpec(args.executor, args.workers, args.ray_address, args.cpus_per_worker)
    search_given = given(args, SearchConfig)
    if args.resume:
        out, job = Path(args.resume), SearchJob()
    else:
        if not args.out:
            raise UserError("pass --out DIR for a new search, or --resume DIR to continue one")
        out = Path(args.out)
        job_given = given(args, SearchJob)
        if "seed" in job_given:  # one --seed: the calibration draw and the GP's generator
            search_given["seed"] = job_given["seed"]
        if args.no_seed_named:
            search_given["seed_named"] = False
        if "ladder" not in job_given and "fidelity_tokens" not in job_given:
            job_given["ladder"] = DEFAULT_LADDER  # --fidelity-tokens alone: perplexity rungs, as before the ladder
        settings = job_given.get("settings") or (
            f"{args.sparsity}:{args.pattern}" if args.pattern == "unstructured" else args.pattern,)
        search_settings = {**CLI_SEARCH_DEFAULTS, **search_given}
        if search_settings["invariance"] != "none" and "ops" not in search_given:
            from ..symbolic import PRUNER_ZERO_OPS

            search_settings["ops"] = (*PRUNER_ZERO_OPS, *INVARIANT_EXTRA_OPS)
        job = resolve(SearchJob, job_given, settings=tuple(settings),
                      search=resolve(SearchConfig, search_settings))
    outcome = run_job(job, out, resume=bool(args.resume), overwrite=args.overwrite, progress=not args.quiet,
                      executor=executor, generations=search_given.get("generations") if args.resume else None)
    result = outcome["result"]
    same = named_match(replace(result.best, genes=()))
    if same is not None:  # seeded into generation 0 and never beaten: not a discovery
        print(f"best metric: {result.best} = the named metric {same}, seeded into the first generation: the search "
              f"found nothing better by its fitness   (saved to {out}/best_metric.txt)")
    elif result.best.spec.scale == "raw":
        print(f"best metric: {result.best}   (saved to {out}/best_metric.txt, best_tree.json and best_metric.json)")
    else:
        print(f"best metric: {result.best} with scale-free terminals   (saved to {out}/best_metric.json: "
              "prune --metric-file it; the .txt and tree files hold the formula only)")
    layer = [st for st in outcome["job"].settings if per_row_twin(st) is not None]
    if layer:  # the formula was chosen by masks compared across the layer; per row it may rank low
        groups = " or ".join(dict.fromkeys(f"--group {parse_setting(st).group}" for st in layer))
        print(f"searched with its scores compared across the whole layer ({', '.join(layer)}): prune with "
              f"{groups} to get the masks its fitness measured")
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
    add_settings(p, SearchJob, ("model",))
    add_settings(p, PruneConfig, ("sparsity", "pattern"), defaults=True)  # one setting, as prune reads it
    add_settings(p, SearchJob, ("settings",))
    add_settings(p, SearchConfig, ("population", "generations"))
    add_settings(p, SearchJob, ("seed",), seed={"help": "the calibration draw and the search's random generator"})
    add_settings(p, SearchConfig, ("max_depth", "max_size"))
    p.add_argument("--no-seed-named", action="store_true", help="do not put the named metrics in generation 0")
    add_settings(p, SearchJob, ("calib_data", "nsamples", "seqlen", "bos", "fitness_data", "fidelity_tokens", "ladder",
                                "device", "eval_dtype", "dtype", "device_map", "max_memory", "report_data",
                                "calib_seeds", "terminal_scale", "seq_nsamples"),
                 seqlen={"help": "tokens per window: calibration, fitness and the leaderboard's perplexity"},
                 device_map={"help": "none (one --device), or auto / balanced / sequential: one model spread over "
                                     "GPUs (serial executor; every layer must fit on a GPU)"})
    add_settings(p, SearchConfig, ("parsimony", "rescore_fraction"),
                 parsimony={"help": "fitness values within this relative tolerance count as equal and the smaller "
                                    f"formula wins (0 = off; default {CLI_SEARCH_DEFAULTS['parsimony']:g})"},
                 rescore_fraction={"help": "share of each generation's best (by the previous rung) scored again at "
                                           f"the next rung (default {CLI_SEARCH_DEFAULTS['rescore_fraction']:g})"})
    add_settings(p, SearchJob, ("report_tokens", "leaderboard_top", "baselines", "reconstruct", "reconstruct_mode",
                                "mask_only", "allocation", "owl_m", "owl_lambda"))
    add_settings(p, SearchConfig, ("owl_lambdas", "invariance", "dedup", "ops"),
                 invariance={"help": "only formulas whose masks do not change when W, X, G are rescaled: gauge "
                                     "(their overall size, and the per-channel / per-row rescalings that keep the "
                                     "model's function; the default), units (overall size only), none (any formula)"},
                 dedup={"help": "what counts as a duplicate candidate: masks (the same 50%% and 2:4 masks on fixed "
                                "random layers up to 0.2%% of entries, e.g. W * sqrt(X) and sqr(W) * X: evaluated "
                                "once; the default) or formula (the same formula only)"},
                 ops={"help": "primitives of random trees and point mutation, a comma list (default: Pruner-Zero's "
                              "sqr,neg,abs,log,exp,sqrt,tanh,pow,skp,mms,zsn,add,sub,mul,div, plus rown,coln unless "
                              "--invariance none)"})
    p.add_argument("--executor", default="serial", choices=("serial", "ray"),
                   help="where candidates are evaluated: serial (this process) or ray (pip install 'prunerzero[ray]'); "
                        "may differ on --resume")
    p.add_argument("--workers", type=int, default=None,
                   help="Ray workers, each loading the model once (default: one per GPU of the cluster, else 1)")
    p.add_argument("--ray-address", type=nonempty, default=None, metavar="ADDR",
                   help="join a running Ray cluster (auto or HOST:PORT); default: start a local one")
    p.add_argument("--cpus-per-worker", type=int, default=None,
                   help="CPUs (and torch threads) per Ray worker (default: a local cluster's cores split evenly, "
                        "else 1)")
    p.set_defaults(func=cmd_search)
