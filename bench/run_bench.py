"""Benchmarks that write docs/BENCHMARKS.md sections. Not part of `make test`.

Each configuration runs as its own `prunerzero prune` process, so its peak memory is its own.
Run from the repository root:  .venv/bin/python bench/run_bench.py [--only prune,metrics,masks]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / ".venv" / "bin"
WIKI = ROOT / ".." / "shared" / "data" / "wikitext-2-raw" / "wiki.test.raw"
DOC = ROOT / "docs" / "BENCHMARKS.md"
COMMON = ["--model", "smollm2-135m", "--calib-data", "lambada", "--nsamples", "32", "--seqlen", "512",
          "--eval-data", str(WIKI.resolve()), "--eval-tokens", "8192"]


def run_prune(extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [str(BIN / "prunerzero"), "--quiet", "prune", *COMMON, *extra, "--save", tmp]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        return json.loads((Path(tmp) / "results.json").read_text())


def command_line(extra: list[str]) -> str:
    shown = [a if a != str(WIKI.resolve()) else "../shared/data/wikitext-2-raw/wiki.test.raw" for a in COMMON + extra]
    return ".venv/bin/prunerzero prune " + " ".join(shown)


def shown_path(path: Path) -> Path:
    """A path as a section shows it: relative to the repository when it lies inside, else as given."""
    return path.relative_to(ROOT) if path.is_absolute() and path.is_relative_to(ROOT) else path


def seed_list(text: str) -> list[int]:
    """'0,1,2' -> [0, 1, 2]; '' -> [] (none): the bench scripts' --seeds options."""
    return [int(x) for x in text.split(",") if x]


def replace_section(name: str, body: str) -> None:
    """Rewrite one `<!-- name -->` section of docs/BENCHMARKS.md, keeping the others."""
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n\nMade by `make bench` (bench/run_bench.py).\n"
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in text:
        before, rest = text.split(start, 1)
        text = before + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    DOC.write_text(text)


def machine() -> str:
    import platform

    import torch

    return (f"{os.cpu_count()} cores ({cpu_name()}), torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"{platform.processor() or platform.machine()}")


def cpu_name() -> str:
    """The CPU's model name and its matrix extensions: timings from different sittings ran on
    different CPUs (an AMD EPYC, an Intel Xeon with AMX), and the ratios to a forward differ."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "cpu unknown"
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                 "cpu unknown")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    extras = [f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{model}, {' '.join(extras)}" if extras else model


def calibration_forward(model, ids, batch_size: int = 8) -> float:
    """Seconds of one forward of the decoder (no logits) over the calibration windows ids (n, T), in
    batches of `batch_size`: the floor a one-pass prune is measured against (floor, A/B scripts)."""
    import torch

    start = time.perf_counter()
    with torch.no_grad():
        for batch in ids.split(batch_size):
            model.model(input_ids=batch, use_cache=False)
    return time.perf_counter() - start


def bench_prune(methods: list[str], patterns: list[tuple[str, str]], title: str, section: str) -> None:
    rows = []
    dense = None
    for method in methods:
        for label, pattern in patterns:
            extra = ["--method", method, "--sparsity", "0.5", "--pattern", pattern]
            r = run_prune(extra)
            dense = r["dense"]["ppl"]
            rows.append((method, label, r["pruned"]["ppl"], r["seconds"]["prune"], r["seconds"].get("gradients"),
                         r["peak_rss_mib"], command_line(extra)))
            print(rows[-1][:6], flush=True)
    lines = [f"## {title}", "",
             f"SmolLM2-135M-Instruct (float32), 32x512 LAMBADA calibration (seed 0), WikiText-2 test: first 8192 tokens "
             f"at seqlen 512. Dense perplexity **{dense:.2f}**. Machine: {machine()}; measured {time.strftime('%Y-%m-%d')}.",
             "", "| method | pattern | perplexity | prune s | gradients s | peak RSS MiB |", "|---|---|---|---|---|---|"]
    for m, p, ppl, sec, gsec, rss, _ in rows:
        lines.append(f"| {m} | {p} | {ppl:.2f} | {sec:.1f} | {'-' if gsec is None else f'{gsec:.1f}'} | {rss:.0f} |")
    if any(r[4] is not None for r in rows):
        lines += ["", "gradients s: computing G (32 per-sample backward passes) in the first row that needs it, "
                  "reading it from the disk cache in the later ones. Peak RSS includes the gradient accumulators."]
    lines += ["", "Commands (one per row, in order):", "", "```"] + [r[-1] for r in rows] + ["```"]
    replace_section(section, "\n".join(lines))


def bench_masks() -> None:
    """Mask computation for every named metric over all of SmolLM2's layers, statistics given."""
    code = r'''
import time, statistics, torch
from prunerzero.models import load_model
from prunerzero.data import load_text
from prunerzero.windows import calibration_windows, tokenize
from prunerzero.pipeline import collect_dense_stats
from prunerzero.search.fitness import ProxyFitness, FitnessSettings
from prunerzero.symbolic import named_metric
from prunerzero.masks import parse_target
lm = load_model("smollm2-135m")
ids = calibration_windows(tokenize(lm.tokenizer, load_text("lambada", "calib")), 32, 512, 0)
stats = collect_dense_stats(lm.model, ids, frozenset({"X"}), batch_size=32, progress=False)
g = {}
for name, s in stats.items():  # stand-in gradients of the right shape: mask time does not depend on values
    w = lm.model.get_submodule(name).weight
    s.grad_l1 = s.grad_l2 = torch.rand(w.shape, generator=torch.Generator().manual_seed(0))
fit = ProxyFitness(lm.model, tokenize(lm.tokenizer, "hello " * 2000), stats, FitnessSettings(fidelity_tokens=(512,)))
for name in ["magnitude", "wanda", "gblm", "ria", "pruner-zero"]:
    for pattern in ["unstructured", "2:4"]:
        times = []
        for _ in range(3):
            t = time.perf_counter(); fit.apply(named_metric(name), parse_target(0.5, pattern)); times.append(time.perf_counter() - t)
        print(f"| {name} | {pattern} | {statistics.median(times):.2f} |", flush=True)
'''
    out = subprocess.run([str(BIN / "python"), "-c", code], check=True, capture_output=True, text=True).stdout
    body = ("## Mask computation (statistics given)\n\nSeconds to score and mask all 210 prunable linears of SmolLM2 "
            "(30 layers) for one metric, statistics already computed; median of 3. Target: under 5 s.\n\n"
            "| metric | pattern | seconds |\n|---|---|---|\n" + out + "\nCommand: `.venv/bin/python bench/run_bench.py --only masks`\n")
    replace_section("masks", body)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default="prune,metrics,masks")
    parts = parser.parse_args().only.split(",")
    if "prune" in parts:
        bench_prune(["magnitude", "wanda", "sparsegpt"],
                    [("50%", "unstructured"), ("2:4", "2:4"), ("4:8", "4:8")], "Baselines", "prune")
    if "metrics" in parts:
        bench_prune(["gblm", "ria", "pruner-zero"], [("50%", "unstructured"), ("2:4", "2:4")],
                    "Named symbolic metrics", "metrics")
    if "masks" in parts:
        bench_masks()


if __name__ == "__main__":
    sys.exit(main())
