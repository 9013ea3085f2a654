"""Seconds per search candidate at the cheapest fidelity, split into scoring + masking and the
perplexity forwards, with the fitness values, for docs/BENCHMARKS.md (section "candidate-speed").

The fitness is rebuilt from a finished search's run folder exactly as a Ray worker does it
(model, X and G from its stats.safetensors, the search split), so nothing is recomputed.  Each
candidate is evaluated `--repeats` times at the cheapest rung (both settings of the run); the
first candidate once more before timing (warm-up).  `--json` writes the raw numbers, so two
code versions can be compared in one sitting (`--compare OLD.json NEW.json`).

    .venv/bin/python bench/candidate_speed.py --run runs/seeds/joint-seed0 --json /tmp/new.json
    PYTHONPATH=<old checkout>/src .venv/bin/python bench/candidate_speed.py ... --json /tmp/old.json
    .venv/bin/python bench/candidate_speed.py --compare /tmp/old.json /tmp/new.json --write
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_bench import machine, replace_section  # noqa: E402

CANDIDATES = ["abs(W) * sqrt(X)", "abs(W * W) * mms(G)", "(coln(W) + rown(W)) * sqrt(sqrt(X))",
              "W * sqrt(X) + W * G", "mms(X * W) * (tanh(G * W) + sqr(mms(W)))",
              "(coln(W + sqr(W)) + rown(sqr(W))) * div(sqrt(X), W + G)"]


def measure(run: Path, repeats: int, threads: int) -> dict:
    import torch

    from prunerzero.search.context import ProxyFitnessFactory
    from prunerzero.search.job import read_job
    from prunerzero.symbolic import load_metric

    torch.set_num_threads(threads)
    job = read_job(run)
    start = time.perf_counter()
    fitness = ProxyFitnessFactory(job, str(run.resolve()))()
    setup = time.perf_counter() - start
    cheap = fitness.fidelities[0]
    fitness.evaluate(load_metric(CANDIDATES[0]), cheap)  # warm-up: first-call allocations, lazy imports
    rows = []
    for formula in CANDIDATES:
        metric = load_metric(formula)
        seconds, masks, evals, values = [], [], [], []
        for _ in range(repeats):
            fitness.seconds = {"masks": 0.0, "eval": 0.0}
            start = time.perf_counter()
            values.append(fitness.evaluate(metric, cheap))
            seconds.append(time.perf_counter() - start)
            masks.append(fitness.seconds["masks"])
            evals.append(fitness.seconds["eval"])
        fitness.restore()
        rows.append({"formula": formula, "fitness": values[0], "same_each_time": len(set(values)) == 1,
                     "seconds": statistics.median(seconds), "masks": statistics.median(masks),
                     "eval": statistics.median(evals)})
        print(f"{formula:60s} {values[0]:.6f} {rows[-1]['seconds']:.2f} s "
              f"(masks {rows[-1]['masks']:.2f}, eval {rows[-1]['eval']:.2f})", flush=True)
    return {"run": str(run), "rung": cheap, "settings": list(job.settings), "setup_seconds": setup,
            "threads": threads, "repeats": repeats, "eval_dtype": job.eval_dtype, "rows": rows}


def compare(old: dict, new: dict) -> str:
    lines = ["| candidate | fitness before | fitness after | rel. diff | s before | s after (masks + eval) | speed-up |",
             "|---|---|---|---|---|---|---|"]
    ratios = []
    for a, b in zip(old["rows"], new["rows"]):
        assert a["formula"] == b["formula"], "the two files measured other candidates"
        rel = abs(a["fitness"] - b["fitness"]) / abs(a["fitness"])
        ratios.append(a["seconds"] / b["seconds"])
        lines.append(f"| `{a['formula']}` | {a['fitness']:.6f} | {b['fitness']:.6f} | {rel:.1e} | "
                     f"{a['seconds']:.2f} ({a['masks']:.2f} + {a['eval']:.2f}) | "
                     f"{b['seconds']:.2f} ({b['masks']:.2f} + {b['eval']:.2f}) | {ratios[-1]:.2f}x |")
    med_a = statistics.median(r["seconds"] for r in old["rows"])
    med_b = statistics.median(r["seconds"] for r in new["rows"])
    return "\n".join(lines) + (f"\n\nMedian seconds per candidate: {med_a:.2f} before, {med_b:.2f} after "
                               f"({med_a / med_b:.2f}x); median of the per-candidate speed-ups "
                               f"{statistics.median(ratios):.2f}x.")


def breakdown(result: dict, note: str = "") -> str:
    rows = result["rows"]
    return ("## Seconds per search candidate, and where they go\n\n"
            f"Cheapest rung `{result['rung']}` of `{result['run']}` (settings {', '.join(result['settings'])}, "
            f"forwards in {result['eval_dtype']}), median of {result['repeats']} evaluations per candidate after "
            f"one warm-up, {result['threads']} threads. Machine: {machine()}.\n\n"
            "| candidate | fitness | s per candidate | scores + masks + weights | perplexity forwards |\n"
            "|---|---|---|---|---|\n"
            + "\n".join(f"| `{r['formula']}` | {r['fitness']:.4f} | {r['seconds']:.2f} | {r['masks']:.2f} | "
                        f"{r['eval']:.2f} |" for r in rows)
            + f"\n\nMedian {statistics.median(r['seconds'] for r in rows):.2f} s per candidate."
            + (f"\n\n{note}" if note else "")
            + "\n\nCommand: `.venv/bin/python bench/candidate_speed.py --write`.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, default=Path("runs/seeds/joint-seed0"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, help="write the measurements here")
    ap.add_argument("--from-json", type=Path, help="write from an earlier --json instead of measuring")
    ap.add_argument("--compare", nargs=2, type=Path, metavar=("OLD", "NEW"))
    ap.add_argument("--write", action="store_true", help="write the section (with --compare: before / after)")
    ap.add_argument("--note", default="")
    ap.add_argument("--version", default="", help="a name for the code measured (e.g. its commit), kept in --json")
    args = ap.parse_args()
    if args.compare:
        old, new = (json.loads(p.read_text()) for p in args.compare)
        text = (breakdown(new).rsplit("\n\nCommand:", 1)[0]
                + f"\n\n### Before / after ({old.get('version', 'old')} -> {new.get('version', 'new')})\n\n"
                f"Cheapest rung `{new['rung']}` of `{new['run']}` (settings {', '.join(new['settings'])}, forwards "
                f"in {new['eval_dtype']}), median of {new['repeats']} evaluations per candidate after one warm-up, "
                f"{new['threads']} threads, both versions measured in one sitting, one after the other. "
                f"Machine: {machine()}.\n\n" + compare(old, new)
                + (f"\n\n{args.note}" if args.note else "")
                + "\n\nCommand: `bench/candidate_speed.py --json FILE [--version NAME]` once per code version "
                "(the older one with `PYTHONPATH=<its checkout>/src`), then `--compare OLD NEW --write`.")
        print(text)
        if args.write:
            replace_section("candidate-speed", text)
        return
    result = json.loads(args.from_json.read_text()) if args.from_json else measure(args.run, args.repeats, args.threads)
    if args.version:
        result["version"] = args.version
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    if args.write:  # one version: where a candidate's seconds go
        text = breakdown(result, args.note)
        print(text)
        replace_section("candidate-speed", text)


if __name__ == "__main__":
    main()
