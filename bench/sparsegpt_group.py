"""SparseGPT's unstructured selection: within each output row (`--group row`, the default since
2026-12-05) or across all rows of each column block (`--group layer`, the reference code's way).

One process per model: the model loads once, and for every calibration seed and group SparseGPT
prunes the dense weights at 50% (32x512 windows of the general mix's calib split, float32, as
`prunerzero prune --method sparsegpt --group G` does), then WikiText-2 test perplexity on --tokens
tokens (seqlen 512). N:M masks do not depend on the group, so only 50% is measured. Rows go to
bench/results/sparsegpt-group.jsonl (in git); a run started again measures only what is missing.

    .venv/bin/python bench/sparsegpt_group.py [--models smollm2-135m,gemma3-270m] [--seeds 0,1,2]
    .venv/bin/python bench/sparsegpt_group.py --write     # the `sparsegpt-group` section
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_bench import ROOT, WIKI, machine, replace_section, seed_list  # noqa: E402

from prunerzero import io  # noqa: E402

ROWS = ROOT / "bench" / "results" / "sparsegpt-group.jsonl"
GROUPS = ("row", "layer")


def measure(model: str, seeds: list[int], tokens: int) -> None:
    from prunerzero.api import build_method
    from prunerzero.config import PruneConfig
    from prunerzero.data import load_text
    from prunerzero.eval.perplexity import perplexity
    from prunerzero.pipeline import prune_model
    from prunerzero.snapshot import DenseSnapshot
    from prunerzero.windows import tokenize

    ROWS.parent.mkdir(parents=True, exist_ok=True)
    have = {(r["seed"], r["group"]) for r in io.read_jsonl(ROWS, repair=True) if r["model"] == model}
    todo = [(seed, group) for seed in seeds for group in GROUPS if (seed, group) not in have]
    if not todo:
        return
    base = PruneConfig(model=model, calib_data="general", nsamples=32, seqlen=512, seed=0, method="sparsegpt")
    lm, windowing = base.open_model()
    calib_tokens = base.calibration_tokens(lm, windowing)
    wiki = tokenize(lm.tokenizer, load_text(str(WIKI.resolve()), "file"), windowing)
    snapshot = DenseSnapshot(lm.model)
    for seed, group in todo:
        snapshot.restore()
        cfg = PruneConfig(model=model, calib_data="general", nsamples=32, seqlen=512, seed=seed, method="sparsegpt",
                          group=group)
        windows = cfg.calibration_windows(calib_tokens, windowing)
        start = time.perf_counter()
        prune_model(lm.model, build_method(cfg), cfg.target(0.5), windows, progress=False)
        seconds = time.perf_counter() - start
        ppl = perplexity(lm.model, wiki, 512, tokens, progress=False, windowing=windowing)["ppl"]
        io.append_jsonl(ROWS, {"model": model, "seed": seed, "group": group, "wikitext2": ppl,
                               "prune_seconds": round(seconds, 1), "tokens": tokens})
        print(model, seed, group, f"{ppl:.2f}", f"{seconds:.0f} s", flush=True)


def write() -> str:
    rows = io.read_jsonl(ROWS)
    lines = ["## SparseGPT's unstructured selection: per output row or across the block's rows", "",
             "50% unstructured, 32x512 general-mix calibration, WikiText-2 test perplexity (seqlen 512, float32); "
             "mean ± sd over the calibration seeds (n). `row`: each output row prunes its share of every column "
             "block (the default since 2026-12-05); `layer`: the block's weights compared across all rows, as "
             f"the reference code does. Machine: {machine()}.", "",
             "| model | tokens | row | layer | row vs layer (paired) |", "|---|---|---|---|---|"]
    for model in dict.fromkeys(r["model"] for r in rows):
        by = {g: {r["seed"]: r["wikitext2"] for r in rows if r["model"] == model and r["group"] == g} for g in GROUPS}
        seeds = sorted(set(by["row"]) & set(by["layer"]))
        cells = []
        for g in GROUPS:
            vals = list(by[g].values())
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells.append(f"{statistics.fmean(vals):.2f} ± {sd:.2f} (n={len(vals)})")
        change = ", ".join(f"seed {s}: {100 * (by['row'][s] / by['layer'][s] - 1):+.1f}%" for s in seeds)
        tokens = next(r["tokens"] for r in rows if r["model"] == model)
        lines.append(f"| {model} | {tokens} | {cells[0]} | {cells[1]} | {change} |")
    lines += ["", "Command: `.venv/bin/python bench/sparsegpt_group.py --models M --seeds 0,1,2` (resumes from "
              "bench/results/sparsegpt-group.jsonl), then `--write`."]
    text = "\n".join(lines)
    replace_section("sparsegpt-group", text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="smollm2-135m,gemma3-270m", help="comma list of models")
    ap.add_argument("--seeds", type=seed_list, default=[0, 1, 2])
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    if args.write:
        print(write())
        return
    for model in args.models.split(","):
        measure(model, args.seeds, args.tokens)


if __name__ == "__main__":
    main()
