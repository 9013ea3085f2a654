"""Which metric properties go with good fitness across several search runs (`prunerzero analyze
RUN RUN ...`): the paper's principles tested on pooled evidence instead of one run.

Fitness values of different runs are not on one scale (other models, texts, sparsity settings,
fidelities, even other kinds of rung), so they are never pooled raw.  Within each run every
distinct valid candidate (canonical key, cheapest fidelity, as ``analysis.candidates`` reads it)
gets its *rank percentile* (rank - 0.5) / n, ties averaged, 0 = best; the percentiles are pooled.
Why percentiles and not z-scores of log fitness: they need no log (a rung may be <= 0), a run's
few exploded perplexities cannot stretch its scale, and every run contributes the same uniform
spread of values, so run-level differences (a language without G, a run that found mostly G
metrics) cannot create a pooled correlation by themselves: only within-run differences can.

Each property is pooled over the runs where it varies; a run in which every candidate uses it
(or none can) carries no information about it.  A candidate found by several runs counts once
per run.  A principle is claimed only when the pooled Spearman p-value passes Bonferroni over the
properties tested and no run is significant with the opposite sign.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import io
from ..errors import UserError
from .stats import (ALPHA, INVARIANCE_NAMES, TERMINAL_NAMES, Candidate, Correlation, candidates, check_run_dir,
                    fidelity_order, fmt_num, fmt_p, ops_in_language, rank_correlation, run_spec)

CROSS_MD = "cross_runs.md"
CROSS_FIGURE = "cross_runs_correlations.png"
SCALE = "rank percentile within the run"


@dataclass
class RunSample:
    """One run's distinct valid candidates at its cheapest fidelity, with their percentiles."""

    path: Path
    label: str  # short, unique among the runs analysed (tables and the figure)
    cheap: str
    cands: list[Candidate]
    percentiles: list[float]
    invalid: int
    features: list[str]  # the properties this run's language can express
    setting: str  # what the fitness measured, for the runs table
    best_metric: str | None


@dataclass
class PooledCorrelation:
    feature: str
    runs: int  # runs in which the property varies (the ones pooled)
    n: int
    rho: float | None
    rho_p: float | None
    tau: float | None
    tau_p: float | None
    per_run: dict[str, Correlation | str] = field(default_factory=dict)  # label -> stats, or why not tested
    same_sign: int = 0  # runs significant (p < ALPHA) with the pooled sign
    opposite_sign: int = 0


# ----------------------------------------------------------------------------- reading
def rank_percentiles(values: list[float]) -> list[float]:
    """(rank - 0.5) / n with tied values sharing their average rank: 0 = best (lowest) fitness."""
    from scipy.stats import rankdata

    n = len(values)
    return [(float(r) - 0.5) / n for r in rankdata(values, method="average")]


def _labels(paths: list[Path]) -> list[str]:
    """Folder names, or paths below the common parent when two runs share a name."""
    names = [p.name for p in paths]
    if len(set(names)) == len(names):
        return names
    common = Path(os.path.commonpath(paths))
    return [str(p.relative_to(common)) if p != common else p.name for p in paths]


def _setting(run: dict[str, Any], run_dir: Path) -> str:
    """Model, fitness text and sparsity settings from job.json (a `prunerzero search` job), else the
    engine's fitness description; '-' for a run started through the Python API with a custom fitness."""
    from ..search.checkpoint import read_json
    from ..search.job import JOB_FILE

    job = read_json(run_dir / JOB_FILE) if (run_dir / JOB_FILE).exists() else {}
    fit = (run.get("config") or {}).get("fitness") or {}
    parts = [f"{k} {v if not isinstance(v, list) else ','.join(map(str, v))}"
             for k, v in (("model", job.get("model")), ("text", job.get("fitness_data")),
                          ("settings", job.get("settings") or fit.get("settings"))) if v]
    return "; ".join(parts) or "-"


def load_samples(run_dirs: list[Path | str]) -> list[RunSample]:
    """Every run read and checked before anything is written: a folder that is not a run, a run
    with no valid candidate, or the same folder twice is a UserError."""
    from ..search import load_run

    paths = [Path(p) for p in run_dirs]
    seen: dict[Path, Path] = {}
    for p in paths:
        real = p.resolve()
        if real in seen:
            raise UserError(f"{p} is given twice (as {seen[real]} and {p}): each run counts once")
        seen[real] = p
    samples = []
    for p, label in zip(paths, _labels([p.resolve() for p in paths])):
        check_run_dir(p)
        run = load_run(p)
        records = run["evaluations"]
        if not records:
            raise UserError(f"{p}/evaluations.jsonl holds no evaluations yet")
        cheap = fidelity_order(run)[0]
        ops = ops_in_language(run, records)
        cands, invalid = candidates(records, cheap, ops, run_spec(run))
        if not cands:
            raise UserError(f"{p} has no valid candidate at its cheapest fidelity {cheap}: nothing to pool")
        samples.append(RunSample(p, label, cheap, cands, rank_percentiles([c.fitness for c in cands]), invalid,
                                 list(cands[0].features), _setting(run, p), run.get("best_metric")))
    return samples


# ----------------------------------------------------------------------------- statistics
def feature_names(samples: list[RunSample]) -> list[str]:
    """Union of the runs' properties: terminals, primitives in a fixed order, then depth and size."""
    from ..symbolic import PRIMITIVES

    present = {f for s in samples for f in s.features}
    order = [*TERMINAL_NAMES, *PRIMITIVES, "depth", "size", *INVARIANCE_NAMES]
    return [f for f in order if f in present] + sorted(present - set(order))


def pooled_correlations(samples: list[RunSample]) -> list[PooledCorrelation]:
    """Per property: Spearman and Kendall with the within-run percentile, pooled over the runs where
    it varies, each run's own correlation, and how many runs agree; strongest pooled |rho| first."""
    out = []
    for name in feature_names(samples):
        xs: list[float] = []
        ys: list[float] = []
        per_run: dict[str, Correlation | str] = {}
        runs = 0
        for s in samples:
            if name not in s.features:
                per_run[s.label] = "not in language"
                continue
            x = [c.features[name] for c in s.cands]
            if len(set(x)) < 2:
                per_run[s.label] = "constant"
                continue
            runs += 1
            xs += x
            ys += s.percentiles
            per_run[s.label] = Correlation(name, len(x), *rank_correlation(x, s.percentiles))
        pooled = PooledCorrelation(name, runs, len(xs), *rank_correlation(xs, ys), per_run=per_run)
        if pooled.rho:
            sign = math.copysign(1.0, pooled.rho)
            for c in per_run.values():
                if isinstance(c, Correlation) and c.rho and c.rho_p is not None and c.rho_p < ALPHA:
                    if math.copysign(1.0, c.rho) == sign:
                        pooled.same_sign += 1
                    else:
                        pooled.opposite_sign += 1
        out.append(pooled)
    out.sort(key=lambda c: (c.rho is None, -abs(c.rho or 0.0), c.feature))
    return out


def bonferroni_threshold(corrs: list[PooledCorrelation]) -> float:
    """ALPHA over the number of properties that could be tested (pooled rho defined)."""
    return ALPHA / max(1, sum(c.rho is not None for c in corrs))


def _subject(feature: str, better: bool) -> str:
    verb = f"go{'es' if feature not in ('depth', 'size') else ''} with {'better' if better else 'worse'} fitness"
    if feature == "depth":
        return f"Deeper trees {verb}"
    if feature == "size":
        return f"Larger trees {verb}"
    if feature in INVARIANCE_NAMES:
        return f"Being {feature} {verb}"
    return f"Using {feature} {verb}"


def cross_principles(corrs: list[PooledCorrelation], total_runs: int) -> list[str]:
    """Sentences for the properties that pass Bonferroni pooled and that no run contradicts
    significantly, with the numbers that support them, strongest first."""

    threshold = bonferroni_threshold(corrs)
    out = []
    for c in corrs:
        if c.rho is None or c.rho == 0 or c.rho_p is None or c.rho_p >= threshold or c.opposite_sign:
            continue
        line = (f"{_subject(c.feature, c.rho < 0)}: pooled Spearman {c.rho:+.2f} (p={fmt_p(c.rho_p)}, n={c.n}; "
                f"Kendall {fmt_num(c.tau)}, p={fmt_p(c.tau_p)}), significant with that sign in {c.same_sign} of "
                f"{total_runs} runs")
        if c.runs < total_runs:
            line += f" (it varies in {c.runs} of them)"
        out.append(line + ".")
    return out


def shared_keys(samples: list[RunSample]) -> int:
    """Distinct canonical keys that more than one run scored (each still counts once per run)."""
    count: dict[str, int] = {}
    for s in samples:
        for c in s.cands:
            count[c.key] = count.get(c.key, 0) + 1
    return sum(v > 1 for v in count.values())


# ----------------------------------------------------------------------------- driver
def default_out_dir(samples: list[RunSample]) -> Path:
    """The runs' common parent folder (runs/ for runs/a and runs/b): the report is about all of
    them, so it belongs to none of them."""
    return Path(os.path.commonpath([s.path.resolve() for s in samples]))


def analyze_runs(run_dirs: list[Path | str], out_dir: Path | str | None = None) -> dict[str, Any]:
    """Read every run (all checks first), then write cross_runs.md and its figure to ``out_dir``
    (default: the runs' common parent); returns the numbers and the paths written."""
    from .plots import plot_cross_correlations
    from .report import render_cross_markdown

    if len(run_dirs) < 2:
        raise UserError("a cross-run analysis needs at least two run folders")
    samples = load_samples(run_dirs)
    corrs = pooled_correlations(samples)
    out = Path(out_dir) if out_dir is not None else default_out_dir(samples)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    figure = plot_cross_correlations(corrs, [s.label for s in samples], out / CROSS_FIGURE)
    result = {"runs": samples, "correlations": corrs, "principles": cross_principles(corrs, len(samples)),
              "threshold": bonferroni_threshold(corrs), "n": sum(len(s.cands) for s in samples),
              "shared_keys": shared_keys(samples), "scale": SCALE, "figure": figure}
    md = out / CROSS_MD
    io.write_text(md, render_cross_markdown(result))
    result["markdown"] = md
    return result
