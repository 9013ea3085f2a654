"""Ray executor benchmark for docs/BENCHMARKS.md: seconds per candidate with the serial executor,
Ray with 1 worker and Ray with 2 workers, and what starting Ray costs.

Every configuration evaluates the same fixed list of candidate metrics at the cheapest
fidelity, after one untimed warm-up candidate per worker.  Torch threads: serial uses all
cores in this process; Ray workers split them (cores // workers threads and CPUs each), so two
workers do not oversubscribe two cores.  Start-up: for serial, building the fitness in this
process (load the model, read the run's saved statistics); for Ray, starting a local cluster
plus every worker doing that same build in parallel.

Run from the repository root:  .venv/bin/python bench/ray_bench.py [--candidates N] [--workers 1,2] ...
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from itertools import cycle, islice
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run_bench  # noqa: E402
from run_bench import ROOT, machine, replace_section  # noqa: E402

# Fixed candidates: the named metrics, then formulas of the kind the search breeds.
CANDIDATES = ("magnitude", "wanda", "gblm", "ria", "pruner-zero", "abs(W) * G", "abs(W) * X",
              "sqrt(abs(W)) * G", "sqr(W) * X", "abs(W) * mms(G)", "log(abs(W)) * sqrt(X)", "W * zsn(G) * X")


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--candidates", type=int, default=12, help=f"how many of the fixed list (cycled; {len(CANDIDATES)} distinct)")
    p.add_argument("--workers", type=_ints, default=(1, 2), help="Ray worker counts to measure")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--settings", default="0.5,2:4")
    p.add_argument("--nsamples", type=int, default=32, help="calibration samples for X and G (computed once)")
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--fidelity-tokens", type=int, default=1024)
    p.add_argument("--eval-dtype", default="bfloat16")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-ray", help="run folder holding the statistics")
    p.add_argument("--doc", type=Path, default=run_bench.DOC, help="the BENCHMARKS.md to rewrite (its ray section)")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import torch

    from prunerzero.search import SearchConfig
    from prunerzero.search.context import ProxyFitnessFactory, build_context
    from prunerzero.search.executors import EvalRequest, RayExecutor, SerialExecutor
    from prunerzero.search.job import SearchJob
    from prunerzero.symbolic import load_metric

    cores = os.cpu_count() or 1
    job = SearchJob(model=args.model, settings=tuple(s for s in args.settings.split(",") if s), nsamples=args.nsamples,
                    seqlen=args.seqlen, fidelity_tokens=(args.fidelity_tokens,), eval_dtype=args.eval_dtype,
                    device="cpu", report_data=None, search=SearchConfig())
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cores)
    t0 = time.perf_counter()
    build_context(job, args.out, progress=True)  # X and G into the run folder (read back by every executor)
    stats_seconds = time.perf_counter() - t0
    gc.collect()
    factory = ProxyFitnessFactory(job, str(args.out.resolve()))
    fidelity = f"{args.fidelity_tokens}tok"
    names = list(islice(cycle(CANDIDATES), args.candidates))
    jobs = [EvalRequest(str(i), load_metric(n), fidelity) for i, n in enumerate(names)]

    def timed(ex, warmup: int) -> tuple[float, dict[str, float]]:
        list(ex.map_unordered(EvalRequest(f"w{i}", load_metric(CANDIDATES[i]), fidelity) for i in range(warmup)))
        start = time.perf_counter()
        values = {r.request.key: r.value for r in ex.map_unordered(jobs)}
        return (time.perf_counter() - start) / len(jobs), values

    rows = []
    start = time.perf_counter()
    fitness = factory()
    setup = time.perf_counter() - start
    per, ref = timed(SerialExecutor(fitness), 1)
    rows.append(("serial", "-", cores, setup, None, per))
    print(f"serial: {per:.2f} s / candidate, start-up {setup:.1f} s", flush=True)
    del fitness
    gc.collect()
    diffs = []
    for n in args.workers:
        threads = max(1, cores // n)
        ex = RayExecutor(factory, workers=n, cpus_per_worker=threads, use_gpus=False)
        try:
            ex.wait_ready()
            per, values = timed(ex, n)
        finally:
            ex.close()
        rows.append(("ray", n, threads, ex.seconds["ready"], ex.seconds["cluster"], per))
        diffs += [abs(values[k] - ref[k]) / abs(ref[k]) for k in ref if values[k] != ref[k]]
        print(f"ray x{n}: {per:.2f} s / candidate, start-up {ex.seconds['ready']:.1f} s "
              f"(cluster {ex.seconds['cluster']:.1f} s)", flush=True)

    serial = rows[0][-1]
    lines = ["## Distributed search (Ray)", "",
             f"Seconds per candidate metric at the cheapest fidelity ({args.fidelity_tokens} tokens of LAMBADA's "
             f"search split, settings {args.settings}, fitness forwards in {args.eval_dtype}), model "
             f"`{args.model}`, the same {len(jobs)} candidates for every executor (the first "
             f"{min(len(jobs), len(CANDIDATES))} of: {', '.join(f'`{c}`' for c in CANDIDATES)}), after one untimed "
             f"warm-up candidate per worker. Machine: {machine()}; Ray {_ray_version()}.", "",
             "| executor | workers | torch threads (and Ray CPUs) per worker | start-up s | of which Ray cluster s "
             "| s / candidate | speed-up |", "|---|---|---|---|---|---|---|"]
    for kind, n, threads, setup, cluster, per in rows:
        lines.append(f"| {kind} | {n} | {threads} | {setup:.1f} | {'-' if cluster is None else f'{cluster:.1f}'} "
                     f"| {per:.2f} | {serial / per:.2f}x |")
    lines += ["", "Start-up: serial = building the fitness in this process (load the model, read the run's saved "
              "X and G); Ray = starting a local cluster, then every worker doing that same build in parallel. "
              f"Statistics (X, G) are computed once per run before any of this ({stats_seconds:.0f} s here, "
              "cached gradients included) and are not part of any row.",
              "", "Every executor found the same fitness values" + (
                  "." if not diffs else f" up to a relative difference of {max(diffs):.1e} (different torch thread "
                  "counts sum in a different order)."),
              "", "Command: `" + " ".join([".venv/bin/python bench/ray_bench.py", *_shown_args()]) + "`."]
    run_bench.DOC = args.doc
    replace_section("ray", "\n".join(lines))
    print("\n".join(lines))


def _shown_args() -> list[str]:
    """This run's options as typed, less --doc (where the section went is not part of the result)."""
    argv, shown, skip = sys.argv[1:], [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--doc":
            skip = True
        elif not a.startswith("--doc="):
            shown.append(a)
    return shown


def _ray_version() -> str:
    import ray

    return ray.__version__


if __name__ == "__main__":
    main()
