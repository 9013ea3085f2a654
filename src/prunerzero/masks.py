"""Pure functions from a score tensor to a pruning mask. True = the weight is removed.

Lowest scores are pruned within each comparison group: an output row (Wanda), the whole layer,
the whole layer with each row's share held within a band around the target ("band"), or each group
of M consecutive input weights in a row (N:M). Ties are broken by position: among
equal scores the one with the lower index is pruned first (what a stable sort would pick, found
without sorting), so masks are deterministic even for quantised weights, where ties are common.

The count is exact: a layer of `numel` weights loses numel * sparsity of them (halves rounded up); per-row
groups take floor/ceil shares by cumulative rounding so the rows add up to that total.
"""
from __future__ import annotations

import functools
import math
import re
from fractions import Fraction
from dataclasses import dataclass

import torch

from . import mask_kernels
from .errors import UserError
from .settings import ROW_BAND

GROUPS = ("row", "layer", "band")


@dataclass(frozen=True)
class SparsityTarget:
    """What to prune: a fraction, and either unstructured (n == m == 0) or N of every M."""

    sparsity: float
    n: int = 0
    m: int = 0
    group: str = "row"  # comparison group for unstructured sparsity

    @property
    def structured(self) -> bool:
        return self.m > 0

    @property
    def pattern(self) -> str:
        return f"{self.n}:{self.m}" if self.structured else "unstructured"

    def with_sparsity(self, sparsity: float) -> "SparsityTarget":
        return SparsityTarget(sparsity, self.n, self.m, self.group)


def parse_pattern(pattern: str) -> tuple[int, int] | None:
    """"unstructured" -> None, "N:M" -> (N, M) with 0 < N < M; anything else is a UserError."""
    if pattern == "unstructured":
        return None
    match = re.fullmatch(r"(\d+):(\d+)", pattern)
    if not match:
        raise UserError(f"unknown pattern {pattern!r} (use unstructured or N:M such as 2:4)")
    n, m = int(match[1]), int(match[2])
    if not 0 < n < m:
        raise UserError(f"pattern {pattern}: need 0 < N < M")
    return n, m


def parse_target(sparsity: float, pattern: str = "unstructured", group: str = "row") -> SparsityTarget:
    """Validate the user's sparsity and pattern ("unstructured", "2:4", "4:8", ...)."""
    if not 0.0 <= sparsity < 1.0:
        raise UserError(f"sparsity must be in [0, 1), got {sparsity}")
    if group not in GROUPS:
        raise UserError(f"unknown comparison group {group!r} (choose from {', '.join(GROUPS)})")
    nm = parse_pattern(pattern)
    if nm is None:
        return SparsityTarget(sparsity, group=group)
    n, m = nm
    if abs(sparsity - n / m) > 1e-9:
        raise UserError(f"pattern {pattern} means sparsity {n / m:g}, but --sparsity is {sparsity:g}")
    return SparsityTarget(n / m, n, m, group)


def parse_setting(text: str) -> SparsityTarget:
    """One setting of the search's ``--settings``: '0.5' or '0.5:unstructured' or '2:4' -> a target;
    an unstructured one may name its comparison group last: '0.5:layer' (or '0.5:unstructured:layer')
    compares the scores across the whole layer, so the formula also decides how many weights each row
    loses, and '0.5:band' does so with each row's share within ROW_BAND of 0.5 ('0.5' = '0.5:row', per
    output row as Wanda).
    ValueError (or ZeroDivisionError) when its numbers do not parse; UserError when they are no target."""
    if text.count(":") == 1 and "." not in text and not text.endswith(GROUPS):  # N:M
        n, m = (int(v) for v in text.split(":"))
        return parse_target(n / m, text)
    sparsity, *rest = text.split(":")
    group = rest.pop() if rest and rest[-1] in GROUPS else "row"
    if group != "row" and rest and rest[0].isdigit():
        raise UserError(f"setting {text!r}: a comparison group applies to unstructured sparsity only (N:M compares "
                        "within each group of M)")
    if len(rest) > 1:
        raise UserError(f"setting {text!r}: expected SPARSITY[:unstructured][:row|layer|band] or N:M")
    return parse_target(float(sparsity), rest[0] if rest else "unstructured", group)


def per_row_twin(setting: str) -> str | None:
    """The per-row form of a setting compared across the layer ('0.5:layer' or '0.5:band' -> '0.5'); None for
    any other."""
    for group in GROUPS[1:]:
        if setting.endswith(f":{group}"):
            return setting[: -len(group) - 1]
    return None


def cumulative_counts(stops: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Counts to prune in consecutive spans ending at `stops` (ascending, element offsets), so
    that the spans add up to exactly round(stops[-1] * sparsity), halves rounded up: (len(stops),).

    Integer arithmetic on the sparsity as a fraction: in floating point 50 * 0.29 is
    14.499999999999998, which would round down.
    """
    frac = Fraction(sparsity).limit_denominator(1_000_000)
    ends = torch.cat([torch.zeros(1, dtype=torch.long), stops.long().cpu()])
    bounds = (2 * ends * frac.numerator + frac.denominator) // (2 * frac.denominator)
    return bounds[1:] - bounds[:-1]


def row_counts(rows: int, cols: int, sparsity: float) -> torch.Tensor:
    """How many to prune in each row so the total is exactly round(rows*cols*sparsity): (rows,)."""
    return cumulative_counts(torch.arange(1, rows + 1) * cols, sparsity)


def prune_lowest(score: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Per row of `score` (R, C), mark the `counts[r]` lowest entries; among equal scores the
    lower index goes first (exactly what a stable ascending sort would pick).

    O(C) per row instead of a sort: find each row's threshold (the counts[r]-th smallest value),
    take everything below it, then fill up with the first entries equal to it. CPU float32 scores
    go to the compiled kernel (``mask_kernels``: the same mask, ~3x faster), the rest to torch.
    """
    if mask_kernels.usable(score):
        counts = counts.cpu()
        mask = torch.empty_like(score, dtype=torch.bool)
        nan_rows = mask_kernels.lowest_rows(score, counts, mask)
        if nan_rows.numel():
            mask[nan_rows] = _prune_lowest_torch(score[nan_rows], counts[nan_rows])
        return mask
    return _prune_lowest_torch(score, counts)


def _prune_lowest_torch(score: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """``prune_lowest`` in torch ops: any device and dtype (the reference for the compiled kernel)."""
    rows, cols = score.shape
    counts = counts.to(score.device).long()  # (R,)
    k_max = int(counts.max()) if rows else 0
    if k_max == 0:
        return torch.zeros_like(score, dtype=torch.bool)
    if bool((counts == k_max).all()):
        # The k-th smallest is the largest of the k smallest: an unsorted topk finds it 10-25%
        # faster than kthvalue on CPU (SmolLM2's shapes), the same value.
        smallest = torch.topk(score, k_max, dim=-1, largest=False, sorted=False).values  # (R, k_max)
        threshold = smallest.amax(-1, keepdim=True)  # (R, 1)
    else:
        smallest = torch.topk(score, k_max, dim=-1, largest=False, sorted=True).values  # (R, k_max)
        threshold = smallest.gather(-1, (counts - 1).clamp(min=0).unsqueeze(-1))  # (R, 1)
    below = score < threshold  # (R, C)
    need = counts.unsqueeze(-1) - below.sum(-1, keepdim=True)  # (R, 1) ties still to take
    at = score == threshold
    mask = below | at
    # Rows holding more entries equal to their threshold than they still need choose among them by
    # position. Only those rows pay for the running count: with real-valued scores a row usually
    # holds its threshold value once, and the count over the whole layer was most of the mask's cost.
    crowded = (at.sum(-1, keepdim=True) > need).squeeze(-1).nonzero().squeeze(-1)  # (r,) row indices
    if crowded.numel():
        at_c = at[crowded]  # (r, C)
        mask[crowded] = below[crowded] | (at_c & (torch.cumsum(at_c, dim=-1, dtype=torch.int32) <= need[crowded]))
    return mask & (counts > 0).unsqueeze(-1)


def unstructured_mask(score: torch.Tensor, sparsity: float, group: str = "row") -> torch.Tensor:
    """score (out, in) -> bool mask (out, in)."""
    rows, cols = score.shape
    if group == "row":
        return prune_lowest(score, row_counts(rows, cols, sparsity).to(score.device))
    if group == "layer":
        k = cumulative_counts(torch.tensor([score.numel()]), sparsity).to(score.device)
        flat = prune_lowest(score.reshape(1, -1), k)
        return flat.reshape(rows, cols)
    if group == "band":
        return banded_layer_mask(score, sparsity, ROW_BAND)
    raise UserError(f"unknown comparison group {group!r}")


def banded_layer_mask(score: torch.Tensor, sparsity: float, band: float) -> torch.Tensor:
    """score (out, in) -> mask (out, in) removing round(numel * sparsity) entries, the lowest across the
    whole layer subject to every row losing between floor((s - band) * in) and ceil((s + band) * in).

    Exact, with ties by position as everywhere here: each row first loses its `lo` lowest entries
    (forced); the rest of the count is taken across the layer from each row's entries ranked lo..hi-1
    (its optional ones). Within a row the optional entries come in score order, so taking the layer's
    lowest among them never skips a lower entry of the same row. Flattened row by row, in each row's
    stable sorted order, equal scores keep the layer's position order (row, then column).
    One stable sort per row: O(C log C), index memory 8 bytes per weight (a layer at a time).
    """
    rows, cols = score.shape
    total = int(cumulative_counts(torch.tensor([score.numel()]), sparsity)[0])
    lo = max(0, math.floor((sparsity - band) * cols + 1e-9))
    hi = min(cols, math.ceil((sparsity + band) * cols - 1e-9))
    ranked, order = torch.sort(score, dim=-1, stable=True)  # (R, C) each row ascending, ties by column
    removed = torch.zeros(rows, cols, dtype=torch.bool, device=score.device)  # in each row's sorted order
    removed[:, :lo] = True
    optional = ranked[:, lo:hi].contiguous()  # (R, hi - lo)
    need = torch.tensor([total - rows * lo])
    removed[:, lo:hi] = prune_lowest(optional.reshape(1, -1), need).reshape(rows, hi - lo)
    return torch.zeros_like(removed).scatter_(-1, order, removed)


def check_nm_width(cols: int, n: int, m: int) -> None:
    """An N:M pattern needs whole groups of M in every row."""
    if cols % m:
        raise UserError(f"N:M pattern {n}:{m} needs input width divisible by {m}, got {cols}")


def nm_mask(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """score (out, in) -> mask pruning the n lowest of every m consecutive inputs, vectorised."""
    rows, cols = score.shape
    check_nm_width(cols, n, m)
    if mask_kernels.usable(score):
        mask = torch.empty_like(score, dtype=torch.bool)
        mask_kernels.nm_lowest(score, n, m, mask)
        return mask
    columns = score.reshape(rows * cols // m, m).unbind(-1)  # m views of shape (G,)
    # Rank of entry i inside its group, ties by position: count the entries j that come
    # before it (s_j < s_i, or s_j == s_i with j < i). m*m elementwise comparisons over
    # strided views are ~10x faster than sorting millions of 4-element rows.
    ranks = []
    for i, s_i in enumerate(columns):
        rank = torch.zeros_like(s_i, dtype=torch.int16)
        for j, s_j in enumerate(columns):
            if j != i:
                rank += (s_j <= s_i) if j < i else (s_j < s_i)
        ranks.append(rank)
    return (torch.stack(ranks, dim=-1) < n).reshape(rows, cols)


@functools.lru_cache(maxsize=16)
def _precedes(m: int, device: torch.device) -> torch.Tensor:
    """(m, m, 1) bool, [i, j] = entry j comes before entry i of its group (read only: it is shared)."""
    return torch.ones(m, m, dtype=torch.bool, device=device).tril_(-1).unsqueeze(-1)


def nm_lowest_by_column(score_t: torch.Tensor, n: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """score_t (m, G), one group of m per column -> mask (m, G) of each column's n lowest, ties by position.

    ``nm_mask`` for groups laid out down the columns, as SparseGPT's transposed sweep holds them: the
    same comparisons (an entry sorts behind a lower one, and behind an equal one before it), so the same
    mask, NaN included. Built for one N:M group of a layer at a time, where a few broadcast ops over
    (m, m, G) beat nm_mask's m*m small ones: the sweep calls it ~1250 times per layer of SmolLM2.
    """
    before = _precedes(score_t.shape[0], score_t.device)  # (m, m, 1)
    s_i, s_j = score_t.unsqueeze(1), score_t.unsqueeze(0)  # (m, 1, G), (1, m, G)
    ahead = torch.where(before, s_j <= s_i, s_j < s_i)  # (m, m, G): entry j sorts ahead of entry i
    return torch.lt(ahead.sum(1), n, out=out)  # rank of each entry in its group < n: removed


def zero_masked(weight: torch.Tensor, mask: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """weight (out, in) with the entries where mask (out, in) is True set to +0.0, into `out` when given.

    For finite weights what ``weight.masked_fill(mask, 0.0)`` gives, to the bit but for a kept -0.0
    weight (+0.0 here, the same number), and about 5x faster on CPU: masked_fill's boolean select
    costs ~2.4 ns per element, a multiply by the kept entries ~0.4 (0.2 s of every search candidate's
    50% setting on SmolLM2). The multiply leaves -0.0 where a negative weight is removed; adding 0.0
    makes that +0.0 and changes no other value.
    (An infinite weight would become NaN where masked_fill gives 0: weights are finite.)"""
    return torch.mul(weight, mask.logical_not(), out=out).add_(0.0)


def prune_weight(weight: torch.Tensor, score: torch.Tensor, target: SparsityTarget,
                 out: torch.Tensor | None = None) -> torch.Tensor:
    """``zero_masked(weight, make_mask(score, target), out)``: weight (out, in) with the target's
    lowest-score entries zeroed, into `out` when given (its dtype: e.g. bfloat16 weights for a bf16
    forward, rounded as torch rounds). On CPU float32 tensors, per-row unstructured and N:M targets
    are masked and written in one compiled pass per row (``mask_kernels``), with no mask in memory:
    the same weights, a fraction of the memory traffic (every search candidate does this per setting)."""
    if (score.shape != weight.shape or not mask_kernels.usable(weight, score, out=out)
            or (out is not None and out.shape != weight.shape)
            or not (target.structured or (target.sparsity > 0 and target.group == "row"))):
        return zero_masked(weight, make_mask(score, target), out=out)
    out = torch.empty_like(weight) if out is None else out
    rows, cols = score.shape
    if target.structured:
        check_nm_width(cols, target.n, target.m)
        mask_kernels.nm_lowest(score, target.n, target.m, None, weight, out)
        return out
    counts = row_counts(rows, cols, target.sparsity)
    nan_rows = mask_kernels.lowest_rows(score, counts, None, weight, out)
    if nan_rows.numel():
        removed = _prune_lowest_torch(score[nan_rows], counts[nan_rows])
        out[nan_rows] = zero_masked(weight[nan_rows], removed).to(out.dtype)
    return out


def make_mask(score: torch.Tensor, target: SparsityTarget) -> torch.Tensor:
    """The one entry point every method and the search use: score (out, in) -> mask (out, in)."""
    if score.dim() != 2:
        raise ValueError(f"score must be (out, in), got shape {tuple(score.shape)}")
    if target.structured:
        return nm_mask(score, target.n, target.m)
    if target.sparsity == 0:
        return torch.zeros_like(score, dtype=torch.bool)
    return unstructured_mask(score, target.sparsity, target.group)
