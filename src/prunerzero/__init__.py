"""prunerzero: post-training pruning of causal LMs, and a genetic-programming search for pruning metrics.

Small public API (heavy modules load lazily):
    prune(PruneConfig(...))         prune a model, measure it, optionally save results and the model
    evaluate(model, eval_data, ...) perplexity / zero-shot accuracy of any model
    search(...)                     the Pruner-Zero metric search (see prunerzero.search)
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["PruneConfig", "prune", "evaluate", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "PruneConfig":
        from .config import PruneConfig

        return PruneConfig
    if name == "prune":
        from .api import prune

        return prune
    if name == "evaluate":
        from .api import evaluate_model

        return evaluate_model
    raise AttributeError(name)
