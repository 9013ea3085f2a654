"""Prune time against its floor: one forward pass of the calibration set, all measured in one process.

Wanda needs each linear's input norms, i.e. one forward pass over the calibration windows; that
pass, timed on its own in the same dtype, is its floor. SparseGPT adds the OBS sweeps. G needs a
forward and a backward per sample. This measures, on SmolLM2 with 32x512 calibration windows of
the general mix (seed 0), in one process so the ratios share the machine's state:

  forward      the decoder's forward over the 32 windows (batches of 8, no logits), float32 and
               bfloat16 autocast
  wanda        `prune_model` with Wanda, each dtype (the dense weights restored between runs)
  sparsegpt    the same with SparseGPT
  gradients    seconds per sample of `compute_gradient_stats` (batch 1, float32, as GBLM-Pruner)
               next to one forward of the same sample with its logits and loss, measured first
               (right after the model loads, where a run computes them)

Each prune is timed --repeats times, each time right after a forward of its own: the ratio of a
pair shares the machine's state of that minute (this shared machine drifts by 15-30% between
sittings), and the table reports the median of the pairs' ratios next to the median seconds.

Ratios are the issue's targets: Wanda <= 1.2x its forward, SparseGPT <= 2x, gradients <= 3.5x a
forward of the same sample (a regression check here, never a timed test).

    .venv/bin/python bench/floor.py [--repeats 3] [--dtypes float32,bfloat16] [--write]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_bench import calibration_forward, machine, replace_section  # noqa: E402

TARGETS = {"wanda": 1.2, "sparsegpt": 2.0, "gradients": 3.5}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="forward + prune pairs per cell (median reported)")
    ap.add_argument("--dtypes", default="float32,bfloat16", help="calibration dtypes, a comma list")
    ap.add_argument("--grad-samples", type=int, default=4)
    ap.add_argument("--write", action="store_true", help="write the `floor` section of docs/BENCHMARKS.md")
    args = ap.parse_args()
    unknown = sorted(set(args.dtypes.split(",")) - {"float32", "bfloat16"})
    if unknown:  # before the model loads: one line, not a KeyError minutes later
        ap.error(f"--dtypes: unknown {', '.join(unknown)} (choose from float32, bfloat16)")

    import torch

    from prunerzero.api import build_method
    from prunerzero.calib.gradients import compute_gradient_stats
    from prunerzero.calib.gradients.compute import _lm_loss
    from prunerzero.config import PruneConfig
    from prunerzero.masks import parse_setting
    from prunerzero.pipeline import prune_model
    from prunerzero.precision import bf16_autocast
    from prunerzero.snapshot import DenseSnapshot

    cfg = PruneConfig(model="smollm2-135m", calib_data="general", nsamples=32, seqlen=512, seed=0)
    lm, windowing = cfg.open_model()
    ids = cfg.calibration_windows(cfg.calibration_tokens(lm, windowing), windowing)  # (32, 512)
    model = lm.model
    snapshot = DenseSnapshot(model)
    autocasts = {"float32": nullcontext, "bfloat16": lambda: bf16_autocast("cpu")}  # as `prune --calib-dtype`
    dtypes = {d: autocasts[d] for d in args.dtypes.split(",")}

    def forward(autocast) -> float:
        with autocast():
            return calibration_forward(model, ids, cfg.batch_size)

    # Gradients first: a run computes G right after loading the model (prune --method gblm, search),
    # and timed after a dozen prunes the backward ran 40% slower than in a fresh process (2026-12-06).
    sample = ids[: args.grad_samples]
    compute_gradient_stats(model, sample[:1], progress=False)  # warm-up: the first backward allocates ~2 s more
    grad_pairs = []
    for _ in range(args.repeats):
        with torch.no_grad():
            _lm_loss(model, sample[:1])  # warm-up
            start = time.perf_counter()
            for i in range(sample.shape[0]):
                _lm_loss(model, sample[i: i + 1])
            fwd = (time.perf_counter() - start) / sample.shape[0]
        start = time.perf_counter()
        compute_gradient_stats(model, sample, progress=False)
        grad_pairs.append(((time.perf_counter() - start) / sample.shape[0], fwd))
        print(f"gradients {grad_pairs[-1][0]:.2f} s/sample, forward with loss {fwd:.2f} s/sample", flush=True)
    grad_sample, fwd_sample = (statistics.median(p[k] for p in grad_pairs) for k in (0, 1))
    grad_ratio = statistics.median(g / f for g, f in grad_pairs)

    rows: dict[str, dict[str, float]] = {}
    for dtype, autocast in dtypes.items():
        forward(autocast)  # warm-up
        rows[dtype], forwards = {}, []
        for name in ("wanda", "sparsegpt"):
            method = build_method(PruneConfig(model="smollm2-135m", method=name))
            for setting in ("0.5", "2:4"):
                pairs = []
                for _ in range(args.repeats):
                    snapshot.restore()
                    fwd = forward(autocast)
                    start = time.perf_counter()
                    with autocast():
                        prune_model(model, method, parse_setting(setting), ids, batch_size=cfg.batch_size,
                                    progress=False)
                    pairs.append((time.perf_counter() - start, fwd))
                    print(dtype, name, setting, f"{pairs[-1][0]:.1f} s (forward {fwd:.1f} s)", flush=True)
                forwards += [f for _, f in pairs]
                rows[dtype][f"{name} {setting}"] = statistics.median(p for p, _ in pairs)
                rows[dtype][f"{name} {setting} ratio"] = statistics.median(p / f for p, f in pairs)
        rows[dtype]["forward"] = statistics.median(forwards)
    snapshot.restore()

    lines = ["## Prune time against its floor (one forward pass of the calibration set)", "",
             f"SmolLM2-135M, 32x512 calibration windows of the general mix (seed 0), batches of {cfg.batch_size}; "
             f"the forward is the decoder alone (no logits); each prune {args.repeats} times from the dense weights, "
             "each right after a forward of its own: seconds are medians, ratios the median of the pairs' ratios. "
             f"One process, alone on the machine. Machine: {machine()}.", "",
             "| calibration dtype | forward s | setting | Wanda s | Wanda / forward | SparseGPT s | SparseGPT / forward |",
             "|---|---|---|---|---|---|---|"]
    for dtype, r in rows.items():
        for setting in ("0.5", "2:4"):
            w, s = r[f"wanda {setting}"], r[f"sparsegpt {setting}"]
            lines.append(f"| {dtype} | {r['forward']:.1f} | {setting} | {w:.1f} | **{r[f'wanda {setting} ratio']:.2f}x** | "
                         f"{s:.1f} | **{r[f'sparsegpt {setting} ratio']:.2f}x** |")
    lines += ["", f"Gradients (G, float32, batch 1 as GBLM-Pruner; measured first, right after the model loads, as "
              f"a run computes them): {grad_sample:.2f} s per sample against {fwd_sample:.2f} s for one forward of the "
              f"same sample with its logits and loss: **{grad_ratio:.2f}x** (each a mean over {sample.shape[0]} samples, "
              f"{args.repeats} pairs, medians; after one warm-up sample: the first sample of a run costs about 2 s "
              "more).", "",
              "Targets (issue 16): Wanda <= 1.2x, SparseGPT <= 2x its forward, gradients <= 3.5x a forward: "
              + "; ".join(f"{k} {'met' if ok else 'NOT met'}" for k, ok in (
                  ("wanda", all(r[f"wanda {s} ratio"] <= TARGETS["wanda"] for r in rows.values() for s in ("0.5", "2:4"))),
                  ("sparsegpt", all(r[f"sparsegpt {s} ratio"] <= TARGETS["sparsegpt"] for r in rows.values()
                                    for s in ("0.5", "2:4"))),
                  ("gradients", grad_ratio <= TARGETS["gradients"]))) + ".",
              "", f"Command: `.venv/bin/python bench/floor.py --repeats {args.repeats} --dtypes {args.dtypes} --write`."]
    text = "\n".join(lines)
    print(text)
    if args.write:
        replace_section("floor", text)


if __name__ == "__main__":
    main()
