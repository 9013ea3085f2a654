"""Why did the OBS update after a metric's mask make GBLM and a searched metric *worse* at 50%?

The update lowers each layer's output error on the calibration windows (tests say so); the
question is what it does on text it has not seen. For a metric's 50% mask, with and without the
update, this measures:

  1. perplexity on WikiText-2 test and on the general mix's held-out validation split, for
     calibration text = LAMBADA (fiction, what the earlier benchmark used) and the general mix,
     with OBS at two dampings and with ADMM (the exact optimum for the mask), and with masks and
     H taken from the dense model for every layer at once instead of sequentially;
  2. layer by layer, the relative output error ||(W' - W) x||^2 / ||W x||^2 of the pruned model on
     its own inputs, on calibration windows and on held-out windows: an update that fits the
     calibration text and hurts elsewhere shows up as a lower error on the first and a higher one
     on the second.

Every row is one line of runs/reconstruct-diagnosis/rows.jsonl (resumable); `--write` writes the
`reconstruct-diagnosis` section of docs/BENCHMARKS.md.

    .venv/bin/python bench/reconstruct_diagnosis.py [--write]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_bench import ROOT, WIKI, machine, replace_section  # noqa: E402

RUN = ROOT / "runs" / "reconstruct-diagnosis"
# The two metrics the update made worse at 50% first, Wanda (which it did not) last.
METRICS = {"gblm": "W * sqrt(X) + W * G", "searched (LAMBADA search)": "W * (exp(div(G, G)) * sqrt(X) * G + W * G)",
           "wanda": "abs(W) * sqrt(X)"}
# label -> (update, damping, statistics): "sequential" = each layer's X/H from the already pruned model
# (what `prune` does), "dense" = every layer's from the dense model (the search's all-at-once path).
VARIANTS = {"mask only": ("none", 0.01, "sequential"), "+ obs (damp 0.01)": ("obs", 0.01, "sequential"),
            "+ obs (damp 0.1)": ("obs", 0.1, "sequential"), "+ admm": ("admm", 0.01, "sequential"),
            "mask only, dense stats": ("none", 0.01, "dense"), "+ obs, dense H": ("obs", 0.01, "dense")}
# Calibration text -> the variants run with it: on LAMBADA (what the earlier benchmark calibrated on,
# where the regression was seen) the three that answer "is it the text?", then every one on the
# general mix (the default).
CALIB = {"lambada": ("mask only", "+ obs (damp 0.01)", "+ admm"), "general": tuple(VARIANTS)}


def measure(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    from prunerzero import io
    from prunerzero.calib.gradients import load_or_compute_gradients
    from prunerzero.calib.stats import attach_gradients
    from prunerzero.data import load_text
    from prunerzero.eval.perplexity import perplexity
    from prunerzero.masks import parse_target
    from prunerzero.methods.reconstruct import with_reconstruction
    from prunerzero.methods.symbolic import symbolic_method
    from prunerzero.models import find_decoder_layers, load_model, weight_matrix
    from prunerzero.pipeline import collect_dense_stats, prune_model
    from prunerzero.snapshot import DenseSnapshot
    from prunerzero.symbolic import load_metric
    from prunerzero.windows import calibration_windows, eval_windows, tokenize

    RUN.mkdir(parents=True, exist_ok=True)
    log = RUN / "rows.jsonl"
    done = {(r["metric"], r["calib"], r["variant"]) for r in io.read_jsonl(log, repair=True)} if log.exists() else set()
    lm = load_model("smollm2-135m")
    model, tok = lm.model, lm.tokenizer
    layers_name, layers = find_decoder_layers(model)
    snapshot = DenseSnapshot(model)  # the dense weights, put back after every row
    linears, dense = snapshot.linears, snapshot.dense
    wiki = tokenize(tok, load_text(str(WIKI.resolve())))
    validation = tokenize(tok, load_text("general", "validation"))
    held_out = eval_windows(validation, 512, 4096)  # (8, 512) for the layer errors
    target = parse_target(0.5)

    def layer_errors(ids: torch.Tensor) -> list[float]:
        """Mean over linears in each decoder layer of ||(W' - W) x||^2 / ||W x||^2 on the model's own inputs."""
        sums: dict[str, list[float]] = {}

        def hook(name):
            def fn(module, args, output):
                x = args[0].reshape(-1, args[0].shape[-1]).float()  # (tokens, in)
                w = dense[name].float()
                new = weight_matrix(module).float()
                err = float(((x @ (new - w).t()) ** 2).sum())
                base = float(((x @ w.t()) ** 2).sum())
                acc = sums.setdefault(name, [0.0, 0.0])
                acc[0] += err
                acc[1] += base
            return fn

        handles = [m.register_forward_hook(hook(n)) for n, m in linears.items()]
        try:
            with torch.no_grad():
                for batch in ids.split(4):
                    model(input_ids=batch, use_cache=False)
        finally:
            for h in handles:
                h.remove()
        per_layer = []
        for i in range(len(layers)):
            vals = [e / max(b, 1e-30) for n, (e, b) in sums.items() if n.startswith(f"{layers_name}.{i}.")]
            per_layer.append(sum(vals) / len(vals))
        return per_layer

    def prune_from_dense_stats(method, calib_ids, grads) -> None:
        """Every linear's mask (and update) from the dense model's statistics, all at once."""
        stats = attach_gradients(collect_dense_stats(model, calib_ids, method.needs, progress=False), grads)
        snapshot.apply(lambda name, weight: method.prune(weight, stats[name], target))

    for calib, variants in CALIB.items():
        calib_ids = calibration_windows(tokenize(tok, load_text(calib, "calib")), 32, 512, 0)
        grads, _ = load_or_compute_gradients(model, calib_ids, model_id=lm.path, data_id=calib, seed=0)
        grads = grads.materialize() if hasattr(grads, "materialize") else grads
        for label, formula in METRICS.items():
            for variant in variants:
                kind, damp, where = VARIANTS[variant]
                if (label, calib, variant) in done:
                    continue
                method = symbolic_method(load_metric(formula))
                if kind != "none":
                    method = with_reconstruction(method, kind=kind, percdamp=damp)
                start = time.perf_counter()
                if where == "dense":
                    prune_from_dense_stats(method, calib_ids, grads)
                else:
                    prune_model(model, method, target, calib_ids, grads=grads, progress=False)
                rec = {"metric": label, "formula": formula, "calib": calib, "variant": variant, "stats": where,
                       "prune_seconds": time.perf_counter() - start,
                       "wikitext2": perplexity(model, wiki, 512, 8192, progress=False)["ppl"],
                       "validation": perplexity(model, validation, 512, 8192, progress=False)["ppl"],
                       "error_calib": layer_errors(calib_ids[:8]), "error_held_out": layer_errors(held_out)}
                snapshot.restore()
                io.append_jsonl(log, rec)
                print(label, calib, variant, f"wiki {rec['wikitext2']:.2f} val {rec['validation']:.2f}", flush=True)


def write() -> str:
    from prunerzero import io

    rows = io.read_jsonl(RUN / "rows.jsonl")
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    planned = sum(len(variants) for variants in CALIB.values()) * len(METRICS)
    lines = ["### Reconstruction at 50%: why it made some metrics worse", "",
             "SmolLM2-135M, 50% unstructured, 32x512 calibration (seed 0), perplexity on 8192 tokens of WikiText-2 "
             "test and of the general mix's held-out validation split. *err calib* / *err held-out*: mean over the "
             "30 decoder layers of the relative output error ||(W' - W) x||^2 / ||W x||^2 of every linear on its own "
             "inputs in the pruned model, on 8 calibration windows and on 8 held-out windows (x 100). "
             f"Machine: {machine()}.", "",
             "| metric | calibration | variant | WikiText-2 | validation | err calib | err held-out | held-out / calib | prune s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ec, eh = 100 * mean(r["error_calib"]), 100 * mean(r["error_held_out"])
        lines.append(f"| {r['metric']} | {r['calib']} | {r['variant']} | {r['wikitext2']:.2f} | {r['validation']:.2f} | "
                     f"{ec:.2f} | {eh:.2f} | {eh / ec:.2f} | {r['prune_seconds']:.0f} |")
    if len(rows) < planned:
        lines += ["", f"{len(rows)} of the {planned} planned rows measured so far (the run resumes where it stopped)."]
    lines += ["", "Command: `.venv/bin/python bench/reconstruct_diagnosis.py` then `--write`."]
    text = "\n".join(lines)
    replace_section("reconstruct-diagnosis", text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    print(write()) if args.write else measure(args.threads)


if __name__ == "__main__":
    main()
