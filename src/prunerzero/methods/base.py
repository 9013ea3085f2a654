"""What every pruning method is: a needs-declaration and a pure per-linear function."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ..calib.stats import LinearStats
from ..masks import SparsityTarget, prune_weight
from ..registry import Registry


@dataclass
class Method:
    """A pruning method.

    needs: which statistics the engine must gather: "X" (mean x^2 per input channel),
           "H" (X^T X), "G" (per-weight gradient norms).
    prune: (weight (out, in) float32, stats, target) -> new weight (out, in) with zeros.
    describe: what results.json records about the method (formula, settings).
    score: for methods that only rank weights, (weight (out, in), stats) -> scores (out, in);
           reconstruction (``methods.reconstruct``) reuses it to choose the mask.
    rescore: the same scores without the checks `score` makes once per linear (a formula's constant
           and tie checks; nan / inf stay), for scoring one block again and again: the OBS sweep's
           N:M groups. None: `score` is used.
    """

    name: str
    needs: frozenset[str]
    prune: Callable[[torch.Tensor, LinearStats, SparsityTarget], torch.Tensor]
    describe: dict = field(default_factory=dict)
    score: Callable[[torch.Tensor, LinearStats], torch.Tensor] | None = None
    rescore: Callable[[torch.Tensor, LinearStats], torch.Tensor] | None = None


def metric_method(
    name: str, needs: frozenset[str], score: Callable[[torch.Tensor, LinearStats], torch.Tensor],
    describe: dict | None = None, rescore: Callable[[torch.Tensor, LinearStats], torch.Tensor] | None = None,
) -> Method:
    """A method that only ranks weights: score -> shared mask module -> zero the lowest."""

    def prune(weight: torch.Tensor, stats: LinearStats, target: SparsityTarget) -> torch.Tensor:
        return prune_weight(weight, score(weight, stats), target)  # the lowest scores zeroed

    return Method(name, needs, prune, describe or {}, score, rescore)


# name -> factory(**options) -> Method. Options come from the CLI/config (e.g. damping).
METHODS: Registry[Callable[..., Method]] = Registry("method")
