"""Magnitude pruning: remove the smallest |W| (no calibration data needed)."""
from __future__ import annotations

import torch

from ..calib.stats import LinearStats
from .base import METHODS, Method, metric_method


def magnitude_score(weight: torch.Tensor, stats: LinearStats) -> torch.Tensor:
    return weight.abs()  # (out, in)


@METHODS.register("magnitude")
def make_magnitude() -> Method:
    return metric_method("magnitude", frozenset(), magnitude_score, {"formula": "abs(W)"})
