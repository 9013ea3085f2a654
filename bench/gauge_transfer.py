"""Do metrics rank what the model computes, or how its weights happen to be scaled?

SmolLM2-135M in three parameterisations that compute the same function (prunerzero.reparam):
as shipped; with random per-channel norm gains moved into q/k/v and gate/up and random row factors
on v/o and up/down (log-uniform on [1/4, 4]); and with every such factor 4 (only the overall size
of weights, activations and gradients changes). Every metric prunes each with the same calibration windows (the general
mix's calib split, 32x512, seed 0) and the gradient statistics that follow exactly from the
original's; perplexity on WikiText-2 test and the general mix's validation split. A metric that
`symbolic.invariance` finds gauge-invariant prunes all three alike; the others show what their
numbers on SmolLM2 owe to its parameterisation, which the next model will not share.

Rows go to runs/gauge-transfer/rows.jsonl (resumable); `--write` writes the `gauge-transfer`
section of docs/BENCHMARKS.md.

    .venv/bin/python bench/gauge_transfer.py [--write]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_bench import ROOT, WIKI, machine, replace_section  # noqa: E402

RUN = ROOT / "runs" / "gauge-transfer"
METRICS = {
    "magnitude": "magnitude", "wanda": "wanda", "gblm": "gblm", "ria": "ria", "pruner-zero": "pruner-zero",
    "seed 0 winner": "mms(X * W) * (tanh(G * W) + sqr(mms(W)))",
    "seed 1 winner": "sqr(G * (X * W)) * sqr(rown(rown(sqr(W))))",
    "SQuAD search #4": "sqr(mms(W)) * sqrt(X + sqrt(G)) + W * sqrt(X)",
}
# name -> (regauge options or None for the model as shipped)
GAUGINGS = {"as shipped": None, "every factor 4 (units)": {"uniform": 4.0},
            "random factors (spread 4)": {"spread": 4.0, "seed": 0}}
SETTINGS = ("0.5", "2:4")
WIKI_TOKENS, VAL_TOKENS = 8192, 4096


def measure(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    from prunerzero import io
    from prunerzero.calib.gradients import load_or_compute_gradients
    from prunerzero.data import load_text
    from prunerzero.eval.perplexity import perplexity
    from prunerzero.masks import parse_setting
    from prunerzero.methods.symbolic import symbolic_method
    from prunerzero.models import load_model
    from prunerzero.pipeline import prune_model
    from prunerzero.reparam import regauge, regauge_gradients
    from prunerzero.snapshot import DenseSnapshot
    from prunerzero.symbolic import load_metric
    from prunerzero.symbolic.invariance import broken_gauges
    from prunerzero.windows import calibration_windows, tokenize

    RUN.mkdir(parents=True, exist_ok=True)
    log = RUN / "rows.jsonl"
    rows = io.read_jsonl(log, repair=True) if log.exists() else []
    done = {(r["metric"], r["gauging"], r["setting"]) for r in rows}
    grads = None
    for gauging, options in GAUGINGS.items():
        lm = load_model("smollm2-135m")
        model, tok = lm.model, lm.tokenizer
        wiki = tokenize(tok, load_text(str(WIKI.resolve())))
        validation = tokenize(tok, load_text("general", "validation"))
        calib_ids = calibration_windows(tokenize(tok, load_text("general", "calib")), 32, 512, 0)
        if grads is None:  # the shipped model's, computed (or read from the cache) once
            grads, _ = load_or_compute_gradients(model, calib_ids, model_id=lm.path, data_id="general", seed=0)
            grads = grads.materialize() if hasattr(grads, "materialize") else dict(grads)
        model_grads = grads if options is None else regauge_gradients(grads, regauge(model, **options))
        snapshot = DenseSnapshot(model)
        if (None, gauging, None) not in done:  # the same function: dense perplexity must not move
            rec = {"metric": None, "gauging": gauging, "setting": None,
                   "wikitext2": perplexity(model, wiki, 512, WIKI_TOKENS, progress=False)["ppl"],
                   "validation": perplexity(model, validation, 512, VAL_TOKENS, progress=False)["ppl"]}
            io.append_jsonl(log, rec)
            print(gauging, "dense", f"wiki {rec['wikitext2']:.3f}", flush=True)
        for label, formula in METRICS.items():
            metric = load_metric(formula)
            broken = broken_gauges(metric)
            if options is not None and options.get("uniform") and "units" not in broken:
                continue  # unchanged by a change of units: the random factors show that it prunes alike
            for setting in SETTINGS:
                if (label, gauging, setting) in done:
                    continue
                start = time.perf_counter()
                prune_model(model, symbolic_method(metric), parse_setting(setting), calib_ids, grads=model_grads,
                            progress=False)
                rec = {"metric": label, "formula": str(metric), "broken": list(broken), "gauging": gauging,
                       "setting": setting, "prune_seconds": time.perf_counter() - start,
                       "wikitext2": perplexity(model, wiki, 512, WIKI_TOKENS, progress=False)["ppl"],
                       "validation": perplexity(model, validation, 512, VAL_TOKENS, progress=False)["ppl"]}
                snapshot.restore()
                io.append_jsonl(log, rec)
                print(label, gauging, setting, f"wiki {rec['wikitext2']:.2f} val {rec['validation']:.2f}", flush=True)
        del model, snapshot


def write() -> str:
    from prunerzero import io

    rows = io.read_jsonl(RUN / "rows.jsonl")
    dense = {r["gauging"]: r for r in rows if r["metric"] is None}
    got = {(r["metric"], r["gauging"], r["setting"]): r for r in rows if r["metric"] is not None}
    gaugings = [g for g in GAUGINGS if any(k[1] == g for k in got)]
    lines = ["## Metrics on the same model, parameterised differently", "",
             "SmolLM2-135M as shipped and regauged without changing its function (`prunerzero.reparam`: per-channel "
             "norm gains moved into q/k/v and gate/up, v/o and up/down rows rescaled, factors log-uniform on "
             "[1/4, 4], or every factor 4: a change of units only). Same calibration (general mix, 32x512, "
             "seed 0), gradient statistics carried over exactly; perplexity on "
             f"{WIKI_TOKENS} tokens of WikiText-2 test / {VAL_TOKENS} of the general validation split (seqlen 512, "
             "float32). *changes under*: the gauges that change the metric's masks on a random layer "
             f"(`symbolic.invariance`). Machine: {machine()}.", "",
             "Dense: " + "; ".join(f"{g} {d['wikitext2']:.3f} / {d['validation']:.3f}" for g, d in dense.items()), ""]
    for setting in SETTINGS:
        label = "50%" if setting == "0.5" else setting
        lines += [f"### {label}", "", "| metric | changes under | " + " | ".join(gaugings) + " | worst / shipped |",
                  "|---|---|" + "---|" * len(gaugings) + "---|"]
        for metric in METRICS:
            cells, wiki = [], []
            broken = next((r["broken"] for k, r in got.items() if k[0] == metric), None)
            for g in gaugings:
                r = got.get((metric, g, setting))
                if r is None and g != "as shipped" and broken is not None and "units" not in broken \
                        and (metric, "as shipped", setting) in got:
                    cells.append("(units-invariant)")  # not run: the masks are the shipped model's
                    continue
                cells.append("-" if r is None else f"{r['wikitext2']:.2f} / {r['validation']:.2f}")
                if r is not None:
                    wiki.append(r["wikitext2"])
            ratio = f"{max(wiki) / wiki[0]:.2f}x" if len(wiki) > 1 and (metric, "as shipped", setting) in got else "-"
            lines.append(f"| {metric} | {', '.join(broken) if broken else 'none'} | " + " | ".join(cells) + f" | {ratio} |")
        lines.append("")
    lines += ["Cells: WikiText-2 / validation perplexity; *(units-invariant)*: not run, the masks are those of the "
              "model as shipped. *worst / shipped*: the highest WikiText-2 perplexity of the row over the shipped one. "
              "Command: `.venv/bin/python bench/gauge_transfer.py` "
              "then `--write`."]
    text = "\n".join(lines)
    replace_section("gauge-transfer", text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    print(write()) if args.write else measure(args.threads)


if __name__ == "__main__":
    main()
