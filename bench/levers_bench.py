"""Reconstruction and layer-wise sparsity benchmark for docs/BENCHMARKS.md (section "levers").

Part 1: each named metric (and a searched one) at 50% and 2:4, without and with `--reconstruct obs`
(fixed mask; block mode for a few), next to SparseGPT. Part 2: uniform vs OWL allocation at 50%
and 70% for Wanda, SparseGPT and the searched metric. Every row is its own `prunerzero prune`
process on SmolLM2 (32x512 LAMBADA calibration, first 8192 WikiText-2 test tokens); identical
commands run once.
Run from the repository root:  .venv/bin/python bench/levers_bench.py [--searched FORMULA]
"""
from __future__ import annotations

import argparse
import time

from run_bench import command_line, machine, replace_section, run_prune

# The best metric of the search recorded in the "search" section (bench/search_bench.py).
DEFAULT_SEARCHED = "W * (exp(div(G, G)) * sqrt(X) * G + W * G)"
PATTERNS = {"50%": ["--sparsity", "0.5"], "2:4": ["--sparsity", "0.5", "--pattern", "2:4"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--searched", default=DEFAULT_SEARCHED, help="formula of the searched metric to include")
    parser.add_argument("--block-mode-for", default="wanda,searched", help="methods also run with --reconstruct-mode block")
    args = parser.parse_args()
    methods = {name: ["--method", name] for name in ("magnitude", "wanda", "gblm", "ria", "pruner-zero")}
    methods["searched"] = ["--metric", args.searched]
    block_for = set(args.block_mode_for.split(","))
    cache: dict[str, dict] = {}
    started = time.perf_counter()

    def run(extra: list[str]) -> dict:
        key = command_line(extra)
        if key not in cache:
            cache[key] = run_prune(extra)
            r = cache[key]
            print(f"{r['pruned']['ppl']:9.2f} {r['seconds']['prune']:7.1f}s  {key}", flush=True)
        return cache[key]

    # Part 1: reconstruction
    recon_rows = []
    for label, pattern in PATTERNS.items():
        sg = run(["--method", "sparsegpt", *pattern])
        recon_rows.append((label, "sparsegpt", "-", sg, None, None))
        for name, flag in methods.items():
            plain = run([*flag, *pattern])
            fixed = run([*flag, *pattern, "--reconstruct", "obs"])
            block = run([*flag, *pattern, "--reconstruct", "obs", "--reconstruct-mode", "block"]) if name in block_for else None
            recon_rows.append((label, name, "", plain, fixed, block))
    dense = next(iter(cache.values()))["dense"]["ppl"]

    # Part 2: allocation
    owl_rows = []
    for sparsity in ("0.5", "0.7"):
        for name, flag in (("wanda", ["--method", "wanda"]), ("sparsegpt", ["--method", "sparsegpt"]),
                           ("searched", methods["searched"])):
            uniform = run([*flag, "--sparsity", sparsity])
            owl = run([*flag, "--sparsity", sparsity, "--allocation", "owl"])
            owl_rows.append((f"{float(sparsity):.0%}", name, uniform, owl))
    wall = (time.perf_counter() - started) / 60

    def ppl(r: dict | None) -> str:
        return "-" if r is None else f"{r['pruned']['ppl']:.2f}"

    def sec(r: dict | None) -> str:
        return "-" if r is None else f"{r['seconds']['prune']:.0f}"

    lines = ["## Reconstruction and layer-wise sparsity", "",
             f"SmolLM2-135M (float32), 32x512 LAMBADA calibration (seed 0), WikiText-2 test: first 8192 tokens at "
             f"seqlen 512; dense perplexity {dense:.2f}. `searched` is `{args.searched}`. Machine: {machine()}; "
             f"measured {time.strftime('%Y-%m-%d')}, {wall:.0f} min in all.", "",
             "### Any metric's mask followed by the OBS update (`--reconstruct obs`)", "",
             "Perplexity (prune seconds). *fixed*: the metric's whole mask first, then the update; *block*: the mask "
             "chosen block by block from the partially updated weights.", "",
             "| pattern | method | mask only | + obs (fixed) | + obs (block) |", "|---|---|---|---|---|"]
    for label, name, _, plain, fixed, block in recon_rows:
        if name == "sparsegpt":
            lines.append(f"| {label} | **sparsegpt** | {ppl(plain)} ({sec(plain)} s) | | |")
        else:
            cells = [f"{ppl(r)} ({sec(r)} s)" if r else "-" for r in (plain, fixed, block)]
            lines.append(f"| {label} | {name} | " + " | ".join(cells) + " |")
    lines += ["", "### Uniform vs OWL layer-wise sparsity (`--allocation owl`, M=5, lambda=0.08)", "",
              "| sparsity | method | uniform | owl |", "|---|---|---|---|"]
    for label, name, uniform, owl in owl_rows:
        lines.append(f"| {label} | {name} | {ppl(uniform)} | {ppl(owl)} |")
    lines += ["", "Commands (identical ones ran once):", "", "```"] + list(cache) + ["```",
              "", "Made by `.venv/bin/python bench/levers_bench.py`."]
    replace_section("levers", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
