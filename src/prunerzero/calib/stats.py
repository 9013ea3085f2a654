"""Activation statistics of linear-layer inputs, accumulated by forward hooks.

  X: per-input-channel mean of x^2 over all calibration tokens, shape (in,)  (Wanda's ||X||^2
     up to a constant factor that changes no per-row or per-layer ranking)
  H: the Hessian proxy X^T X / tokens, shape (in, in)  (SparseGPT; damping is relative, so the
     normalisation does not matter)
Linears fed by the same tensor (q/k/v, gate/up) share one accumulator: the work is done once.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Mapping

import torch
from torch import nn


# Full linear name ("model.layers.0.self_attn.q_proj") -> (grad_l1, grad_l2), each (out, in).
# A dict in memory, or calib.gradients.files.GradientFile: read from disk one linear at a time.
GradientStats = Mapping[str, tuple[torch.Tensor, torch.Tensor]]


@dataclass
class LinearStats:
    """Everything a method may read about one linear layer."""

    x_mean_sq: torch.Tensor | None = None  # (in,)
    hessian: torch.Tensor | None = None  # (in, in)
    grad_l1: torch.Tensor | None = None  # (out, in)
    grad_l2: torch.Tensor | None = None  # (out, in)

    def to(self, device: str | torch.device) -> "LinearStats":
        """A copy with every statistic on `device` (float32 kept)."""
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return LinearStats(move(self.x_mean_sq), move(self.hessian), move(self.grad_l1), move(self.grad_l2))

    def columns(self, cols: slice) -> "LinearStats":
        """The statistics of input columns `cols` only (what a metric sees of one column block)."""
        return LinearStats(
            x_mean_sq=None if self.x_mean_sq is None else self.x_mean_sq[cols],
            hessian=None if self.hessian is None else self.hessian[cols, cols],
            grad_l1=None if self.grad_l1 is None else self.grad_l1[:, cols],
            grad_l2=None if self.grad_l2 is None else self.grad_l2[:, cols],
        )


def attach_gradients(stats: dict[str, LinearStats], grads: GradientStats) -> dict[str, LinearStats]:
    """G into the statistics of the same linears, in place (linears ``stats`` lacks are skipped);
    returns ``stats``. ``grads`` is read once per linear (a GradientFile reads each from disk)."""
    for name, (l1, l2) in grads.items():
        if name in stats:
            stats[name].grad_l1, stats[name].grad_l2 = l1, l2
    return stats


# Columns per slice when summing x^2: a slice's float32 square is the only temporary, (tokens, 256),
# instead of a float32 copy of the whole input (100 MB for a 16k-token MLP input of width 1536, and
# twice the input itself when it is bfloat16). Slices of 256 columns reduce in the same order as the
# whole tensor on CPU, so X is the same to the last bit (tested). The slices share one buffer: a
# fresh 16 MB tensor per slice cost more in page faults than the arithmetic (2.5 s of a 28 s Wanda
# prune of SmolLM2; 3x less with the buffer).
SUM_SQ_COLUMNS = 256


def sum_of_squares(x: torch.Tensor) -> torch.Tensor:
    """(tokens, in) any float dtype -> (in,) float32: the sum over tokens of x^2, a column slice at a time."""
    tokens, width = x.shape
    out = torch.empty(width, dtype=torch.float32, device=x.device)
    buffer = torch.empty(tokens, min(width, SUM_SQ_COLUMNS), dtype=torch.float32, device=x.device)
    for c in range(0, width, SUM_SQ_COLUMNS):
        part = x[:, c : c + SUM_SQ_COLUMNS]  # (tokens, <=256)
        square = buffer[:, : part.shape[1]]
        if part.dtype == torch.float32:
            torch.mul(part, part, out=square)
        else:  # square in float32, as .float().pow(2) would: a bf16 product would round first
            square.copy_(part)
            square.mul_(square)
        torch.sum(square, 0, out=out[c : c + part.shape[1]])
    return out


# Column block of the Gram matrix's products: X^T X is symmetric, so only the blocks on and above
# the diagonal are multiplied and the rest mirrored. With 2-4 blocks that is 21-28% less time for
# SmolLM2's 576- and 1536-wide inputs on CPU (a quarter of SparseGPT's statistics). Each block equals
# the full product's up to float32 rounding (tested), to the bit where the BLAS kernel sums the tokens
# in the same order for both shapes (one Xeon did, another did not); the mirror keeps H exactly symmetric.
GRAM_BLOCK = 384
GRAM_MIN_WIDTH = 256  # narrower inputs (tiny test models) take one product: blocks would only add calls


def gram(x: torch.Tensor) -> torch.Tensor:
    """(tokens, in) float -> (in, in) = x^T x, from the upper blocks only."""
    width = x.shape[1]
    if width < GRAM_MIN_WIDTH:
        return x.t() @ x
    blocks = max(2, -(-width // GRAM_BLOCK))  # ceil(width / GRAM_BLOCK), at least 2
    block = -(-width // blocks)  # columns per block
    out = torch.empty(width, width, dtype=x.dtype, device=x.device)
    for i in range(0, width, block):
        left = x[:, i : i + block]  # (tokens, b)
        for j in range(i, width, block):
            upper = out[i : i + block, j : j + block]
            torch.mm(left.t(), x[:, j : j + block], out=upper)
            if j > i:
                out[j : j + block, i : i + block] = upper.t()
    return out


class InputAccumulator:
    """Running sums over the tokens that enter one linear layer."""

    def __init__(self, want_x: bool, want_h: bool) -> None:
        self.want_x, self.want_h = want_x, want_h
        self.tokens = 0
        self.sum_sq: torch.Tensor | None = None  # (in,)
        self.gram: torch.Tensor | None = None  # (in, in)
        # (X, H) as finalize last returned them: linears sharing this accumulator (q/k/v) get the
        # very same tensors, so a method can tell they share H (SparseGPT factorises it once).
        self._final: tuple[torch.Tensor | None, torch.Tensor | None] | None = None

    def update(self, x: torch.Tensor) -> None:
        self._final = None
        x = x.reshape(-1, x.shape[-1])  # (tokens, in); sums are float32 whatever the model's dtype
        self.tokens += x.shape[0]
        if self.want_x:
            part = sum_of_squares(x)
            self.sum_sq = part if self.sum_sq is None else self.sum_sq.add_(part)
        if self.want_h:
            part = gram(x.float())
            self.gram = part if self.gram is None else self.gram.add_(part)

    def finalize(self) -> LinearStats:
        """A new LinearStats per call (callers attach G to it), holding X and H shared between calls."""
        if self._final is None:
            n = max(self.tokens, 1)
            self._final = (None if self.sum_sq is None else self.sum_sq / n,
                           None if self.gram is None else self.gram / n)
        return LinearStats(x_mean_sq=self._final[0], hessian=self._final[1])


class StatsCollector:
    """Accumulators per linear, shared between linears that see the very same input tensor.

    q/k/v (and gate/up) are fed one tensor object, one call after another; the first linear to see
    it owns the accumulator and its siblings reuse it, so the work is done once. Tensors are compared
    by identity with a reference kept alive, not by id(): ids of freed tensors are reused. Only the
    last input is kept: holding every owner's input kept each of them alive until the layer ended
    (about 200 MB per layer at 16k calibration tokens on SmolLM2). A sibling called after some other
    linear would get an accumulator of its own: the same numbers, computed twice.
    `batch` names the calibration batch a call comes from when batches run a layer interleaved
    (calib/lockstep.py): each keeps its own last input, so q/k/v still share one accumulator.
    """

    def __init__(self, needs: frozenset[str]) -> None:
        self.want_x, self.want_h = "X" in needs, "H" in needs
        self.accumulators: dict[str, InputAccumulator] = {}
        self._owner: dict[str, str] = {}
        self._last: dict[int, tuple[str, torch.Tensor]] = {}  # batch -> (owner, the tensor it last consumed)

    @property
    def active(self) -> bool:
        return self.want_x or self.want_h

    def observe(self, name: str, x: torch.Tensor, batch: int = 0) -> None:
        if name not in self._owner:
            last = self._last.get(batch)
            twin = last[0] if last is not None and last[1] is x else None
            self._owner[name] = twin or name
            self.accumulators[name] = self.accumulators[twin] if twin else InputAccumulator(self.want_x, self.want_h)
        if self._owner[name] == name:
            self.accumulators[name].update(x.detach())
            self._last[batch] = (name, x)

    def stats(self, name: str) -> LinearStats:
        return self.accumulators[name].finalize() if name in self.accumulators else LinearStats()


@contextmanager
def collect_input_stats(linears: dict[str, nn.Module], needs: frozenset[str]) -> Iterator[StatsCollector]:
    """Hook `linears` while the caller runs forward passes; yields the collector."""
    collector = StatsCollector(needs)

    def hook(name: str):
        def fn(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            collector.observe(name, args[0])

        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in linears.items()] if collector.active else []
    try:
        yield collector
    finally:
        for h in handles:
            h.remove()
