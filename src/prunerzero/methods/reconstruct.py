"""Weight reconstruction after any metric's mask: `--reconstruct obs`.

The remaining weights of each linear are updated to minimise ||W X - W' X|| with the blocked OBS
update of ``methods.obs`` (SparseGPT's code, the same function ``--method sparsegpt`` runs), using
the layer's Hessian X^T X from the shared calibration engine. Two modes, as in Pruner-Zero's
ablations:

- ``fixed``: the metric chooses the whole mask first, from the dense weights (exactly the mask
  the metric alone would prune), then OBS updates the survivors.
- ``block``: the mask is chosen column block by column block as the update proceeds, from the
  metric's scores of the *partially updated* block (SparseGPT's way, with the metric in place of
  SparseGPT's saliency). The metric then sees the block's columns only: X and G of those input
  channels, and any row/column normalisation (rown, coln, mms) is taken over the block.
  Unstructured blocks are compared within output rows when the target's group is "row".
"""
from __future__ import annotations

from typing import Callable

import torch

from ..calib.stats import LinearStats
from ..errors import UserError
from ..masks import SparsityTarget, make_mask
from .base import Method
from .obs import obs_prune

MODES = ("fixed", "block")
KINDS = ("none", "obs")


def check_reconstruct(kind: str, mode: str) -> None:
    """One-line errors for a bad --reconstruct / --reconstruct-mode (prune and search share it)."""
    if kind not in KINDS:
        raise UserError(f"--reconstruct must be none or obs, not {kind!r}")
    if mode not in MODES:
        raise UserError(f"--reconstruct-mode must be one of {', '.join(MODES)}, not {mode!r}")


def reconstruct_prune(
    weight: torch.Tensor,
    stats: LinearStats,
    target: SparsityTarget,
    score: Callable[[torch.Tensor, LinearStats], torch.Tensor],
    mode: str = "fixed",
    *,
    percdamp: float = 0.01,
    blocksize: int = 128,
    hinv: torch.Tensor | None = None,
) -> torch.Tensor:
    """weight (out, in) float32 -> pruned and OBS-updated weight (out, in).

    `score` ranks weights (lowest removed); stats.hessian (in, in) is used unless `hinv`, the
    precomputed ``obs.inverse_hessian_factor``, is given (the search computes it once per run).
    """
    if mode == "fixed":
        mask = make_mask(score(weight, stats), target)  # (out, in), True = remove
        return obs_prune(weight, stats.hessian, target, percdamp=percdamp, blocksize=blocksize, fixed_mask=mask,
                         hinv=hinv)

    def saliency(block: torch.Tensor, _hinv_diag: torch.Tensor, cols: slice) -> torch.Tensor:
        return score(block, stats.columns(cols))  # (out, b)

    return obs_prune(weight, stats.hessian, target, percdamp=percdamp, blocksize=blocksize, saliency=saliency,
                     block_group="row" if target.group == "row" else "block", hinv=hinv)


def with_reconstruction(method: Method, mode: str = "fixed", *, percdamp: float = 0.01, blocksize: int = 128) -> Method:
    """`method`'s mask, then the OBS update of the surviving weights. `method` must rank weights
    (have a ``score``); its needs gain the Hessian H."""
    if mode not in MODES:
        raise UserError(f"unknown reconstruction mode {mode!r} (choose from {', '.join(MODES)})")
    score = method.score
    if score is None:
        raise UserError(f"--reconstruct needs a method that scores weights; {method.name} does not "
                        "(sparsegpt already reconstructs)")

    def prune(weight: torch.Tensor, stats: LinearStats, target: SparsityTarget) -> torch.Tensor:
        return reconstruct_prune(weight, stats, target, score, mode, percdamp=percdamp, blocksize=blocksize)

    describe = {**method.describe, "reconstruct": {"kind": "obs", "mode": mode, "percdamp": percdamp,
                                                   "blocksize": blocksize}}
    return Method(f"{method.name}+obs", method.needs | {"H"}, prune, describe, score)
