"""What a Pruner-Zero search run tells us: fitness over generations, which metric properties go
with good fitness, and whether the cheap fitness ranks candidates like the expensive ones.

``analyze_run(run_dir)`` reads a run folder (``search.load_run``) and writes ``analysis.md`` plus
PNG figures (``plots``).  The numbers come from the evaluation log, the source of truth
for fitness values; the checkpoint adds the per-generation population summaries (invalid and
duplicate shares) that the log cannot know because cache hits are not logged.

The property/fitness correlations mirror how the paper derives its principles (operator use in
the best vs worst candidates), but are stated with rank correlations and p-values, so a run only
"supports" a principle when the data could not easily have produced it by chance.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .. import io
from ..errors import UserError
from .stats import (ALPHA, INVARIANCE_NAMES, TERMINAL_NAMES, Candidate, Correlation, candidates, check_run_dir,
                    fidelity_order, fmt_num, fmt_p, log_target, ops_in_language, rank_correlation, run_spec)

ANALYSIS_MD = "analysis.md"

# ----------------------------------------------------------------------------- reading
# ----------------------------------------------------------------------------- statistics
def feature_correlations(cands: list[Candidate]) -> tuple[list[Correlation], list[str]]:
    """Spearman and Kendall of each feature with log fitness, sorted by |rho| (undefined last);
    also the features that are constant over the candidates (nothing to correlate)."""
    if not cands:
        return [], []
    target, _ = log_target(cands)
    out, constant = [], []
    for name in cands[0].features:
        x = [c.features[name] for c in cands]
        if len(set(x)) < 2:
            constant.append(name)
            continue
        out.append(Correlation(name, len(x), *rank_correlation(x, target)))
    out.sort(key=lambda c: (c.rho is None, -abs(c.rho or 0.0), c.feature))
    return out, constant


def decile_frequencies(cands: list[Candidate], names: list[str]) -> tuple[int, list[dict[str, Any]]]:
    """Share of the best and the worst 10% (at least one each) that use each terminal/primitive,
    the paper's way of reading principles off a search; rows sorted by top - bottom."""
    ranked = sorted(cands, key=lambda c: (c.fitness, c.key))
    k = max(1, math.ceil(len(ranked) / 10)) if ranked else 0
    top, bottom = ranked[:k], ranked[-k:]
    rows = []
    for name in names:
        t = sum(c.features[name] > 0 for c in top) / k if k else 0.0
        b = sum(c.features[name] > 0 for c in bottom) / k if k else 0.0
        if t or b:
            rows.append({"feature": name, "top": t, "bottom": b, "diff": t - b})
    rows.sort(key=lambda r: (-r["diff"], r["feature"]))
    return k, rows


def _describe(feature: str) -> str:
    """Subject and verb of a principle sentence."""
    if feature == "depth":
        return "Deeper trees correlate"
    if feature == "size":
        return "Larger trees correlate"
    if feature in INVARIANCE_NAMES:
        return f"Being {feature} correlates"
    return f"Using {feature} correlates"


def principles(corrs: list[Correlation], deciles: list[dict[str, Any]], word: str) -> list[str]:
    """Sentences for features whose Spearman p < ALPHA, worded from the numbers, strongest first."""
    by_feature = {r["feature"]: r for r in deciles}
    out = []
    for c in corrs:
        if c.rho is None or c.rho_p is None or c.rho_p >= ALPHA or c.rho == 0:
            continue
        direction = "lower" if c.rho < 0 else "higher"
        line = (f"{_describe(c.feature)} with {direction} {word} "
                f"(Spearman {c.rho:+.2f}, p={fmt_p(c.rho_p)}; Kendall {fmt_num(c.tau)}, p={fmt_p(c.tau_p)}; n={c.n})")
        d = by_feature.get(c.feature)
        if d is not None and c.feature not in ("depth", "size", *INVARIANCE_NAMES):
            line += f"; in {d['top']:.0%} of the top decile vs {d['bottom']:.0%} of the bottom"
        if c.rho_p < ALPHA / max(len(corrs), 1):
            line += "; holds after Bonferroni correction"
        out.append(line + ".")
    return out


def fidelity_agreement(records: list[dict[str, Any]], fids: list[str]) -> list[dict[str, Any]]:
    """Rank agreement of the cheapest fidelity with each other one over keys valid at both."""
    score: dict[tuple[str, str], float] = {}
    for r in records:
        f = r.get("fitness")
        if f is not None and math.isfinite(f):
            score.setdefault((r["key"], r["fidelity"]), float(f))
    out = []
    for hi in fids[1:]:
        keys = sorted(k for (k, f) in score if f == hi and (k, fids[0]) in score)
        x, y = [score[(k, fids[0])] for k in keys], [score[(k, hi)] for k in keys]
        rho, rho_p, tau, tau_p = rank_correlation(x, y)
        out.append({"cheap": fids[0], "expensive": hi, "n": len(keys), "rho": rho, "rho_p": rho_p,
                    "tau": tau, "tau_p": tau_p, "x": x, "y": y})
    return out


def leaderboard_agreement(run_dir: Path) -> dict[str, Any] | None:
    """Fast-path search fitness vs the full sequential pipeline's reporting perplexity for the
    searched leaderboard rows (geometric mean over settings, as the search's fitness combines
    them); None when the run has no leaderboard.jsonl."""
    from ..search.checkpoint import read_log
    from ..search.leaderboard import LEADERBOARD_LOG

    path = run_dir / LEADERBOARD_LOG
    if not path.exists():
        return None
    ppl: dict[str, list[float]] = {}
    fitness: dict[str, dict[str, float]] = {}
    for row in read_log(path):
        sf = row.get("search_fitness")
        if row.get("setting") is None or sf is None or row.get("ppl") is None:
            continue
        sf = sf if isinstance(sf, dict) else {"search": sf}
        ppl.setdefault(row["label"], []).append(float(row["ppl"]))
        fitness[row["label"]] = {f: float(v) for f, v in sf.items() if v is not None}
    out: dict[str, Any] = {"labels": sorted(ppl), "by_fidelity": []}
    fids = sorted({f for v in fitness.values() for f in v})
    for fid in fids:
        labels = [lab for lab in sorted(ppl) if fid in fitness[lab]]
        x = [fitness[lab][fid] for lab in labels]
        y = [math.exp(sum(map(math.log, ppl[lab])) / len(ppl[lab])) for lab in labels]
        rho, rho_p, tau, tau_p = rank_correlation(x, y)
        out["by_fidelity"].append({"fidelity": fid, "n": len(labels), "rho": rho, "rho_p": rho_p,
                                   "tau": tau, "tau_p": tau_p})
    return out


def generation_table(records: list[dict[str, Any]], cheap: str,
                     summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per generation: new evaluations and invalid share among them (log), best so far (log),
    and the population's best/median/invalid/duplicate shares (checkpoint summaries)."""
    gens = sorted({int(r["generation"]) for r in records} | {int(s["generation"]) for s in summaries})
    by_gen = {int(s["generation"]): s for s in summaries}
    best, rows = math.inf, []
    for g in gens:
        recs = [r for r in records if int(r["generation"]) == g and r["fidelity"] == cheap]
        valid = [float(r["fitness"]) for r in recs if r.get("fitness") is not None and math.isfinite(r["fitness"])]
        best = min([best, *valid])
        s = by_gen.get(g, {})
        rows.append({"generation": g, "evaluated": len(recs),
                     "log_invalid_share": (1 - len(valid) / len(recs)) if recs else None,
                     "best_so_far": best if math.isfinite(best) else None,
                     "pop_best": s.get("best"), "pop_median": s.get("median"),
                     "pop_invalid_share": s.get("invalid_share"), "duplicates_replaced": s.get("duplicates_replaced"),
                     "duplicate_share": s.get("duplicate_share")})
    return rows


# ----------------------------------------------------------------------------- report
def analyze_run(run_dir: Path | str, out_dir: Path | str | None = None) -> dict[str, Any]:
    """Read the run in ``run_dir``, write analysis.md and the figures to ``out_dir`` (default:
    the run folder); returns the numbers (and the paths written)."""
    from ..search import load_run
    from .plots import plot_correlations, plot_fidelity, plot_fitness, plot_shares

    run_dir = Path(run_dir)
    check_run_dir(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir
    io.check_writable_dir(out, "--out" if out_dir is not None else "run folder")  # before the figures
    run = load_run(run_dir)
    records = run["evaluations"]
    if not records:
        raise UserError(f"{run_dir}/evaluations.jsonl holds no evaluations yet")
    out.mkdir(parents=True, exist_ok=True)

    fids = fidelity_order(run)
    cheap = fids[0]
    ops = ops_in_language(run, records)
    cands, n_invalid = candidates(records, cheap, ops, run_spec(run))
    word = "perplexity" if cands and min(c.fitness for c in cands) >= 1 else "fitness"
    corrs, constant = feature_correlations(cands)
    k, deciles = decile_frequencies(cands, [*TERMINAL_NAMES, *ops])
    supported = principles(corrs, deciles, word)
    summaries = (run.get("checkpoint") or {}).get("generations") or []
    gens = generation_table(records, cheap, summaries)
    fid_agree = fidelity_agreement(records, fids)
    board = leaderboard_agreement(run_dir)

    figures = {
        "fitness": plot_fitness(records, cheap, gens, out / "fitness_by_generation.png", word),
        "shares": plot_shares(gens, out / "invalid_duplicate_share.png"),
        "correlations": plot_correlations(corrs, out / "feature_correlations.png"),
    }
    usable = [a for a in fid_agree if a["n"] >= 3]
    if usable:
        figures["fidelity"] = plot_fidelity(usable, out / "fidelity_agreement.png")
    figures = {k_: p for k_, p in figures.items() if p is not None}

    result = {"run": str(run_dir), "fidelities": fids, "candidates": len(cands), "invalid_keys": n_invalid,
              "correlations": corrs, "constant_features": constant, "decile_size": k, "deciles": deciles,
              "principles": supported, "generations": gens, "fidelity_agreement": fid_agree,
              "leaderboard": board, "figures": figures, "word": word, "best_metric": run.get("best_metric")}
    from .report import render_markdown

    md = out / ANALYSIS_MD
    io.write_text(md, render_markdown(result, run))
    result["markdown"] = md
    return result
