"""Compiled (numba) kernels behind ``masks``: per-row lowest-k selection and N:M groups, optionally
writing the pruned weight in the same pass.

Why compiled: a search candidate masks all ~100 M weights of SmolLM2 twice (50% and 2:4). In torch the
exact per-row selection is a topk, then comparisons, counts and a multiply over the whole matrix, each
its own pass over memory (0.75-0.8 s of a 3.6 s candidate at 50%, docs/BENCHMARKS.md
"candidate-speed"); N:M's m*m comparisons are m*m passes. Here one thread takes a few rows at a time
and does everything on a row while it is in cache.

The masks are the same, bit for bit, as ``masks``' torch code (tests/test_masks.py compares them):
- Per row: the k-th smallest value, found exactly by bucketing the row's values by the top bits of
  their float bits taken in float order (a monotone map, so the k-th smallest lies in a known bucket;
  repeat inside it until it is small, then quickselect), then everything below it and, among entries
  equal to it, the first ones by position. Rows holding a NaN are left to the torch code (its topk
  orders NaN its own way): the kernel reports them and ``masks`` recomputes those rows.
- N:M: the comparisons of ``masks.nm_mask`` (an entry ranks behind a lower one, and behind an equal
  one before it), NaN included.
- The weight written is ``masks.zero_masked``'s: +0.0 where removed, ``w + 0.0`` where kept.

CPU float32 tensors only (contiguous); anything else, or ``PRUNERZERO_MASKS=torch``, runs the torch code.
"""
from __future__ import annotations

import os

import numpy as np
import torch

try:
    import numba
    from numba import njit, prange, types
    from numba.extending import overload
except ImportError:  # pragma: no cover - numba is a declared dependency; this keeps the torch path usable
    numba = None

_ENV = "PRUNERZERO_MASKS"  # "torch" forces the torch code (A/B timing, debugging)
_BINS = 256  # buckets per pass of the selection: a row of 576 values leaves ~2 per bucket when spread evenly
_SMALL = 48  # at or below this many candidates, quickselect them directly
_ROWS = 32  # rows per unit of parallel work


def available() -> bool:
    """Whether the compiled kernels can run here (numba importable and not switched off)."""
    return numba is not None and os.environ.get(_ENV, "compiled") != "torch"


def use_torch_threads() -> None:
    """Run numba's parallel loops on as many threads as torch uses (the user's --threads)."""
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


def usable(*tensors: torch.Tensor | None, out: torch.Tensor | None = None) -> bool:
    """Whether these (R, C) float32 tensors (None: absent) and the written weight `out` (float32 or
    bfloat16) can go to the kernels: CPU and contiguous."""
    if not available():
        return False
    return all(t is None or (t.device.type == "cpu" and t.is_contiguous() and t.dim() == 2
                             and (t.dtype == torch.float32 or (t is out and t.dtype == torch.bfloat16)))
               for t in (*tensors, out))


if numba is not None:

    @njit(inline="always")
    def _quickselect(a, n, k):  # pragma: no cover - compiled
        """The k-th smallest (0-based) of a[:n], reordering a in place (Hoare partition, median of 3)."""
        lo, hi = 0, n - 1
        while hi > lo:
            x, y, z = a[lo], a[(lo + hi) >> 1], a[hi]
            if x > y:
                x, y = y, x
            if y > z:
                y = z
            if x > y:
                y = x
            i, j = lo, hi
            while i <= j:
                while a[i] < y:
                    i += 1
                while a[j] > y:
                    j -= 1
                if i <= j:
                    a[i], a[j] = a[j], a[i]
                    i += 1
                    j -= 1
            if k <= j:
                hi = j
            elif k >= i:
                lo = i
            else:
                return a[k]
        return a[k]

    @njit(inline="always")
    def _key(bits):  # pragma: no cover - compiled
        """A float32's bits (as int32) -> an int32 in the same order as the floats (-0.0 just below +0.0)."""
        return bits ^ ((bits >> 31) & 0x7FFFFFFF)

    @njit(inline="always")
    def _kth_smallest(row, n, k, buf, hist):  # pragma: no cover - compiled
        """The k-th smallest (0-based) of row[:n], no NaN in it; buf (n,) and hist (_BINS,) scratch.

        Radix-style: each pass maps values to _BINS buckets by the top bits of (key - min key), the
        key being the float's bits in float order. Every value of a lower bucket is smaller than every
        value of a higher one, so the answer is in the bucket where the running count passes k; its
        values are gathered into buf and the pass repeats on them. On the bits, not the values: scores
        spread over many orders of magnitude (a few outliers) still split evenly by exponent."""
        src = row
        copied = False
        while True:
            if n <= _SMALL:
                if not copied:
                    for j in range(n):
                        buf[j] = src[j]
                return _quickselect(buf, n, k)
            bits = src.view(np.int32)
            lo = _key(bits[0])
            hi = lo
            for j in range(n):
                key = _key(bits[j])
                lo = min(lo, key)
                hi = max(hi, key)
            if lo == hi:
                return src[0]
            span = np.int64(hi) - np.int64(lo)
            shift = 0
            while (span >> shift) >= _BINS:
                shift += 1
            hist[:] = 0
            for j in range(n):
                hist[(np.int64(_key(bits[j])) - lo) >> shift] += 1
            below = 0
            pick = 0
            for b in range(_BINS):
                if below + hist[b] > k:
                    pick = b
                    break
                below += hist[b]
            kept = 0
            for j in range(n):  # in place when src is buf: the write index never passes the read index
                if (np.int64(_key(bits[j])) - lo) >> shift == pick:
                    buf[kept] = src[j]
                    kept += 1
            src = buf
            copied = True
            n = kept
            k -= below

    def _store(out, r, j, w, w_bits, removed):  # pragma: no cover - replaced by the overload below
        """out[r, j] = +0.0 if removed else w + 0.0, in out's dtype: float32, or bfloat16 as int16 bits."""

    @overload(_store)
    def _store_overload(out, r, j, w, w_bits, removed):  # pragma: no cover - compiled
        if out.dtype == types.int16:
            def store_bf16(out, r, j, w, w_bits, removed):
                # torch's float32 -> bfloat16: round to nearest even (c10::round_to_nearest_even),
                # NaN -> 0x7FC0; w + 0.0 first, so a kept -0.0 is +0.0 as in masks.zero_masked.
                u = np.int64(w_bits) & 0xFFFFFFFF
                h = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
                if (u & 0x7FFFFFFF) > 0x7F800000:
                    h = 0x7FC0
                if removed or (u & 0x7FFFFFFF) == 0:
                    h = 0
                out[r, j] = np.int16(h - 0x10000 if h >= 0x8000 else h)
            return store_bf16

        def store_float(out, r, j, w, w_bits, removed):
            out[r, j] = np.float32(0.0) if removed else w + np.float32(0.0)
        return store_float

    @njit(inline="always")
    def _write_row(r, removed, mask, weight, w_bits, out, want_mask, want_weight):  # pragma: no cover
        """Row r of the mask and / or of the pruned weight from removed (C,) bool."""
        for j in range(removed.shape[0]):
            if want_mask:
                mask[r, j] = removed[j]
            if want_weight:
                _store(out, r, j, weight[r, j], w_bits[r, j], removed[j])

    @njit(parallel=True, cache=True)
    def _lowest_rows_kernel(score, counts, mask, weight, out, want_mask, want_weight, nan_rows):  # pragma: no cover
        rows, cols = score.shape
        w_bits = weight.view(np.int32)
        for c in prange((rows + _ROWS - 1) // _ROWS):
            buf = np.empty(cols, dtype=np.float32)
            hist = np.empty(_BINS, dtype=np.int32)
            removed = np.empty(cols, dtype=np.bool_)
            for r in range(c * _ROWS, min(rows, (c + 1) * _ROWS)):
                row = score[r]
                k = min(counts[r], cols)
                has_nan = False
                for j in range(cols):
                    has_nan |= row[j] != row[j]
                if has_nan:
                    nan_rows[r] = True
                    continue
                if k <= 0:
                    removed[:] = False
                else:
                    thr = _kth_smallest(row, cols, k - 1, buf, hist)
                    below = 0
                    at = 0
                    for j in range(cols):
                        below += row[j] < thr
                        at += row[j] == thr
                    need = k - below  # entries equal to thr still to remove, the first ones by position
                    if at == need:  # usual for real-valued scores: every tie goes, no running count
                        for j in range(cols):
                            removed[j] = row[j] <= thr
                    else:
                        for j in range(cols):
                            v = row[j]
                            removed[j] = v < thr
                            if v == thr:
                                removed[j] = need > 0
                                need -= 1
                _write_row(r, removed, mask, weight, w_bits, out, want_mask, want_weight)

    @njit(inline="always")
    def _ahead(a, b):  # pragma: no cover - compiled
        """(b sorts ahead of a, a sorts ahead of b) for entries a before b of a group: ahead = lower, or
        equal and earlier. Both False when either is NaN, as in masks.nm_mask."""
        return b < a, a <= b

    @njit(parallel=True, cache=True)
    def _nm_kernel(score, n, m, mask, weight, out, want_mask, want_weight):  # pragma: no cover - compiled
        rows, cols = score.shape
        w_bits = weight.view(np.int32)
        for c in prange((rows + _ROWS - 1) // _ROWS):
            removed = np.empty(cols, dtype=np.bool_)
            rank = np.empty(m, dtype=np.int32)
            for r in range(c * _ROWS, min(rows, (c + 1) * _ROWS)):
                row = score[r]
                if m == 4:  # 2:4 and 1:4 and 3:4, unrolled: the six pairs of a group
                    for g in range(0, cols, 4):
                        s0, s1, s2, s3 = row[g], row[g + 1], row[g + 2], row[g + 3]
                        a01, b01 = _ahead(s0, s1)
                        a02, b02 = _ahead(s0, s2)
                        a03, b03 = _ahead(s0, s3)
                        a12, b12 = _ahead(s1, s2)
                        a13, b13 = _ahead(s1, s3)
                        a23, b23 = _ahead(s2, s3)
                        removed[g] = np.int32(a01) + a02 + a03 < n
                        removed[g + 1] = np.int32(b01) + a12 + a13 < n
                        removed[g + 2] = np.int32(b02) + b12 + a23 < n
                        removed[g + 3] = np.int32(b03) + b13 + b23 < n
                else:
                    for g in range(0, cols, m):
                        for i in range(m):
                            rank[i] = 0
                        for i in range(m):
                            for j in range(i + 1, m):
                                later_ahead, earlier_ahead = _ahead(row[g + i], row[g + j])
                                rank[i] += later_ahead
                                rank[j] += earlier_ahead
                        for i in range(m):
                            removed[g + i] = rank[i] < n
                _write_row(r, removed, mask, weight, w_bits, out, want_mask, want_weight)


_NO_MASK = np.zeros((0, 0), dtype=np.bool_)
_NO_WEIGHT = np.zeros((0, 0), dtype=np.float32)


def _arrays(mask: torch.Tensor | None, weight: torch.Tensor | None, out: torch.Tensor | None):
    # detach(): the same storage (writes go through), and numpy() refuses tensors that require grad
    if out is not None and out.dtype == torch.bfloat16:  # numpy has no bfloat16: its bits, as int16
        out_array = out.detach().view(torch.int16).numpy()
    else:
        out_array = _NO_WEIGHT if out is None else out.detach().numpy()
    return (_NO_MASK if mask is None else mask.numpy(), _NO_WEIGHT if weight is None else weight.detach().numpy(),
            out_array)


def lowest_rows(score: torch.Tensor, counts: torch.Tensor, mask: torch.Tensor | None,
                weight: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Per row of score (R, C) float32, remove the counts[r] lowest (ties by position): into mask (R, C)
    bool when given, and weight (R, C) with them zeroed into out when given. Returns the indices of rows
    holding a NaN, left unwritten (the caller's torch code does them)."""
    use_torch_threads()
    nan_rows = np.zeros(score.shape[0], dtype=np.bool_)
    m, w, o = _arrays(mask, weight, out)
    _lowest_rows_kernel(score.detach().numpy(), counts.to(torch.int64).numpy(), m, w, o, mask is not None,
                        out is not None, nan_rows)
    return torch.from_numpy(nan_rows).nonzero().squeeze(-1)


def nm_lowest(score: torch.Tensor, n: int, m: int, mask: torch.Tensor | None,
              weight: torch.Tensor | None = None, out: torch.Tensor | None = None) -> None:
    """The n lowest of every m consecutive entries of each row of score (R, C) float32, as
    ``masks.nm_mask``: into mask (R, C) bool when given, and weight zeroed there into out when given."""
    use_torch_threads()
    mk, w, o = _arrays(mask, weight, out)
    _nm_kernel(score.detach().numpy(), n, m, mk, w, o, mask is not None, out is not None)
