"""Optimal Brain Surgeon weight reconstruction, blocked as in SparseGPT (Frantar & Alistarh, 2023).

Columns are pruned left to right; the error of each pruned column is spread over the columns not
yet visited, using the upper Cholesky factor of the damped inverse Hessian H = X^T X / tokens.
The mask is either given up front (any metric's mask, "fixed") or chosen block by block from a
saliency computed on the partially updated weights (SparseGPT's own way, or any metric's scores:
``methods.reconstruct``). SparseGPT is this function with `obs_saliency`; there is no second copy.
"""
from __future__ import annotations

import weakref
from typing import Callable

import torch

from . import obs_sweep
from ..masks import SparsityTarget, check_nm_width, cumulative_counts, nm_lowest_by_column, prune_lowest

# (block weights (out, b), diag of the block's inverse-Hessian factor (b,), the block's columns in the
# layer) -> saliency (out, b); lower = removed first. The column slice lets a metric read the
# statistics of exactly those input channels (see ``methods.reconstruct``).
BlockSaliency = Callable[[torch.Tensor, torch.Tensor, slice], torch.Tensor]


def obs_saliency(block: torch.Tensor, hinv_diag: torch.Tensor, cols: slice | None = None) -> torch.Tensor:
    """SparseGPT's saliency w^2 / [H^-1]_jj^2: the loss increase of removing each weight."""
    return block.pow(2) / hinv_diag.pow(2).unsqueeze(0)


def _factor_of_inverse(damped: torch.Tensor) -> torch.Tensor:
    """(in, in) symmetric positive definite H -> upper U with U^T U = H^-1, from one Cholesky.

    With P the reversal permutation, chol(P H P) = L gives H^-1 = P L^-T L^-1 P = U^T U for
    U = P L^-1 P, upper triangular with a positive diagonal: the Cholesky factor SparseGPT's
    chol -> cholesky_inverse -> chol chain computes, at about half its arithmetic.
    """
    lower = torch.linalg.cholesky(damped.flip(0, 1))  # (in, in)
    eye = torch.eye(damped.shape[0], dtype=damped.dtype, device=damped.device)
    return torch.linalg.solve_triangular(lower, eye, upper=False).flip(0, 1)


def inverse_hessian_factor(hessian: torch.Tensor, percdamp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp*I)^-1, with damp = percdamp * mean(diag H): (in, in) float32.

    Float32, as the SparseGPT reference code: the damping bounds H's condition number and float64
    doubled the factorisations' seconds (a tenth of a SparseGPT prune of SmolLM2). A matrix whose
    float32 factorisation fails is retried in float64 at the same damping before damping harder,
    so float32 rounding alone never changes the damping.
    """
    h = hessian.detach().float().clone()
    idx = torch.arange(h.shape[0], device=h.device)
    dead = torch.diag(h) == 0  # inputs that were always zero carry no information
    h[idx[dead], idx[dead]] = 1.0
    damp = float(percdamp * torch.mean(torch.diag(h)))
    for _ in range(6):
        damped = h.clone()
        damped[idx, idx] += damp
        for dtype in (torch.float32, torch.float64):
            try:
                factor = _factor_of_inverse(damped.to(dtype))
            except torch.linalg.LinAlgError:
                continue
            if torch.isfinite(factor).all():
                return factor.float()
        damp = damp * 10  # not positive definite at this damping: damp harder
    raise RuntimeError("Hessian is not positive definite even with heavy damping")


class FactorMemo:
    """``inverse_hessian_factor`` that reuses its last result for the very same Hessian tensor.

    Linears fed one input (q/k/v, gate/up) get one H object from the statistics engine
    (``calib.stats``), so a method pruning them one after another factorises it once instead of
    up to three times. Identity, not equality, through a weak reference: the factor is dropped the
    moment its H is freed (the layer's statistics are), so the memo never keeps a layer's (in, in)
    matrices alive into the next layer (3.3 GB each for a 70B model's 28672-wide down_proj input).
    """

    def __init__(self, percdamp: float) -> None:
        self.percdamp = percdamp
        self._hessian: weakref.ref | None = None
        self._factor: torch.Tensor | None = None  # (in, in) upper

    def __call__(self, hessian: torch.Tensor) -> torch.Tensor:
        if self._hessian is None or self._hessian() is not hessian:
            self._factor = None  # the previous H's factor goes before the next one is made
            self._factor = inverse_hessian_factor(hessian, self.percdamp)
            self._hessian = weakref.ref(hessian, self._forget)
        return self._factor

    def _forget(self, ref: weakref.ref) -> None:
        if self._hessian is ref:
            self._hessian, self._factor = None, None


def block_group_for(target: SparsityTarget) -> str:
    """``obs_prune``'s block_group for a target's comparison group: "row" compares within each output
    row of a block; "layer" across the block's rows, the nearest a blocked sweep comes to the layer;
    "band" per row, each row's count in each block given by the metric's banded mask (``counts``)."""
    return "block" if target.group == "layer" else "row"


def _block_counts(rows: int, cols: int, blocksize: int, sparsity: float, per_row: bool) -> torch.Tensor:
    """How many weights each column block prunes, (blocks,), or each (row, block), (rows, blocks).

    Cumulative rounding over the layer in row-major order, so the blocks (and, per row, the
    row's blocks) add up to exactly the layer's total and each row's total as ``masks`` counts them.
    """
    stops = torch.arange(blocksize, cols + blocksize, blocksize).clamp(max=cols)  # (blocks,)
    if not per_row:
        return cumulative_counts(stops * rows, sparsity)
    grid = (torch.arange(rows).unsqueeze(1) * cols + stops.unsqueeze(0)).reshape(-1)  # (rows * blocks,)
    return cumulative_counts(grid, sparsity).reshape(rows, -1)


def mask_block_counts(mask: torch.Tensor, blocksize: int, per_row: bool) -> torch.Tensor:
    """How many weights `mask` (out, in; True = remove) removes in each column block of the sweep:
    (rows, blocks) per output row, else (blocks,); the last block may be narrower."""
    rows, cols = mask.shape
    blocks = -(-cols // blocksize)
    padded = torch.nn.functional.pad(mask.long(), (0, blocks * blocksize - cols))  # (rows, blocks * blocksize)
    per = padded.reshape(rows, blocks, blocksize).sum(-1).cpu()  # (rows, blocks)
    return per if per_row else per.sum(0)


@torch.no_grad()
def obs_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor | None,
    target: SparsityTarget,
    *,
    percdamp: float = 0.01,
    blocksize: int = 128,
    fixed_mask: torch.Tensor | None = None,
    saliency: BlockSaliency = obs_saliency,
    block_group: str = "block",
    hinv: torch.Tensor | None = None,
    counts: torch.Tensor | None = None,
) -> torch.Tensor:
    """weight (out, in), hessian (in, in) -> pruned and reconstructed weight (out, in).

    The mask: `fixed_mask` (True = remove) when given; else chosen as the sweep reaches each
    column block from `saliency` of the partially updated weights. Unstructured: each block
    prunes its exact share of the layer's total (cumulative rounding), compared across the whole
    block (``block_group="block"``, SparseGPT) or within each row of the block (``"row"``, for
    metrics that compare within output rows); `counts` ((rows, blocks) for "row", (blocks,) for
    "block"; ``mask_block_counts``) replaces that even share with given counts. N:M: each group of M
    columns is chosen when the sweep reaches it, from the saliency of the current block. `hinv` is
    the precomputed ``inverse_hessian_factor`` (the search reuses it across candidates); then
    `hessian` may be None.
    """
    if block_group not in ("block", "row"):
        raise ValueError(f"block_group must be block or row, not {block_group!r}")
    w = weight.clone().float()
    rows, cols = w.shape
    if target.structured and blocksize % target.m:
        blocksize = max(target.m, blocksize - blocksize % target.m)
    if hinv is None:
        hinv = inverse_hessian_factor(hessian.to(w.device), percdamp)  # (in, in) upper
    hinv = hinv.to(w.device)
    per_row = block_group == "row"
    blocks = -(-cols // blocksize)
    if counts is None:
        counts = _block_counts(rows, cols, blocksize, target.sparsity, per_row)  # (blocks,) or (rows, blocks)
    elif tuple(counts.shape) != ((rows, blocks) if per_row else (blocks,)):
        raise ValueError(f"counts of shape {tuple(counts.shape)} for {rows} rows and {blocks} column blocks "
                         f"(block_group {block_group!r})")
    choose_groups = fixed_mask is None and target.structured  # N:M chosen group by group in the sweep
    if choose_groups:
        check_nm_width(cols, target.n, target.m)

    # The compiled sweep chooses N:M groups by SparseGPT's own saliency only; a metric's saliency
    # (methods.reconstruct) reads the whole block at each group and runs the eager loop.
    compiled = (w.device.type == "cpu" and obs_sweep.available()
                and (not choose_groups or saliency is obs_saliency))
    for block_index, i1 in enumerate(range(0, cols, blocksize)):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        w1 = w[:, i1:i2]  # (out, b), read only: the sweep below works on a transposed copy
        hinv1 = hinv[i1:i2, i1:i2]  # (b, b)
        d = torch.diag(hinv1)  # (b,)
        span = slice(i1, i2)

        # The sweep works on the block transposed, (b, out): each column a contiguous row.
        if fixed_mask is not None:
            mask1t = fixed_mask[:, i1:i2].to(w.device).t().contiguous()  # (b, out)
        elif choose_groups:
            mask1t = torch.zeros(count, rows, dtype=torch.bool, device=w.device)  # filled group by group
        elif per_row:
            mask1t = prune_lowest(saliency(w1, d, span), counts[:, block_index]).t().contiguous()
        else:
            k = counts[block_index : block_index + 1]
            mask1t = prune_lowest(saliency(w1, d, span).reshape(1, -1), k).reshape(rows, count).t().contiguous()
        w1t = w1.t().contiguous()  # (b, out)
        err1t = torch.empty_like(w1t)  # (b, out)
        nm = (target.n, target.m) if choose_groups else None
        if compiled:
            obs_sweep.sweep_block(w1t, hinv1.float().contiguous(), mask1t, err1t, nm)
        else:
            _sweep_block_eager(w1t, hinv1, d, mask1t, err1t, nm, saliency, span)

        w[:, i1:i2] = w1t.masked_fill_(mask1t, 0.0).t()  # exact zeros where pruned
        err1 = err1t.t()  # (out, b)
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]  # lazy batch update of the columns after the block
    return w


def _sweep_block_eager(w1t: torch.Tensor, hinv1: torch.Tensor, d: torch.Tensor, mask1t: torch.Tensor,
                       err1t: torch.Tensor, nm: tuple[int, int] | None, saliency: BlockSaliency,
                       span: slice) -> None:
    """The block's sweep in eager torch, in place (the reference of ``obs_sweep.sweep_block``, and
    the path for GPU tensors and for N:M groups chosen by a metric's saliency).

    w1t (b, out) the block transposed: each column is a contiguous row, which makes the per-column
    steps (the only sequential part) about twice as fast; hinv1 (b, b); d (b,) its diagonal; mask1t
    (b, out), filled group by group when `nm` = (n, m) is given; err1t (b, out) receives the errors.
    """
    count = w1t.shape[0]
    d_col = d.unsqueeze(1)  # (b, 1)
    # err of column i = its current value / d_i where pruned, 0 where kept: one multiply per column.
    scale_t = mask1t / d_col  # (b, out)
    # One view per column, made once: the sweep's steps are small enough that indexing shows.
    w_rows, scale_rows, err_rows, hinv_rows = w1t.unbind(0), scale_t.unbind(0), err1t.unbind(0), hinv1.unbind(0)
    for i in range(count):
        if nm is not None and i % nm[1] == 0:
            group = slice(i, i + nm[1])
            # Saliency of the whole current block (columns before i are final, the rest updated),
            # so a metric's row/column normalisations see the block, not just M columns.
            if saliency is obs_saliency:  # elementwise: the group's columns suffice, (m, out)
                scores_t = w1t[group].pow(2) / d_col[group].pow(2)
            else:
                scores_t = saliency(w1t.t(), d, span)[:, group].t()
            nm_lowest_by_column(scores_t, nm[0], out=mask1t[group])
            torch.div(mask1t[group], d_col[group], out=scale_t[group])
        err = torch.mul(w_rows[i], scale_rows[i], out=err_rows[i])  # (out,)
        # Rank-1 update of column i and the rest of the block; column i becomes its pruned value
        # (w - w/d*d: 0 up to rounding where pruned, unchanged where kept).
        w1t[i:].addr_(hinv_rows[i][i:], err, alpha=-1.0)
