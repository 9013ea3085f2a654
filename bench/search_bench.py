"""Search benchmark for docs/BENCHMARKS.md: cost per candidate at each fidelity, the fast path
against recomputing statistics per candidate, cache and duplicate rates, and what a search of
bounded length finds, re-measured on WikiText-2 test next to the baselines.

Run from the repository root:
    .venv/bin/python bench/search_bench.py [--section NAME --run DIR --title TEXT] [search options...]
Search options given here override the defaults in ARGS (argparse keeps the last occurrence);
the default writes the "search" section from runs/bench-search.
"""
from __future__ import annotations

import json
import os
import tempfile
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_bench import BIN, ROOT, WIKI, machine, replace_section, shown_path  # noqa: E402

RUN = ROOT / "runs" / "bench-search"
ARGS = ["--model", "smollm2-135m", "--settings", "0.5,2:4", "--population", "12", "--generations", "5",
        "--seed", "0", "--nsamples", "32", "--seqlen", "512", "--fidelity-tokens", "1024,4096",
        "--eval-dtype", "bfloat16", "--report-tokens", "8192", "--leaderboard-top", "2",
        "--baselines", "magnitude,wanda,ria,pruner-zero",
        "--invariance", "none"]  # the sections it writes were measured before gauge became the default


def fidelity_agreement(evaluations: list[dict]) -> str:
    """How well the cheapest fidelity ranks the candidates that were also scored on more tokens."""
    from scipy.stats import kendalltau, spearmanr

    scores: dict[str, dict[str, float]] = {}
    for r in evaluations:
        if r["fitness"] is not None:
            scores.setdefault(r["key"], {})[r["fidelity"]] = r["fitness"]
    fids = sorted({f for v in scores.values() for f in v}, key=lambda f: int(f.rstrip("tok")))
    pairs = [(v[fids[0]], v[fids[-1]]) for v in scores.values() if fids[0] in v and fids[-1] in v]
    if len(fids) < 2 or len(pairs) < 3:
        return "too few candidates scored at two fidelities to rank them"
    cheap, dear = zip(*pairs)
    return (f"cheap ({fids[0]}) vs expensive ({fids[-1]}) scores over the {len(pairs)} re-scored candidates: "
            f"Spearman {spearmanr(cheap, dear).statistic:.2f}, Kendall {kendalltau(cheap, dear).statistic:.2f}")


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--section", default="search")
    parser.add_argument("--run", type=Path, default=RUN)
    parser.add_argument("--title", default="Metric search")
    parser.add_argument("--reuse", action="store_true",
                        help="write the section from the finished run in --run (e.g. one finished with "
                             "`prunerzero search --resume`); wall time = job.json to leaderboard.md, interruptions included")
    own, extra = parser.parse_known_args()
    run = own.run.resolve()
    if own.reuse:
        wall = (run / "leaderboard.md").stat().st_mtime - (run / "job.json").stat().st_mtime
    else:
        if run.exists():
            shutil.rmtree(run)
        cmd = [str(BIN / "prunerzero"), "--quiet", "search", *ARGS, *extra, "--report-data", str(WIKI.resolve()),
               "--out", str(run)]
        # A fresh cache so the gradients are really computed (and timed), not read from an earlier run.
        env = {**os.environ, "PRUNERZERO_CACHE": tempfile.mkdtemp(prefix="prunerzero-bench-cache-")}
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
        wall = time.perf_counter() - start

    evaluations = [json.loads(line) for line in (run / "evaluations.jsonl").read_text().splitlines()]
    checkpoint = json.loads((run / "checkpoint.json").read_text())
    job = json.loads((run / "job.json").read_text())
    stats = checkpoint["stats"]
    per_fidelity = {}
    for record in evaluations:
        per_fidelity.setdefault(record["fidelity"], []).append(record["seconds"])
    stats_seconds = json.loads((run / "timing.json").read_text()) if (run / "timing.json").exists() else {}
    cheapest = min(per_fidelity, key=lambda f: statistics.median(per_fidelity[f]))
    cand = statistics.median(per_fidelity[cheapest])
    recompute = stats_seconds.get("statistics", 0.0) + stats_seconds.get("gradients", 0.0)

    levers = []
    if job.get("reconstruct", "none") != "none":
        levers.append(f"every candidate pruned with the OBS update after its mask ({job['reconstruct_mode']} mask)")
    if job.get("allocation", "uniform") != "uniform":
        levers.append(f"OWL layer-wise sparsity (M={job['owl_m']:g}, lambda={job['owl_lambda']:g})")
    search = job["search"]
    lines = [f"## {own.title}", "",
             f"SmolLM2-135M, `--settings {','.join(job['settings'])}` (fitness = geometric mean of the perplexities on "
             f"the {job['fitness_data']} search split), population {search['population']}, {search['generations']} "
             f"generations, seed {search['seed']}, {job['nsamples']}x{job['seqlen']} calibration, fitness forwards in "
             f"{job['eval_dtype']}" + (f"; {'; '.join(levers)}" if levers else "") + ". "
             f"Machine: {machine()}; wall time of the whole run {wall / 60:.1f} min.", "",
             "| fidelity | candidates | median s / candidate | candidates / hour |", "|---|---|---|---|"]
    for fid, secs in per_fidelity.items():
        med = statistics.median(secs)
        lines.append(f"| {fid} | {len(secs)} | {med:.1f} | {3600 / med:.0f} |")
    lines += ["", f"Statistics once per run: X {stats_seconds.get('statistics', float('nan')):.0f} s, "
              f"G {stats_seconds.get('gradients', float('nan')):.0f} s. Recomputing them for every candidate would cost "
              f"{recompute + cand:.0f} s per candidate instead of {cand:.1f} s: the fast path is "
              f"**{(recompute + cand) / cand:.0f}x** faster at the cheapest fidelity.", "",
              f"Evaluations {stats['evaluations']}, cache hits {stats['cache_hits']}, duplicates replaced "
              f"{stats['duplicates_replaced']}, invalid {stats['invalid']}; {fidelity_agreement(evaluations)}.", "",
              (run / "leaderboard.md").read_text().split("\n", 2)[2].strip(), "",
              f"Command: `.venv/bin/python bench/search_bench.py {' '.join(sys.argv[1:])}".rstrip() + "` (runs "
              "`prunerzero search " + " ".join(ARGS + extra) + " --report-data ../shared/data/wikitext-2-raw/wiki.test.raw "
              f"--out {shown_path(run)}`)."]
    replace_section(own.section, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
