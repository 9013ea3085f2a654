"""Weight reconstruction after any metric's mask: `--reconstruct obs` or `--reconstruct admm`.

``admm`` (``methods.admm``): the metric's whole mask, then the weights that minimise the layer's
output error for exactly that mask (ADMM, then conjugate gradients), from the same Hessian. Modes:

- ``fixed``: the metric's mask on the dense weights, as the metric alone would prune.
- ``gradual``: the mask moves with the update (Boza 2024's gradual pruning, with any metric in
  place of Wanda's): over the first three quarters of the ADMM iterations the metric scores the
  current iterate (its W; X and G stay the dense model's) and the sparsity grows on a cubic
  schedule to the target; N:M takes the target's N:M mask of the iterate and removes the
  lowest-scored share of it. The last iterations and CG keep the final mask.

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
  Unstructured: each (row, block) prunes as many weights as the metric's mask of the dense weights
  removes there (each block, for the "layer" group), so the metric sets the allocation over the
  row and the sweep chooses which weights within each block.

``--mask-only`` (``mask_only``) keeps the mask such a run chose and discards its weight update: the
dense weights with that mask. Worth it where the mask moves with the update (obs ``block``, admm
``gradual``, SparseGPT itself), whose masks are chosen from compensated weights: at 2:4 on SmolLM2
that mask alone is far better than any fixed one (docs/BENCHMARKS.md, the sweep-mask reading), and
the weights stay the original values (to fine-tune or quantise them later, or to compare masks).
With a ``fixed`` mode it would be the metric's own mask, so that pairing is refused.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..calib.stats import LinearStats
from ..errors import UserError
from ..masks import SparsityTarget, make_mask, zero_masked
from .base import Method
from .admm import admm_update
from .obs import FactorMemo, block_group_for, mask_block_counts, obs_prune

MODES = ("fixed", "block", "gradual")
MODES_OF = {"obs": ("fixed", "block"), "admm": ("fixed", "gradual"), "none": MODES}
KINDS = ("none", "obs", "admm")
ADMM_ITERS, CG_ITERS = 10, 20  # defaults: within 0.5% of the mask's optimum on SmolLM2's layers (BENCHMARKS)


def check_reconstruct(kind: str, mode: str, admm_iters: int = ADMM_ITERS, cg_iters: int = CG_ITERS) -> None:
    """One-line errors for a bad --reconstruct / --reconstruct-mode (prune and search share it)."""
    if kind not in KINDS:
        raise UserError(f"--reconstruct must be one of {', '.join(KINDS)}, not {kind!r}")
    if mode not in MODES:
        raise UserError(f"--reconstruct-mode must be one of {', '.join(MODES)}, not {mode!r}")
    if mode not in MODES_OF[kind]:
        raise UserError(f"--reconstruct {kind} takes --reconstruct-mode {' or '.join(MODES_OF[kind])}, not {mode}")
    if not (isinstance(admm_iters, int) and isinstance(cg_iters, int)) or admm_iters < 0 or cg_iters < 0:
        raise UserError(f"--admm-iters and --cg-iters must be integers >= 0, not {admm_iters!r}, {cg_iters!r}")


def check_mask_only(kind: str, mode: str, mask_only: bool, method_reconstructs: bool = False) -> None:
    """One-line errors for a --mask-only that would keep nothing but the metric's own mask.
    `method_reconstructs`: the method updates weights by itself (sparsegpt)."""
    if not mask_only:
        return
    if kind == "none" and not method_reconstructs:
        raise UserError("--mask-only keeps the mask a weight update chose: it needs --reconstruct obs "
                        "--reconstruct-mode block, --reconstruct admm --reconstruct-mode gradual, "
                        "or --method sparsegpt")
    if kind != "none" and mode == "fixed":
        raise UserError("--mask-only with --reconstruct-mode fixed is the metric's own mask: use --reconstruct none, "
                        "or --reconstruct-mode block (obs) / gradual (admm)")


def dense_under_mask(weight: torch.Tensor, updated: torch.Tensor) -> torch.Tensor:
    """weight (out, in), the dense one; updated (out, in), what a weight update made of it -> the
    dense weight with the update's mask. The mask is read off the exact zeros: OBS and ADMM set every
    removed weight to 0.0, and a kept weight that the update moved to exactly 0.0 (not seen in
    practice) would be removed too."""
    return zero_masked(weight, updated == 0)


def mask_only(method: Method) -> Method:
    """`method` (one that updates weights) -> the mask it chose on the *dense* weights, its update
    discarded. Every Method.prune leaves its input weight unchanged, so that weight is the dense one."""
    inner = method.prune

    def prune(weight: torch.Tensor, stats: LinearStats, target: SparsityTarget) -> torch.Tensor:
        return dense_under_mask(weight, inner(weight, stats, target))

    return Method(f"{method.name}-mask", method.needs, prune, {**method.describe, "mask_only": True}, method.score,
                  method.rescore)


def gradual_mask(score: torch.Tensor, target: SparsityTarget, share: float) -> torch.Tensor:
    """score (out, in) -> the mask `share` (0..1] of the way to `target` (True = remove): unstructured,
    the target's comparison at share x its sparsity; N:M, the lowest-scored share of each row's N:M
    removals (all of them at share 1), so every step's mask lies inside the N:M pattern's choices."""
    if not target.structured:
        return make_mask(score, target.with_sparsity(target.sparsity * share))
    pattern = make_mask(score, target)  # (out, in)
    if share >= 1.0:
        return pattern
    among = score.masked_fill(~pattern, float("inf"))  # kept by the pattern: never removed at this step
    return make_mask(among, SparsityTarget(target.sparsity * share)) & pattern


def cubic_share(k: int, ramp: int) -> float:
    """Share of the target sparsity at ramp step k (0-based) of `ramp`: 1 - (1 - (k+1)/ramp)^3, fast
    first and slow at the end (Zhu & Gupta's schedule, as Boza uses), exactly 1 at the last step."""
    return 1.0 - (1.0 - min(k + 1, ramp) / ramp) ** 3


def gradual_ramp(iters: int) -> int:
    """ADMM iterations over which the mask moves: the first three quarters (Boza: 15 of 20)."""
    return max(1, (3 * iters + 3) // 4)


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
    kind: str = "obs",
    admm_iters: int = ADMM_ITERS,
    cg_iters: int = CG_ITERS,
    rescore: Callable[[torch.Tensor, LinearStats], torch.Tensor] | None = None,
) -> torch.Tensor:
    """weight (out, in) float32 -> pruned and updated weight (out, in).

    `score` ranks weights (lowest removed); stats.hessian (in, in) is used unless `hinv`, the
    precomputed ``obs.inverse_hessian_factor``, is given (the search computes it once per run).
    `rescore`: `score` without its once-per-linear checks (``Method.rescore``), for mode "block"'s
    later scorings of a column block (N:M: one per group of M columns); each block's first scoring
    is `score`.
    kind "admm": the best weights for the metric's mask (``methods.admm``; `hinv` unused), the mask
    chosen on the dense weights (mode "fixed") or moving with the update (mode "gradual").
    """
    if kind == "admm":
        if mode == "gradual" and admm_iters > 0:  # (no ADMM iteration: nothing to move with; the fixed mask)
            ramp = gradual_ramp(admm_iters)

            def remask(iterate: torch.Tensor, k: int) -> torch.Tensor | None:  # iterate (out, in)
                return gradual_mask(score(iterate, stats), target, cubic_share(k, ramp)) if k < ramp else None

            nothing = torch.zeros(weight.shape, dtype=torch.bool, device=weight.device)  # before the first step
            return admm_update(weight, stats.hessian, nothing, iters=admm_iters, cg_iters=cg_iters,
                               percdamp=percdamp, remask=remask)
        mask = make_mask(score(weight, stats), target)  # (out, in), True = remove
        return admm_update(weight, stats.hessian, mask, iters=admm_iters, cg_iters=cg_iters, percdamp=percdamp)
    if mode == "fixed":
        mask = make_mask(score(weight, stats), target)  # (out, in), True = remove
        return obs_prune(weight, stats.hessian, target, percdamp=percdamp, blocksize=blocksize, fixed_mask=mask,
                         hinv=hinv)

    of_block: dict[int, LinearStats] = {}  # block start -> its columns' statistics, once scored with every check

    def saliency(block: torch.Tensor, _hinv_diag: torch.Tensor, cols: slice) -> torch.Tensor:  # -> (out, b)
        if cols.start in of_block:
            return (rescore or score)(block, of_block[cols.start])
        of_block[cols.start] = stats.columns(cols)
        return score(block, of_block[cols.start])

    group = block_group_for(target)
    counts = None
    if not target.structured:
        # How many each (row, block) prunes: as many as the metric's own mask on the dense weights removes
        # there; the sweep then chooses which. An even share of every row's block instead imposes a
        # structure no metric asked for (SmolLM2 50%, three draws: Wanda's sweep mask has a gap to dense
        # 6.6% / 6.2% smaller on WikiText-2 / QASPER; docs/BENCHMARKS.md, "Each block's count").
        counts = mask_block_counts(make_mask(score(weight, stats), target), blocksize, per_row=group == "row")
    return obs_prune(weight, stats.hessian, target, percdamp=percdamp, blocksize=blocksize, saliency=saliency,
                     block_group=group, hinv=hinv, counts=counts)


def with_reconstruction(method: Method, mode: str = "fixed", *, percdamp: float = 0.01, blocksize: int = 128,
                        kind: str = "obs", admm_iters: int = ADMM_ITERS, cg_iters: int = CG_ITERS) -> Method:
    """`method`'s mask, then the update of the surviving weights (OBS, or ADMM for the metric's mask).
    `method` must rank weights (have a ``score``); its needs gain the Hessian H."""
    check_reconstruct(kind, mode, admm_iters, cg_iters)
    score = method.score
    if score is None:
        raise UserError(f"--reconstruct needs a method that scores weights; {method.name} does not "
                        "(sparsegpt already reconstructs)")

    factor = FactorMemo(percdamp)  # q/k/v and gate/up share one H: factorised once

    def prune(weight: torch.Tensor, stats: LinearStats, target: SparsityTarget) -> torch.Tensor:
        hinv = factor(stats.hessian) if kind == "obs" else None
        return reconstruct_prune(weight, stats, target, score, mode, percdamp=percdamp, blocksize=blocksize,
                                 hinv=hinv, kind=kind, admm_iters=admm_iters, cg_iters=cg_iters, rescore=method.rescore)

    details = {"kind": kind, "mode": mode, "percdamp": percdamp}
    details.update({"blocksize": blocksize} if kind == "obs" else {"admm_iters": admm_iters, "cg_iters": cg_iters})
    return Method(f"{method.name}+{kind}", method.needs | {"H"}, prune, {**method.describe, "reconstruct": details},
                  score, method.rescore)
