"""SparseGPT: OBS reconstruction with its own saliency, mask chosen block by block."""
from __future__ import annotations

import torch

from ..calib.stats import LinearStats
from ..masks import SparsityTarget
from .base import METHODS, Method
from .obs import obs_prune


@METHODS.register("sparsegpt")
def make_sparsegpt(percdamp: float = 0.01, blocksize: int = 128) -> Method:
    def prune(weight: torch.Tensor, stats: LinearStats, target: SparsityTarget) -> torch.Tensor:
        return obs_prune(weight, stats.hessian, target, percdamp=percdamp, blocksize=blocksize)

    return Method("sparsegpt", frozenset({"H"}), prune, {"percdamp": percdamp, "blocksize": blocksize})
