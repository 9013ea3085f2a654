"""One-pass pruning with every calibration window in one batch (the order before calib/lockstep.py)
against batches of 8 in lockstep (the default since), timed alternately in one process.

Same calibration windows (SmolLM2, 32x512 of the general mix, seed 0), same one-pass order of
linears: only how the windows are grouped differs. Each prune starts from the dense weights and
is paired with a forward pass of its own (the decoder, batches of 8) to give a ratio, as in
bench/floor.py. Prints the pairs and the medians; nothing is written.

    .venv/bin/python bench/lockstep_ab.py --repeats 3
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_bench import calibration_forward  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="pairs per method and grouping")
    ap.add_argument("--methods", default="wanda,sparsegpt")
    ap.add_argument("--setting", default="0.5")
    args = ap.parse_args()

    from prunerzero.api import build_method
    from prunerzero.config import PruneConfig
    from prunerzero.masks import parse_setting
    from prunerzero.pipeline import prune_model
    from prunerzero.snapshot import DenseSnapshot

    cfg = PruneConfig(model="smollm2-135m", calib_data="general", nsamples=32, seqlen=512, seed=0)
    lm, windowing = cfg.open_model()
    ids = cfg.calibration_windows(cfg.calibration_tokens(lm, windowing), windowing)  # (32, 512)
    model = lm.model
    snapshot = DenseSnapshot(model)

    calibration_forward(model, ids)  # warm-up
    groupings = {"one batch of 32": ids.shape[0], "batches of 8 in lockstep": 8}
    for name in args.methods.split(","):
        method = build_method(PruneConfig(model="smollm2-135m", method=name))
        pairs: dict[str, list[tuple[float, float]]] = {g: [] for g in groupings}
        for _ in range(args.repeats):
            for grouping, batch_size in groupings.items():  # alternate: drift of the machine hits both
                snapshot.restore()
                fwd = calibration_forward(model, ids)
                start = time.perf_counter()
                prune_model(model, method, parse_setting(args.setting), ids, batch_size=batch_size,
                            within_layer="sequential", progress=False)
                pairs[grouping].append((time.perf_counter() - start, fwd))
                print(f"{name} {grouping}: prune {pairs[grouping][-1][0]:.1f} s, forward {fwd:.1f} s", flush=True)
        for grouping, got in pairs.items():
            print(f"{name} {args.setting} {grouping}: median prune {statistics.median(p for p, _ in got):.1f} s, "
                  f"median ratio to its forward {statistics.median(p / f for p, f in got):.2f}x", flush=True)


if __name__ == "__main__":
    main()
