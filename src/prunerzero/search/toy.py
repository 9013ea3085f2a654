"""A cheap but real fitness for tests and demos: prune one random linear layer by a metric.

A seeded layer W (out, in) sees inputs whose channel scales are log-normal (a few outlier
channels, as in LLMs); G is a noisy copy of the true saliency.  The fitness is the relative
output error ||W x - W' x|| / ||W x|| over calibration inputs after removing 50% of each row
by the metric's lowest scores (``masks.make_mask``).  For independent channels the expected
error of removing w_ij is w_ij^2 E[x_j^2], so Wanda's ``W * sqrt(X)`` is the planted optimum;
magnitude ignores the outlier channels and does clearly worse.

Fidelities: "low" uses the first ``low_samples`` inputs for both the statistics and the
error (noisy), "high" all ``samples`` of them -- a miniature of "few vs many calibration
sequences" for the multi-fidelity search.
"""
from __future__ import annotations

from typing import Any

import torch

from ..masks import SparsityTarget, prune_weight
from ..symbolic import Metric


class ToyFitness:
    fidelities: tuple[str, ...] = ("low", "high")

    def __init__(self, seed: int = 0, out_features: int = 64, in_features: int = 128, samples: int = 256,
                 low_samples: int = 8, sparsity: float = 0.5) -> None:
        self.settings = {"kind": "toy", "seed": seed, "out_features": out_features, "in_features": in_features,
                         "samples": samples, "low_samples": low_samples, "sparsity": sparsity}
        gen = torch.Generator().manual_seed(seed)
        self.weight = torch.randn(out_features, in_features, generator=gen)  # (out, in)
        scale = torch.exp(1.5 * torch.randn(in_features, generator=gen))  # (in,) log-normal channel scales
        self.inputs = torch.randn(samples, in_features, generator=gen) * scale  # (n, in)
        noise = torch.exp(0.5 * torch.randn(out_features, in_features, generator=gen))  # (out, in)
        self.grad = self.weight.abs() * scale * noise / 100  # (out, in); G = 100 * grad in the default spec
        self.target = SparsityTarget(sparsity)
        self.n = {"low": low_samples, "high": samples}
        self.calls = 0

    def evaluate(self, metric: Metric, fidelity: str) -> float:
        self.calls += 1
        x = self.inputs[: self.n[fidelity]]  # (n, in)
        scores = metric.scores(self.weight, x_mean_sq=(x * x).mean(0), grad_l2=self.grad)  # (out, in)
        pruned = prune_weight(self.weight, scores, self.target)
        ref = x @ self.weight.T  # (n, out)
        return float(torch.linalg.vector_norm(ref - x @ pruned.T) / torch.linalg.vector_norm(ref))

    def describe(self) -> dict[str, Any]:
        return dict(self.settings)


class Crash(BaseException):
    """Stands in for kill -9 in resume tests: not an Exception, so the engine does not take it for an
    invalid candidate."""


class CrashingFitness(ToyFitness):
    """ToyFitness that raises Crash once it has evaluated ``after`` candidates."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.after = after

    def evaluate(self, metric: Metric, fidelity: str) -> float:
        if self.calls >= self.after:
            raise Crash()
        return super().evaluate(metric, fidelity)
