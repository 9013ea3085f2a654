"""SparseGPT: OBS reconstruction with its own saliency, mask chosen block by block."""
from __future__ import annotations

import torch

from ..calib.stats import LinearStats
from ..masks import SparsityTarget
from .base import METHODS, Method
from .obs import FactorMemo, obs_prune


@METHODS.register("sparsegpt")
def make_sparsegpt(percdamp: float = 0.01, blocksize: int = 128) -> Method:
    factor = FactorMemo(percdamp)  # q/k/v and gate/up share one H: factorised once

    def prune(weight: torch.Tensor, stats: LinearStats, target: SparsityTarget) -> torch.Tensor:
        hinv = factor(stats.hessian)  # on the statistics' device; obs_prune moves it to the weight's
        return obs_prune(weight, None, target, percdamp=percdamp, blocksize=blocksize, hinv=hinv)

    return Method("sparsegpt", frozenset({"H"}), prune, {"percdamp": percdamp, "blocksize": blocksize})
