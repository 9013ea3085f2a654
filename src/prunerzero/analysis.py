"""What a Pruner-Zero search run tells us: fitness over generations, which metric properties go
with good fitness, and whether the cheap fitness ranks candidates like the expensive ones.

``analyze_run(run_dir)`` reads a run folder (``search.load_run``) and writes ``analysis.md`` plus
PNG figures (``analysis_plots``).  The numbers come from the evaluation log, the source of truth
for fitness values; the checkpoint adds the per-generation population summaries (invalid and
duplicate shares) that the log cannot know because cache hits are not logged.

The property/fitness correlations mirror how the paper derives its principles (operator use in
the best vs worst candidates), but are stated with rank correlations and p-values, so a run only
"supports" a principle when the data could not easily have produced it by chance.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import io
from .errors import UserError, path_kind, short

ANALYSIS_MD = "analysis.md"
MIN_RANK_N = 5  # below this a rank correlation (and its p-value) says next to nothing
ALPHA = 0.05
TERMINAL_NAMES = ("W", "X", "G")


@dataclass
class Candidate:
    """One distinct metric (canonical key) scored valid at the cheapest fidelity."""

    key: str
    expression: str
    generation: int  # first generation it was evaluated in
    fitness: float  # cheapest fidelity
    features: dict[str, float] = field(default_factory=dict)


@dataclass
class Correlation:
    feature: str
    n: int
    rho: float | None
    rho_p: float | None
    tau: float | None
    tau_p: float | None


# ----------------------------------------------------------------------------- reading
def check_run_dir(run_dir: Path) -> None:
    """Bad input fails here, in one line, before anything is written."""
    from .search.checkpoint import LOG

    if path_kind(run_dir) != "dir":
        raise UserError(f"run folder not found: {short(run_dir)}")
    if not (run_dir / LOG).exists():
        raise UserError(f"{run_dir} has no {LOG}: not a search run folder, or the run has not scored anything yet")


def fidelity_order(run: dict[str, Any]) -> list[str]:
    """Fidelities cheapest first: from config.json, else by how many records each has (every
    candidate is scored at the cheapest one, only survivors at the others)."""
    cfg = run.get("config") or {}
    seen = [r["fidelity"] for r in run["evaluations"]]
    saved = cfg.get("fidelities")
    usable = isinstance(saved, list) and all(isinstance(f, str) for f in saved)  # config.json may be hand-edited
    order = [f for f in saved if f in seen] if usable else []
    order = list(dict.fromkeys(order))
    rest = sorted(set(seen) - set(order), key=lambda f: (-seen.count(f), f))
    return order + rest


def metric_features(expression: str, ops: list[str]) -> dict[str, float] | None:
    """0/1 use of each terminal and primitive, depth and size of a logged expression.

    0/1 rather than counts: "does the metric use G" is the question the paper's principles ask,
    and presence is robust to the bloat (repeated skp/abs) that GP trees accumulate."""
    from .symbolic import MetricSyntaxError, depth, ops_used, parse, size, terminals_used

    try:
        expr = parse(expression)
    except MetricSyntaxError:
        return None
    used_t, used_ops = terminals_used(expr), ops_used(expr)
    feats = {t: float(t in used_t) for t in TERMINAL_NAMES}
    feats.update({op: float(used_ops.get(op, 0) > 0) for op in ops})
    feats["depth"], feats["size"] = float(depth(expr)), float(size(expr))
    return feats


def candidates(records: list[dict[str, Any]], fidelity: str, ops: list[str]) -> tuple[list[Candidate], int]:
    """One row per distinct key valid at ``fidelity`` (first record wins, as in the engine's
    cache); returns (rows, number of distinct keys that were invalid there)."""
    rows: dict[str, Candidate] = {}
    invalid: set[str] = set()
    for r in records:
        if r["fidelity"] != fidelity or r["key"] in rows or r["key"] in invalid:
            continue
        f = r.get("fitness")
        if f is None or not math.isfinite(f):
            invalid.add(r["key"])
            continue
        feats = metric_features(r["expression"], ops)
        if feats is not None:
            rows[r["key"]] = Candidate(r["key"], r["expression"], int(r["generation"]), float(f), feats)
    return list(rows.values()), len(invalid)


def ops_in_language(run: dict[str, Any], records: list[dict[str, Any]]) -> list[str]:
    """The primitives to test: the search's own function set if recorded, plus any seen in the log."""
    from .symbolic import PRIMITIVES, PRUNER_ZERO_OPS

    search = (run.get("config") or {}).get("search")
    saved = search.get("ops") if isinstance(search, dict) else None
    ops = list(saved) if isinstance(saved, list) and all(isinstance(o, str) for o in saved) else list(PRUNER_ZERO_OPS)
    return [op for op in PRIMITIVES if op in ops] + [op for op in PRIMITIVES if op not in ops and any(
        op + "(" in r["expression"] for r in records)]


# ----------------------------------------------------------------------------- statistics
def rank_correlation(x: list[float], y: list[float]) -> tuple[float | None, float | None, float | None, float | None]:
    """(Spearman rho, p, Kendall tau, p); None where undefined (n < 3 or a constant input)."""
    from scipy.stats import kendalltau, spearmanr

    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return None, None, None, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s, k = spearmanr(x, y), kendalltau(x, y)

    def clean(v: float) -> float | None:
        return None if v is None or math.isnan(v) else float(v)

    return clean(s.statistic), clean(s.pvalue), clean(k.statistic), clean(k.pvalue)


def log_target(cands: list[Candidate]) -> tuple[list[float], bool]:
    """log(fitness) when every value is positive (perplexity), else the raw values; rank
    correlations do not change either way, the log only makes the numbers readable."""
    values = [c.fitness for c in cands]
    if values and min(values) > 0:
        return [math.log(v) for v in values], True
    return values, False


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
                f"(Spearman {c.rho:+.2f}, p={_p(c.rho_p)}; Kendall {_num(c.tau)}, p={_p(c.tau_p)}; n={c.n})")
        d = by_feature.get(c.feature)
        if d is not None and c.feature not in ("depth", "size"):
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
    from .search.checkpoint import read_log
    from .search.leaderboard import LEADERBOARD_LOG

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


def generation_table(records: list[dict[str, Any]], cheap: str, summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
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
def _num(v: float | None, fmt: str = "+.2f") -> str:
    return "-" if v is None else format(v, fmt)


def _p(v: float | None) -> str:
    if v is None:
        return "-"
    if v == 0:
        return "<1e-300"  # underflow (or a degenerate exact result, e.g. n=3 with rho=1)
    return f"{v:.1e}" if v < 0.001 else f"{v:.3f}"


def _share(v: float | None) -> str:
    return "-" if v is None else f"{v:.0%}"


def _fit(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


def analyze_run(run_dir: Path | str, out_dir: Path | str | None = None) -> dict[str, Any]:
    """Read the run in ``run_dir``, write analysis.md and the figures to ``out_dir`` (default:
    the run folder); returns the numbers (and the paths written)."""
    from .analysis_plots import plot_correlations, plot_fidelity, plot_fitness, plot_shares
    from .search import load_run

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
    cands, n_invalid = candidates(records, cheap, ops)
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
    from .analysis_report import render_markdown

    md = out / ANALYSIS_MD
    io.write_text(md, render_markdown(result, run))
    result["markdown"] = md
    return result
