"""SparseGPT: OBS reconstruction with its own saliency, mask chosen block by block.

Unstructured masks honour the comparison group (``--group``): ``row`` (the default, as for every
metric) prunes each output row's share of every column block; ``layer`` compares the whole column
block across rows, as the reference code does. Per row is the default because it was better on all
three model families measured at 50% (docs/BENCHMARKS.md, "sparsegpt-group" and the note after
"model-transfer"): WikiText-2 perplexity -1.7% on SmolLM2-135M and -3.3% on Gemma-3-270M (means of
three draws) and -23% on Qwen2.5-Coder-0.5B (one draw), where the block-wide selection was worse
than every mask-only metric. N:M masks are the same either way. ``band`` (a metric's layer-wide scores
with each row's share bounded) has no counterpart in SparseGPT's block-by-block choice and is refused.
"""
from __future__ import annotations

import torch

from ..calib.stats import LinearStats
from ..errors import UserError
from ..masks import SparsityTarget
from .base import METHODS, Method
from .obs import FactorMemo, block_group_for, obs_prune


def check_sparsegpt_group(target: SparsityTarget) -> None:
    """SparseGPT's own selection has no scores across the layer to bound per row: "band" is for metrics."""
    if not target.structured and target.group == "band":
        raise UserError("SparseGPT chooses per row or across each column block (group row or layer): the band group "
                        "bounds a metric's scores across the layer; run sparsegpt with row or layer, or a metric "
                        "(with --reconstruct obs for the update) with band")


@METHODS.register("sparsegpt")
def make_sparsegpt(percdamp: float = 0.01, blocksize: int = 128) -> Method:
    factor = FactorMemo(percdamp)  # q/k/v and gate/up share one H: factorised once

    def prune(weight: torch.Tensor, stats: LinearStats, target: SparsityTarget) -> torch.Tensor:
        check_sparsegpt_group(target)
        hinv = factor(stats.hessian)  # on the statistics' device; obs_prune moves it to the weight's
        return obs_prune(weight, None, target, percdamp=percdamp, blocksize=blocksize, hinv=hinv,
                         block_group=block_group_for(target))

    return Method("sparsegpt", frozenset({"H"}), prune, {"percdamp": percdamp, "blocksize": blocksize})
