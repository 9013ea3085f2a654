"""Calibration precision: bf16 autocast calibration forwards against float32, per method and pattern.

Each row is one `prunerzero prune` process on SmolLM2 (32x512 calibration on the general mix, seed
0, 8192 WikiText-2 test tokens), once with `--calib-dtype float32` and once with `bfloat16`;
perplexity, prune seconds and peak RSS. Rows are appended to runs/calib-dtype/rows.jsonl as they are
measured (resumable); `--write` writes the `calib-dtype` section of docs/BENCHMARKS.md.

    .venv/bin/python bench/calib_dtype.py [--write]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_bench import BIN, ROOT, WIKI, machine, replace_section  # noqa: E402

RUN = ROOT / "runs" / "calib-dtype"
COMMON = ["--model", "smollm2-135m", "--calib-data", "general", "--nsamples", "32", "--seqlen", "512",
          "--eval-data", str(WIKI.resolve()), "--eval-tokens", "8192"]
METHODS = ("wanda", "sparsegpt", "gblm")
PATTERNS = {"50%": ["--sparsity", "0.5"], "2:4": ["--pattern", "2:4"]}


def measure() -> None:
    RUN.mkdir(parents=True, exist_ok=True)
    log = RUN / "rows.jsonl"
    done = {(r["method"], r["pattern"], r["dtype"]) for r in map(json.loads, log.read_text().splitlines())} \
        if log.exists() else set()
    for method in METHODS:
        for label, pattern in PATTERNS.items():
            for dtype in ("float32", "bfloat16"):
                if (method, label, dtype) in done:
                    continue
                with tempfile.TemporaryDirectory() as tmp:
                    cmd = [str(BIN / "prunerzero"), "--quiet", "prune", *COMMON, "--method", method, *pattern,
                           "--calib-dtype", dtype, "--save", tmp]
                    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
                    r = json.loads((Path(tmp) / "results.json").read_text())
                row = {"method": method, "pattern": label, "dtype": dtype, "ppl": r["pruned"]["ppl"],
                       "dense": r["dense"]["ppl"], "prune_seconds": r["seconds"]["prune"],
                       "peak_rss_mib": r["peak_rss_mib"]}
                with open(log, "a") as fh:
                    fh.write(json.dumps(row) + "\n")
                print(row, flush=True)


def write() -> str:
    rows = [json.loads(line) for line in (RUN / "rows.jsonl").read_text().splitlines()]
    by = {(r["method"], r["pattern"], r["dtype"]): r for r in rows}
    lines = ["## Calibration forwards in bf16 vs float32", "",
             "SmolLM2-135M, 32x512 calibration on the general mix (seed 0), perplexity on 8192 WikiText-2 test "
             f"tokens; `--calib-dtype bfloat16` runs the calibration forwards under bf16 autocast (statistics and the "
             f"pruning math stay float32). Machine: {machine()}.", "",
             "| method | pattern | ppl float32 | ppl bf16 | change | prune s float32 | prune s bf16 | peak RSS MiB float32 | peak RSS MiB bf16 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for method in METHODS:
        for label in PATTERNS:
            a, b = by.get((method, label, "float32")), by.get((method, label, "bfloat16"))
            if a and b:
                lines.append(f"| {method} | {label} | {a['ppl']:.2f} | {b['ppl']:.2f} | "
                             f"{100 * (b['ppl'] / a['ppl'] - 1):+.2f}% | {a['prune_seconds']:.0f} | "
                             f"{b['prune_seconds']:.0f} | {a['peak_rss_mib']:.0f} | {b['peak_rss_mib']:.0f} |")
    lines += ["", "Command: `.venv/bin/python bench/calib_dtype.py` then `--write`."]
    text = "\n".join(lines)
    replace_section("calib-dtype", text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--write", action="store_true")
    print(write()) if ap.parse_args().write else measure()


if __name__ == "__main__":
    main()
