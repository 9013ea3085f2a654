"""What both analyses share (one run: ``search_run``; several: ``cross_runs``): reading a run's log
into candidates with their properties, rank correlations, and how numbers are printed."""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError, path_kind, short

if TYPE_CHECKING:
    from ..symbolic import TerminalSpec

MIN_RANK_N = 5  # below this a rank correlation (and its p-value) says next to nothing
ALPHA = 0.05
TERMINAL_NAMES = ("W", "X", "G")
INVARIANCE_NAMES = ("units-invariant", "gauge-invariant")  # properties of the whole formula



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
    from ..search.checkpoint import LOG

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


def run_spec(run: dict[str, Any]) -> "TerminalSpec":
    """The meaning of W, X, G in a run (its fitness's ``terminal_scale``; raw when absent or unreadable)."""
    from ..symbolic import TerminalSpec

    fitness = (run.get("config") or {}).get("fitness")
    scale = fitness.get("terminal_scale", "raw") if isinstance(fitness, dict) else "raw"
    return TerminalSpec(scale=scale if scale in ("raw", "layer") else "raw")  # config.json may be hand-edited


def metric_features(expression: str, ops: list[str], spec: "TerminalSpec | None" = None) -> dict[str, float] | None:
    """0/1 use of each terminal and primitive, depth and size of a logged expression, and 0/1 whether
    its masks survive a change of units / of gauge (``symbolic.invariance``, with the run's terminals
    ``spec``: scale-free terminals make every formula units-invariant).

    0/1 rather than counts: "does the metric use G" is the question the paper's principles ask,
    and presence is robust to the bloat (repeated skp/abs) that GP trees accumulate."""
    from ..symbolic import Metric, MetricSyntaxError, depth, ops_used, parse, size, terminals_used
    from ..symbolic.invariance import broken_gauges

    try:
        expr = parse(expression)
    except MetricSyntaxError:
        return None
    used_t, used_ops = terminals_used(expr), ops_used(expr)
    feats = {t: float(t in used_t) for t in TERMINAL_NAMES}
    feats.update({op: float(used_ops.get(op, 0) > 0) for op in ops})
    feats["depth"], feats["size"] = float(depth(expr)), float(size(expr))
    broken = broken_gauges(Metric(expr, spec) if spec is not None else Metric(expr))
    feats["units-invariant"], feats["gauge-invariant"] = float("units" not in broken), float(not broken)
    return feats


def candidates(records: list[dict[str, Any]], fidelity: str, ops: list[str],
               spec: "TerminalSpec | None" = None) -> tuple[list[Candidate], int]:
    """One row per distinct key valid at ``fidelity`` (first record wins, as in the engine's
    cache), its features read with the run's terminals ``spec``; returns (rows, number of
    distinct keys that were invalid there)."""
    rows: dict[str, Candidate] = {}
    invalid: set[str] = set()
    for r in records:
        if r["fidelity"] != fidelity or r["key"] in rows or r["key"] in invalid:
            continue
        f = r.get("fitness")
        if f is None or not math.isfinite(f):
            invalid.add(r["key"])
            continue
        feats = metric_features(r["expression"], ops, spec)
        if feats is not None:
            rows[r["key"]] = Candidate(r["key"], r["expression"], int(r["generation"]), float(f), feats)
    return list(rows.values()), len(invalid)


def ops_in_language(run: dict[str, Any], records: list[dict[str, Any]]) -> list[str]:
    """The primitives to test: the search's own function set if recorded, plus any seen in the log."""
    from ..symbolic import PRIMITIVES, PRUNER_ZERO_OPS

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


# ----------------------------------------------------------------------------- printing
def fmt_num(v: float | None, fmt: str = "+.2f") -> str:
    return "-" if v is None else format(v, fmt)


def fmt_p(v: float | None) -> str:
    if v is None:
        return "-"
    if v == 0:
        return "<1e-300"  # underflow (or a degenerate exact result, e.g. n=3 with rho=1)
    return f"{v:.1e}" if v < 0.001 else f"{v:.3f}"


def fmt_share(v: float | None) -> str:
    return "-" if v is None else f"{v:.0%}"


def fmt_fit(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"
