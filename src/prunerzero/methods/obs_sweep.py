"""The sequential part of the OBS sweep (one column block), compiled with numba for CPU tensors.

Why compiled: the sweep visits the block's columns one at a time, and each visit is a rank-1 update
of the columns after it (plus, at N:M, the choice of each group of M columns when the sweep reaches
it). In eager torch that is ~22,000 small operations per SmolLM2 layer at 2:4, bound by dispatch,
not arithmetic (docs/BENCHMARKS.md, floor). Here each thread takes a chunk of output rows, copies
its (b, CH) slice into a buffer that stays in cache, and runs the whole block's sweep on it with
vectorised loops over the rows: rows are independent within a block, so this is the same arithmetic
in the same order per row. Results equal the eager sweep's up to float32 rounding of the rank-1
updates (fused or not), and the N:M choice makes the same comparisons as ``masks.nm_lowest_by_column``.

numba is a dependency of the package; where it cannot be imported (or for GPU tensors)
``methods.obs`` runs the eager loop, which stays as the reference.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from ..mask_kernels import use_torch_threads

try:
    import numba
    from numba import njit, prange
except ImportError:  # pragma: no cover - numba is a declared dependency; this keeps the eager path usable
    numba = None

# Output rows per thread's buffer: (128 columns x 64 rows x 4 B) = 32 KiB, an L1/L2-sized tile.
_CHUNK = 64
# PRUNERZERO_OBS_SWEEP=eager forces the eager torch loop (A/B timing, debugging).
_ENV = "PRUNERZERO_OBS_SWEEP"


def available() -> bool:
    """Whether the compiled sweep can run here (numba importable and not switched off)."""
    return numba is not None and os.environ.get(_ENV, "compiled") != "eager"


if numba is not None:

    @njit(parallel=True, cache=True)
    def _sweep_kernel(w1t, hinv1, mask1t, err1t, m, n, choose):  # pragma: no cover - compiled
        b, out = w1t.shape
        for c in prange((out + _CHUNK - 1) // _CHUNK):
            r0 = c * _CHUNK
            wid = min(r0 + _CHUNK, out) - r0
            wl = np.zeros((b, _CHUNK), dtype=np.float32)  # this chunk of the block, (b, CH)
            el = np.zeros(_CHUNK, dtype=np.float32)  # the current column's error, (CH,)
            sal = np.zeros((max(m, 1), _CHUNK), dtype=np.float32)  # a group's saliency, (m, CH)
            rank = np.zeros(_CHUNK, dtype=np.int32)
            for j in range(b):
                for r in range(wid):
                    wl[j, r] = w1t[j, r0 + r]
            for i in range(b):
                if choose and i % m == 0:
                    # SparseGPT's w^2 / d^2 for the group's m columns, then each entry's rank in its
                    # group: entries ahead of it are lower, or equal and earlier (nm_lowest_by_column).
                    for k in range(m):
                        dk = hinv1[i + k, i + k]
                        dk2 = dk * dk
                        for r in range(_CHUNK):
                            v = wl[i + k, r]
                            sal[k, r] = v * v / dk2
                    for k in range(m):
                        for r in range(_CHUNK):
                            rank[r] = 0
                        for j in range(m):
                            if j < k:
                                for r in range(_CHUNK):
                                    rank[r] += sal[j, r] <= sal[k, r]
                            elif j > k:
                                for r in range(_CHUNK):
                                    rank[r] += sal[j, r] < sal[k, r]
                        for r in range(wid):
                            mask1t[i + k, r0 + r] = rank[r] < n
                # err = w / d where pruned (as w * (1/d), the eager sweep's rounding), 0 where kept.
                inv = np.float32(1.0) / hinv1[i, i]
                for r in range(wid):
                    el[r] = wl[i, r] * inv if mask1t[i, r0 + r] else np.float32(0.0)
                    err1t[i, r0 + r] = el[r]
                # Rank-1 update of column i and the rest of the block.
                for j in range(i, b):
                    h = hinv1[i, j]
                    row = wl[j]
                    for r in range(_CHUNK):
                        row[r] -= h * el[r]
            for j in range(b):
                for r in range(wid):
                    w1t[j, r0 + r] = wl[j, r]


def sweep_block(w1t: torch.Tensor, hinv1: torch.Tensor, mask1t: torch.Tensor, err1t: torch.Tensor,
                nm: tuple[int, int] | None) -> None:
    """Sweep one block in place: w1t (b, out) float32, hinv1 (b, b) float32 upper factor of the block,
    mask1t (b, out) bool (True = remove; filled group by group when `nm` = (n, m) is given, else read),
    err1t (b, out) float32 receives each column's error. All contiguous CPU tensors."""
    n, m = nm if nm is not None else (0, 1)
    use_torch_threads()
    _sweep_kernel(w1t.numpy(), hinv1.numpy(), mask1t.numpy(), err1t.numpy(), m, n, nm is not None)
