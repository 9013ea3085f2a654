"""Any symbolic metric (a formula over W, X, G) as a pruning method.

The named metrics gblm, ria and pruner-zero are registered here from their formulas, so
`--method ria` and `--metric "<ria's formula>"` are the same code.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..calib.stats import LinearStats
from ..symbolic import NAMED_METRICS, Metric, canonical_key, format_expr, named_metric, terminals_used
from .base import METHODS, Method, metric_method


def metric_needs(metric: Metric) -> frozenset[str]:
    used = terminals_used(metric.expr)
    return frozenset(t for t in ("X", "G") if t in used)


Scorer = Callable[[torch.Tensor, LinearStats], torch.Tensor]


def metric_scorers(metric: Metric) -> tuple[Scorer, Scorer]:
    """The metric as ``Method.score`` (every check: InvalidMetricError on nan / inf / constant /
    ties) and ``Method.rescore`` (nan / inf only); the search's fast path uses them too."""
    def score(weight: torch.Tensor, stats: LinearStats) -> torch.Tensor:  # weight (out, in) -> (out, in)
        return metric.scores(weight, stats.x_mean_sq, stats.grad_l1, stats.grad_l2)

    def rescore(weight: torch.Tensor, stats: LinearStats) -> torch.Tensor:
        return metric.scores(weight, stats.x_mean_sq, stats.grad_l1, stats.grad_l2, validate=False)

    return score, rescore


def symbolic_method(metric: Metric) -> Method:
    score, rescore = metric_scorers(metric)
    describe = {
        "metric": metric.to_dict(),
        "formula": format_expr(metric.expr),
        "canonical_key": canonical_key(metric.expr, metric.spec),
    }
    return metric_method(metric.name or "metric", metric_needs(metric), score, describe, rescore)


def _register_named(name: str) -> None:
    @METHODS.register(name)
    def make() -> Method:
        return symbolic_method(named_metric(name))


for _name in NAMED_METRICS:
    if _name not in ("magnitude", "wanda"):  # those two have direct implementations
        _register_named(_name)
