"""SparseGPT with the OBS sweep of an earlier commit against the current one, timed alternately in one
process, with a check that both give the same weights to the bit; or (``--sweep``) the eager torch
sweep against the compiled one (``methods/obs_sweep.py``), with how far their weights differ and
each one's WikiText-2 perplexity (8192 tokens).

Same model, calibration windows and statistics (SmolLM2, 32x512 of the general mix, seed 0); only
``methods/obs.py`` differs: the earlier version is read from git (``--old``, default: the commit
before the sweep's last change) and loaded as a module beside the current one. Each prune starts
from the dense weights and is paired with a forward pass of its own (the decoder, batches of 8), as
in bench/floor.py. Prints the pairs and the medians; nothing is written.

    .venv/bin/python bench/obs_ab.py --repeats 3 [--old REV] [--settings 0.5,2:4]
    .venv/bin/python bench/obs_ab.py --repeats 3 --sweep [--settings 0.5,2:4]
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_bench import WIKI, calibration_forward  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SWEEP_ENV = "PRUNERZERO_OBS_SWEEP"  # methods/obs_sweep.py reads it at every block


def load_old_obs(rev: str):
    """methods/obs.py as it was at `rev`, imported as prunerzero.methods._obs_at_rev (relative imports work)."""
    try:
        source = subprocess.run(["git", "show", f"{rev}:src/prunerzero/methods/obs.py"], cwd=ROOT, check=True,
                                capture_output=True, text=True).stdout
    except subprocess.CalledProcessError as exc:
        sys.exit(f"obs_ab: cannot read methods/obs.py at {rev!r}: {exc.stderr.strip()}")
    import prunerzero.methods as methods

    spec = importlib.util.spec_from_loader("prunerzero.methods._obs_at_rev", loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = methods.__name__
    exec(compile(source, f"obs.py@{rev}", "exec"), module.__dict__)  # noqa: S102  our own file at an earlier commit
    return module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="pairs per version and setting")
    ap.add_argument("--old", default="bce08ed^", help="git revision of the earlier obs.py")
    ap.add_argument("--settings", default="0.5,2:4")
    ap.add_argument("--sweep", action="store_true", help="eager against compiled sweep of the current obs.py")
    args = ap.parse_args()

    import torch

    from prunerzero.api import build_method
    from prunerzero.config import PruneConfig
    from prunerzero.eval.perplexity import perplexity
    from prunerzero.masks import parse_setting
    from prunerzero.methods import sparsegpt
    from prunerzero.pipeline import prune_model
    from prunerzero.snapshot import DenseSnapshot

    if args.sweep:
        versions = {"eager": sparsegpt.obs_prune, "compiled": sparsegpt.obs_prune}
    else:
        versions = {"old": load_old_obs(args.old).obs_prune, "new": sparsegpt.obs_prune}
    cfg = PruneConfig(model="smollm2-135m", calib_data="general", nsamples=32, seqlen=512, seed=0)
    lm, windowing = cfg.open_model()
    ids = cfg.calibration_windows(cfg.calibration_tokens(lm, windowing), windowing)  # (32, 512)
    model = lm.model
    snapshot = DenseSnapshot(model)
    method = build_method(PruneConfig(model="smollm2-135m", method="sparsegpt"))

    wiki = wikitext_tokens(lm, windowing) if args.sweep else None  # tokenised once, measured after each version
    calibration_forward(model, ids)  # warm-up
    for setting in args.settings.split(","):
        pairs: dict[str, list[tuple[float, float]]] = {v: [] for v in versions}
        weights: dict[str, dict[str, torch.Tensor]] = {}
        ppl: dict[tuple[str, str], float] = {}
        for _ in range(args.repeats):
            for version, obs_prune in versions.items():  # alternate: drift of the machine hits both
                snapshot.restore()
                sparsegpt.obs_prune = obs_prune
                if args.sweep:
                    os.environ[SWEEP_ENV] = version
                fwd = calibration_forward(model, ids)
                start = time.perf_counter()
                prune_model(model, method, parse_setting(setting), ids, batch_size=8, progress=False)
                pairs[version].append((time.perf_counter() - start, fwd))
                if version not in weights:  # one copy per version is enough to compare the bits
                    weights[version] = {n: m.weight.detach().clone() for n, m in snapshot.linears.items()}
                    if args.sweep:
                        ppl[(setting, version)] = perplexity(model, wiki, 512, 8192, progress=False,
                                                             windowing=windowing)["ppl"]
                print(f"{setting} {version}: prune {pairs[version][-1][0]:.1f} s, forward {fwd:.1f} s", flush=True)
        sparsegpt.obs_prune = versions["new" if "new" in versions else "compiled"]
        os.environ.pop(SWEEP_ENV, None)
        for version, got in pairs.items():
            print(f"sparsegpt {setting} {version}: median prune {statistics.median(p for p, _ in got):.1f} s, "
                  f"median ratio to its forward {statistics.median(p / f for p, f in got):.2f}x"
                  + (f", WikiText-2 ppl {ppl[(setting, version)]:.2f}" if args.sweep else ""), flush=True)
        first, second = weights
        if args.sweep:
            print(f"sparsegpt {setting}: {differences(weights[first], weights[second])}", flush=True)
        else:
            same = all(torch.equal(w, weights[second][n]) for n, w in weights[first].items())
            print(f"sparsegpt {setting}: pruned weights old == new to the bit: {same}", flush=True)
    snapshot.restore()


def wikitext_tokens(lm, windowing):
    """WikiText-2 test tokenised for the model; the A/B measures the first 8192 (the README's setting)."""
    from prunerzero.data import load_text
    from prunerzero.windows import tokenize

    return tokenize(lm.tokenizer, load_text(str(WIKI)), windowing)


def differences(a: dict, b: dict) -> str:
    """How far two versions' pruned weights are apart: masks that differ, largest relative difference."""
    masks = sum(int(((w == 0) != (b[n] == 0)).sum()) for n, w in a.items())
    rel = max(float((w - b[n]).abs().max() / w.abs().max()) for n, w in a.items())
    total = sum(w.numel() for w in a.values())
    return f"{masks} of {total} mask entries differ, largest weight difference {rel:.1e} of the linear's largest"


if __name__ == "__main__":
    main()
