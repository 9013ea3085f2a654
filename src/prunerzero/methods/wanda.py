"""Wanda (Sun et al., 2023): score = |W| * ||X||_2 per input channel, compared within output rows."""
from __future__ import annotations

import torch

from ..calib.stats import LinearStats
from .base import METHODS, Method, metric_method


def wanda_score(weight: torch.Tensor, stats: LinearStats) -> torch.Tensor:
    # weight (out, in); x_mean_sq (in,) -> sqrt broadcasts over rows. Wanda's ||X||_2 is this
    # times sqrt(tokens): a constant factor, so every per-row ranking is identical.
    return weight.abs() * stats.x_mean_sq.sqrt().unsqueeze(0)


@METHODS.register("wanda")
def make_wanda() -> Method:
    return metric_method("wanda", frozenset({"X"}), wanda_score,
                         {"formula": "abs(W) * sqrt(X)", "X": "mean of x^2 per input channel"})
