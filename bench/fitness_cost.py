"""What the search's levers cost per candidate, for docs/BENCHMARKS.md (section "fitness-cost").

One process: SmolLM2, X, H and G of the dense model once (32x512 LAMBADA calibration; G from the
disk cache when present), then `ProxyFitness.evaluate` on the search split at the cheapest
fidelity (1024 tokens, bf16 forwards, settings 0.5 and 2:4) for a fixed list of candidates,
with each lever: none, OBS reconstruction (fixed and block masks), OWL allocation.
Run from the repository root:  .venv/bin/python bench/fitness_cost.py
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_bench import machine, replace_section  # noqa: E402

CANDIDATES = ["abs(W) * sqrt(X)", "abs(W * W) * mms(G)", "(coln(W) + rown(W)) * sqrt(sqrt(X))", "W * sqrt(X) + W * G"]
LEVERS = {
    "none": {},
    "--reconstruct obs (fixed)": {"reconstruct": "obs"},
    "--reconstruct obs --reconstruct-mode block": {"reconstruct": "obs", "reconstruct_mode": "block"},
    "--allocation owl": {"allocation": "owl"},
}


def main() -> None:
    from prunerzero.calib.gradients import load_or_compute_gradients
    from prunerzero.data import load_text
    from prunerzero.windows import calibration_windows, tokenize
    from prunerzero.models import load_model
    from prunerzero.pipeline import collect_dense_stats
    from prunerzero.search.fitness import FitnessSettings, ProxyFitness
    from prunerzero.symbolic import load_metric

    lm = load_model("smollm2-135m")
    ids = calibration_windows(tokenize(lm.tokenizer, load_text("lambada", "calib")), 32, 512, 0)
    start = time.perf_counter()
    stats = collect_dense_stats(lm.model, ids, frozenset({"X", "H"}), batch_size=32, progress=False)
    stats_s = time.perf_counter() - start
    grads, _ = load_or_compute_gradients(lm.model, ids, model_id=lm.path, data_id="lambada", seed=0, progress=False)
    for name, (l1, l2) in grads.items():
        stats[name].grad_l1, stats[name].grad_l2 = l1, l2
    search = tokenize(lm.tokenizer, load_text("lambada", "search"))
    rows = []
    for label, extra in LEVERS.items():
        settings = FitnessSettings(("0.5", "2:4"), (1024,), 512, "bfloat16", **extra)
        fitness = ProxyFitness(lm.model, search, stats, settings)
        start = time.perf_counter()
        fitness.evaluate(load_metric(CANDIDATES[0]), "1024tok")  # warm-up: one-time factors, first forwards
        first = time.perf_counter() - start
        seconds, values = [], []
        for formula in CANDIDATES:
            start = time.perf_counter()
            values.append(fitness.evaluate(load_metric(formula), "1024tok"))
            seconds.append(time.perf_counter() - start)
        fitness.restore()
        rows.append((label, first, statistics.median(seconds), values))
        print(rows[-1], flush=True)
    base = rows[0][2]
    lines = ["## What the search's levers cost per candidate", "",
             f"SmolLM2-135M, statistics of the dense model once ({stats_s:.0f} s for X and H; G from the disk cache), "
             "then one candidate = masks (+ the lever) and a 1024-token bf16 perplexity on LAMBADA's search split, "
             f"for settings 0.5 and 2:4 together. Median over {len(CANDIDATES)} candidates after one warm-up "
             f"candidate (which also pays one-time costs such as the inverse-Hessian factors). Machine: {machine()}; "
             f"measured {time.strftime('%Y-%m-%d')}.", "",
             "| search lever | s / candidate | candidates / hour | vs none | first candidate s | fitness of "
             + ", ".join(f"`{c}`" for c in CANDIDATES) + " |", "|---|---|---|---|---|---|"]
    for label, first, med, values in rows:
        lines.append(f"| {label} | {med:.1f} | {3600 / med:.0f} | {med / base:.1f}x | {first:.1f} | "
                     + ", ".join(f"{v:.1f}" for v in values) + " |")
    lines += ["", "Command: `.venv/bin/python bench/fitness_cost.py`."]
    replace_section("fitness-cost", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
