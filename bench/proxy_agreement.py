"""Does the search's fast proxy rank metrics the way the full pipeline does? (docs/BENCHMARKS.md, "proxy")

The search scores a candidate with its *proxy*: every linear pruned at once from the dense
model's statistics, then perplexity on LAMBADA's search split. Users get the *full sequential
pipeline* (each layer pruned from the inputs of the already pruned layers below it), and we report
WikiText-2 test. Two things can make the search's winner lose on the leaderboard, and this
separates them by measuring each metric three ways on one finished search run:

  proxy          the search's own score (same statistics, same windows, same forward dtype)
  pipeline, LAMBADA   full pipeline, perplexity on the *same* search-split windows
  pipeline, WikiText  full pipeline, perplexity on WikiText-2 test (the leaderboard's number)

proxy vs pipeline-on-LAMBADA isolates the proxy's approximation; pipeline-on-LAMBADA vs
pipeline-on-WikiText isolates the change of text. Metrics: the named baselines and the run's hall
of fame (a seeded baseline found there is measured once). Everything runs in this process from the
run folder's statistics; results go to <run>/proxy_agreement.jsonl as measured, so a killed run resumes.

Run from the repository root:
    .venv/bin/python bench/proxy_agreement.py --run runs/bench-search-long [--top 8] [--write]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_bench import ROOT, WIKI, machine, replace_section, shown_path  # noqa: E402

BASELINES = ("wanda", "gblm", "ria", "pruner-zero")


def geo(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "bench-search-long")
    parser.add_argument("--top", type=int, default=8, help="hall-of-fame metrics to include")
    parser.add_argument("--baselines", default=",".join(BASELINES), help="named metrics to include")
    parser.add_argument("--report-tokens", type=int, default=8192)
    parser.add_argument("--write", action="store_true", help="write the 'proxy' section of docs/BENCHMARKS.md")
    args = parser.parse_args()

    from scipy.stats import kendalltau, spearmanr

    from prunerzero.data import evaluation_split, load_text
    from prunerzero.windows import eval_windows, tokenize
    from prunerzero.eval.perplexity import window_nll
    from prunerzero.methods.symbolic import symbolic_method
    from prunerzero.pipeline import prune_model
    from prunerzero.search.checkpoint import read_json
    from prunerzero.masks import parse_setting
    from prunerzero.search.context import build_context
    from prunerzero.search.job import JOB_FILE, SearchJob
    from prunerzero.symbolic import canonical_key, load_metric, named_metric

    run = args.run.resolve()
    job = SearchJob.from_dict(json.loads((run / JOB_FILE).read_text()))
    ctx = build_context(job, run, progress=False)  # reads stats.safetensors: nothing recomputed
    fitness = ctx.fitness
    top_fid = fitness.fidelities[-1]
    lambada = fitness._windows[top_fid]  # (n, seqlen) the search's own windows at its dearest fidelity
    wiki = eval_windows(tokenize(ctx.lm.tokenizer, load_text(str(WIKI.resolve()), evaluation_split(str(WIKI)))),
                        job.seqlen, args.report_tokens)
    grads = {n: (s.grad_l1, s.grad_l2) for n, s in fitness.stats.items() if s.grad_l1 is not None}
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if job.eval_dtype == "bfloat16" else nullcontext()

    metrics = [(name, named_metric(name)) for name in args.baselines.split(",") if name]
    hof = read_json(run / "hall_of_fame.json")
    seen = {canonical_key(m.expr, m.spec): label for label, m in metrics}
    for rank, row in enumerate(hof[: args.top], start=1):
        metric = load_metric(row["expression"])
        key = canonical_key(metric.expr, metric.spec)
        if key in seen:  # a seeded baseline that ranks high in the hall of fame: measured once
            print(f"searched #{rank} is {seen[key]}: not measured twice")
            continue
        seen[key] = f"searched #{rank}"
        metrics.append((f"searched #{rank}", metric))

    def ppl(windows: torch.Tensor, ctx_manager=None) -> float:
        with torch.no_grad(), (ctx_manager or nullcontext()):
            return math.exp(float(window_nll(ctx.lm.model, windows).mean()))

    # One line per metric, appended as measured: a killed run resumes (delete the file to re-measure).
    log = run / "proxy_agreement.jsonl"
    done = {r["formula"]: r for r in map(json.loads, log.read_text().splitlines())} if log.exists() else {}
    rows = []
    resumed = 0
    started = time.perf_counter()
    for label, metric in metrics:
        if str(metric) in done:
            rows.append({**done[str(metric)], "label": label})
            resumed += 1
            continue
        row = {"label": label, "formula": str(metric), "proxy": [], "lambada": [], "wiki": []}
        for setting in job.settings:
            target = parse_setting(setting)
            fitness.apply(metric, target)
            row["proxy"].append(ppl(lambada, autocast))
            fitness.restore()
            prune_model(ctx.lm.model, symbolic_method(metric), target, ctx.calib_ids, grads=grads, progress=False)
            row["lambada"].append(ppl(lambada))
            row["wiki"].append(ppl(wiki))
            fitness.restore()
        rows.append(row)
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        print(f"{label:14s} proxy {geo(row['proxy']):8.2f}  pipeline/LAMBADA {geo(row['lambada']):8.2f}  "
              f"pipeline/WikiText {geo(row['wiki']):8.2f}   {row['formula']}", flush=True)
    minutes = (time.perf_counter() - started) / 60

    cols = {k: [geo(r[k]) for r in rows] for k in ("proxy", "lambada", "wiki")}

    def agree(a: str, b: str) -> str:
        return (f"Spearman {spearmanr(cols[a], cols[b]).statistic:.2f}, "
                f"Kendall {kendalltau(cols[a], cols[b]).statistic:.2f}")

    best = {k: rows[min(range(len(rows)), key=lambda i: cols[k][i])]["label"] for k in cols}
    settings = ", ".join(job.settings)
    lines = ["## Does the search's proxy rank metrics like the full pipeline?", "",
             f"Run `{shown_path(run)}` (SmolLM2-135M, settings {settings}, "
             f"{job.nsamples}x{job.seqlen} {job.calib_data} calibration). For the named baselines and the run's top "
             f"{min(args.top, len(hof))} metrics, the geometric mean over the settings of: the search's proxy "
             f"(all linears pruned at once from the dense statistics, {top_fid} of the search split, forwards in "
             f"{job.eval_dtype}); the full sequential pipeline measured on the same search-split windows; and the "
             f"full pipeline on the first {args.report_tokens} WikiText-2 test tokens. Machine: {machine()}; "
             f"{minutes:.0f} min" + (f" ({resumed} metrics read back from an earlier, interrupted invocation's "
                                    "proxy_agreement.jsonl)" if resumed else "") + ".", "",
             "| metric | formula | proxy | pipeline, LAMBADA | pipeline, WikiText-2 | "
             + " | ".join(f"WikiText {s}" for s in job.settings) + " |",
             "|---|---|---|---|---|" + "---|" * len(job.settings)]
    for r in sorted(rows, key=lambda r: geo(r["proxy"])):
        lines.append(f"| {r['label']} | `{r['formula']}` | {geo(r['proxy']):.2f} | {geo(r['lambada']):.2f} | "
                     f"{geo(r['wiki']):.2f} | " + " | ".join(f"{v:.2f}" for v in r["wiki"]) + " |")
    lines += ["", f"Rank agreement over {len(rows)} metrics: proxy vs pipeline on the same text: {agree('proxy', 'lambada')}; "
              f"pipeline, LAMBADA vs WikiText-2: {agree('lambada', 'wiki')}; proxy vs WikiText-2 (what the search "
              f"optimises vs what is reported): {agree('proxy', 'wiki')}. Best by proxy: {best['proxy']}; by "
              f"pipeline on LAMBADA: {best['lambada']}; on WikiText-2: {best['wiki']}.", "",
              f"Command: `.venv/bin/python bench/proxy_agreement.py {' '.join(sys.argv[1:])}`."]
    text = "\n".join(lines)
    print(text)
    if args.write:
        replace_section("proxy", text)


if __name__ == "__main__":
    main()
