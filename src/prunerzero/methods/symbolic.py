"""Any symbolic metric (a formula over W, X, G) as a pruning method.

The named metrics gblm, ria and pruner-zero are registered here from their formulas, so
`--method ria` and `--metric "<ria's formula>"` are the same code.
"""
from __future__ import annotations

import torch

from ..calib.stats import LinearStats
from ..symbolic import NAMED_METRICS, Metric, canonical_key, format_expr, named_metric, terminals_used
from .base import METHODS, Method, metric_method


def metric_needs(metric: Metric) -> frozenset[str]:
    used = terminals_used(metric.expr)
    return frozenset(t for t in ("X", "G") if t in used)


def symbolic_method(metric: Metric) -> Method:
    def score(weight: torch.Tensor, stats: LinearStats) -> torch.Tensor:
        # weight (out, in); the metric raises InvalidMetricError on NaN/inf/constant scores.
        return metric.scores(weight, stats.x_mean_sq, stats.grad_l1, stats.grad_l2)

    def rescore(weight: torch.Tensor, stats: LinearStats) -> torch.Tensor:  # nan / inf checked, not ties
        return metric.scores(weight, stats.x_mean_sq, stats.grad_l1, stats.grad_l2, validate=False)

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
