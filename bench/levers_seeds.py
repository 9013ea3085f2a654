"""The `levers` table on the default calibration: every named metric and the searched ones, mask
only / + OBS / + ADMM (fixed mask, or the mask moving with the update: gradual), next to SparseGPT,
at 50% and 2:4, mean over calibration seeds, with prune seconds. One `prunerzero prune` process per
row (32x512 calibration on the general mix, 8192 WikiText-2 test tokens); rows are appended to
bench/results/levers.jsonl as measured (resumable, committed with the table).

    .venv/bin/python bench/levers_seeds.py --searched "formula;formula" [--seeds 0,1,2]
    .venv/bin/python bench/levers_seeds.py --named wanda,gblm --levers "mask only,+ admm"   # a subset first
    .venv/bin/python bench/levers_seeds.py --write
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_bench import BIN, ROOT, WIKI, machine, replace_section  # noqa: E402

ROWS = ROOT / "bench" / "results" / "levers.jsonl"
COMMON = ["--model", "smollm2-135m", "--calib-data", "general", "--nsamples", "32", "--seqlen", "512",
          "--eval-data", str(WIKI.resolve()), "--eval-tokens", "8192"]
NAMED = ("magnitude", "wanda", "gblm", "ria", "pruner-zero")
PATTERNS = {"50%": ["--sparsity", "0.5"], "2:4": ["--pattern", "2:4"]}
LEVERS = {"mask only": [], "+ obs": ["--reconstruct", "obs"], "+ admm": ["--reconstruct", "admm"],
          "+ admm gradual": ["--reconstruct", "admm", "--reconstruct-mode", "gradual"]}


def rows_done() -> list[dict]:
    return [json.loads(line) for line in ROWS.read_text().splitlines()] if ROWS.exists() else []


def measure(searched: list[str], seeds: list[int], named: list[str], levers: list[str]) -> None:
    """Every (seed, pattern, entry, lever) row not yet in rows.jsonl; ``named`` and ``levers`` choose a
    subset (a later run with more of them adds the missing rows)."""
    ROWS.parent.mkdir(parents=True, exist_ok=True)
    done = {(r["label"], r["pattern"], r["lever"], r["seed"]) for r in rows_done()}
    entries = [(n, ["--method", n]) for n in named] + [(f, ["--metric", f]) for f in searched]
    plan = [("sparsegpt", ["--method", "sparsegpt"], "-", [])] + [
        (label, flag, lever, LEVERS[lever]) for label, flag in entries for lever in levers]
    for seed in seeds:
        for pattern, pflags in PATTERNS.items():
            for label, flag, lever, extra in plan:
                if (label, pattern, lever, seed) in done:
                    continue
                with tempfile.TemporaryDirectory() as tmp:
                    cmd = [str(BIN / "prunerzero"), "--quiet", "prune", *COMMON, "--seed", str(seed), *flag, *pflags,
                           *extra, "--skip-dense", "--save", tmp]
                    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
                    r = json.loads((Path(tmp) / "results.json").read_text())
                row = {"label": label, "pattern": pattern, "lever": lever, "seed": seed, "ppl": r["pruned"]["ppl"],
                       "prune_seconds": r["seconds"]["prune"]}
                with open(ROWS, "a") as fh:
                    fh.write(json.dumps(row) + "\n")
                print(row, flush=True)


def _against_sparsegpt(cells: dict[tuple, list[dict]], pattern: str, dense: float) -> str:
    """The best metric + lever by mean perplexity against SparseGPT: how much smaller its gap to dense
    is, in the mean and for each calibration seed both were measured with."""
    ours = [(statistics.fmean(r["ppl"] for r in rs), key) for key, rs in cells.items()
            if key[1] == pattern and key[0] != "sparsegpt" and rs]
    sparsegpt = {r["seed"]: r["ppl"] for r in cells.get(("sparsegpt", pattern, "-"), [])}
    if not ours or not sparsegpt:
        return "(SparseGPT or a metric not measured yet.)"
    best, (label, _, lever) = min(ours)
    mine = {r["seed"]: r["ppl"] for r in cells[(label, pattern, lever)]}
    gap = lambda v: v - dense  # noqa: E731
    per_seed = ", ".join(f"seed {sd}: {100 * (1 - gap(mine[sd]) / gap(sparsegpt[sd])):+.1f}%"
                         for sd in sorted(set(mine) & set(sparsegpt)))
    ref = statistics.fmean(sparsegpt.values())
    return (f"Best: {label} {lever}, gap to dense {gap(best):.2f} against SparseGPT's {gap(ref):.2f}: "
            f"{100 * (1 - gap(best) / gap(ref)):+.1f}% smaller (by calibration seed: {per_seed}).")


def write(dense: float | None) -> str:
    rows = rows_done()
    cells: dict[tuple, list[dict]] = {}
    for r in rows:
        cells.setdefault((r["label"], r["pattern"], r["lever"]), []).append(r)
    labels = list(dict.fromkeys(r["label"] for r in rows))
    seeds = sorted({r["seed"] for r in rows})

    def cell(key: tuple) -> str:
        rs = cells.get(key)
        if not rs:
            return "-"
        ppl = [r["ppl"] for r in rs]
        sd = statistics.stdev(ppl) if len(ppl) > 1 else 0.0
        return f"{statistics.fmean(ppl):.2f} ± {sd:.2f} ({statistics.median(r['prune_seconds'] for r in rs):.0f} s)"

    lines = ["## Levers: mask only, + OBS, + ADMM, next to SparseGPT", "",
             "*+ admm*: the metric's mask on the dense weights, then ADMM for that mask; *+ admm gradual*: the mask "
             "chosen again by the metric from the updated weights as the sparsity grows to the target "
             "(`--reconstruct-mode gradual`).", "",
             "SmolLM2-135M, 32x512 calibration on the general mix, perplexity on 8192 WikiText-2 test tokens"
             + (f" (dense {dense:.2f})" if dense else "") + f"; mean ± sd over calibration seeds "
             f"{', '.join(map(str, seeds))}, median prune seconds in parentheses. Machine: {machine()}.", ""]
    for pattern in PATTERNS:
        lines += [f"### {pattern}", "", "| method | " + " | ".join(LEVERS) + " |", "|---" * (len(LEVERS) + 1) + "|",
                  f"| **sparsegpt** | {cell(('sparsegpt', pattern, '-'))} |" + " |" * (len(LEVERS) - 1)]
        for label in labels:
            if label != "sparsegpt":
                shown = label if label in NAMED else f"`{label}`"
                lines.append(f"| {shown} | " + " | ".join(cell((label, pattern, lev)) for lev in LEVERS) + " |")
        if dense:
            lines += ["", _against_sparsegpt(cells, pattern, dense)]
        lines.append("")
    named = [lb for lb in labels if lb in NAMED]
    searched = [lb for lb in labels if lb != "sparsegpt" and lb not in NAMED]
    levers = [lev for lev in LEVERS if any(r["lever"] == lev for r in rows)]
    run = (f"`.venv/bin/python bench/levers_seeds.py --named \"{','.join(named)}\" --levers \"{','.join(levers)}\""
           + (f" --searched \"{';'.join(searched)}\"" if searched else "") + "`")
    lines.append(f"Command: {run} (this table's rows; without `--named` / `--levers`: every named metric and lever), "
                 "then `--write" + (f" --dense {dense}`." if dense else "`."))
    text = "\n".join(lines)
    replace_section("levers-seeds", text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--searched", default="", help="searched formulas, separated by ;")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--named", default=",".join(NAMED), help="named metrics to run, a comma list (default: all)")
    ap.add_argument("--levers", default=",".join(LEVERS), help=f"a comma list of: {', '.join(LEVERS)} (default: all)")
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--dense", type=float, default=None, help="dense perplexity to show in the header")
    args = ap.parse_args()
    if args.write:
        print(write(args.dense))
    else:
        named = [n.strip() for n in args.named.split(",") if n.strip()]
        levers = [lev.strip() for lev in args.levers.split(",") if lev.strip()]
        unknown = [n for n in named if n not in NAMED] + [lev for lev in levers if lev not in LEVERS]
        if unknown:
            sys.exit(f"levers_seeds: unknown named metric or lever: {', '.join(unknown)}")
        measure([f.strip() for f in args.searched.split(";") if f.strip()], [int(s) for s in args.seeds.split(",")],
                named, levers)


if __name__ == "__main__":
    main()
