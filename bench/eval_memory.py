"""Peak memory and seconds of `prunerzero eval` before and after the vocabulary-chunked loss.

Each measurement is its own process under /usr/bin/time (peak RSS of the whole command, model
included). "before" runs the source tree given by --before (a checkout of the commit before the
change, e.g. `git worktree add ../wt-before 43ce1fa`), "after" this tree. Writes the
`eval-memory` section of docs/BENCHMARKS.md.

    .venv/bin/python bench/eval_memory.py --before ../wt-before/src --repeats 3
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_bench import ROOT, WIKI, machine, replace_section  # noqa: E402

PY = ROOT / ".venv" / "bin" / "python"


def measure(src: Path, tokens: int, seqlen: int) -> tuple[float, float, float]:
    """(peak RSS MiB, wall seconds, perplexity) of one `prunerzero eval` process using `src`."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "eval.json"
        cmd = ["/usr/bin/time", "-f", "%M %e", str(PY), "-m", "prunerzero.cli", "--quiet", "eval",
               "--model", "smollm2-135m", "--eval-data", str(WIKI.resolve()), "--eval-tokens", str(tokens),
               "--eval-seqlen", str(seqlen), "--json", str(out)]
        env = {**os.environ, "PYTHONPATH": str(src)}
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        rss_kib, seconds = done.stderr.strip().splitlines()[-1].split()
        import json

        ppl = json.loads(out.read_text())["perplexity"]["ppl"]
        return int(rss_kib) / 1024, float(seconds), ppl


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", required=True, help="src folder of the code before the change")
    ap.add_argument("--before-label", default="before (43ce1fa)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=8192)
    args = ap.parse_args()
    rows = []
    for seqlen in (512, 2048):
        for label, src in ((args.before_label, Path(args.before).resolve()), ("after", ROOT / "src")):
            runs = [measure(src, args.tokens, seqlen) for _ in range(args.repeats)]
            rss = statistics.median(r[0] for r in runs)
            sec = statistics.median(r[1] for r in runs)
            rows.append((seqlen, label, rss, sec, runs[0][2]))
            print(rows[-1], flush=True)
    v, c = 262_144, 4 * 2048  # Gemma-3's vocabulary; a batch of 4 windows of 2048
    lines = [
        "## Evaluation memory (`prunerzero eval`)", "",
        f"SmolLM2-135M (vocabulary 49,152), float32, first {args.tokens} WikiText-2 test tokens, batch 4 windows; "
        f"peak RSS of the whole process (model included) and wall seconds, median of {args.repeats} runs each. "
        f"Machine: {machine()}.", "",
        "| eval seqlen | code | peak RSS MiB | seconds | perplexity |", "|---|---|---|---|---|"]
    lines += [f"| {s} | {label} | {rss:.0f} | {sec:.1f} | {ppl:.4f} |" for s, label, rss, sec, ppl in rows]
    lines += [
        "", "Memory of the loss, per batch of B windows of T tokens and a vocabulary of V (float32):",
        "- before: the model returns (B, T, V) logits, and the cross-entropy takes a float32 copy and a "
        "log-softmax of the same size: about 3 x 4 B T V bytes. For V = 262,144 (Gemma-3) and B x T = 4 x 2048: "
        f"3 x {4 * c * v / 2**30:.0f} GiB = {3 * 4 * c * v / 2**30:.0f} GiB.",
        "- after: the decoder's output (B, T, C) is caught at the head and the head runs on chunks of at most "
        "64 MiB of float32 logits (262 positions for V = 262,144); with the chunk's log-softmax, about 3 x 64 MiB "
        "= 192 MiB whatever V and T are. What is left grows with the model (weights, one layer's activations), "
        "not with V x tokens.",
        "", f"Command: `.venv/bin/python bench/eval_memory.py --before ../wt-before/src --repeats {args.repeats}` "
        "(`git worktree add ../wt-before 43ce1fa` first).",
    ]
    replace_section("eval-memory", "\n".join(lines))


if __name__ == "__main__":
    main()
