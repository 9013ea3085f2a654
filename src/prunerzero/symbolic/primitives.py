"""The one table of primitives of the metric language, and their exact torch semantics.

Every primitive takes and returns float32 tensors that broadcast against each other:
W and G are (out, in), X is (1, in), a numeric constant is a 0-d tensor.  The
reducing primitives (``mms``, ``zsn``, ``div``, ``rown``, ``coln``) reduce over the
tensor *as it is at that point* (so ``coln(X)`` sums a (1, in) tensor over dim 0).

Semantics follow Pruner-Zero's ``lib/gptree.py`` (eps-protected where it divides):

=======  =====  ==========================================================================
name     arity  value
=======  =====  ==========================================================================
sqr      1      x * x
neg      1      -x
abs      1      |x|
log      1      log(|x| + 1e-3)
exp      1      exp(min(x, 100))    (float32 overflows past ~88.7 -> inf -> invalid metric)
sqrt     1      sqrt(|x|)
tanh     1      tanh(x)
pow      1      x ** 2              (same as sqr, as in Pruner-Zero)
skp      1      x                   (identity, "skip")
mms      1      (x - min x) / (max x - min x + EPS)            over the whole tensor
zsn      1      (x - mean x) / (std x + EPS)   unbiased std over the whole tensor (0 if 1 elt)
rown     1      x / max(sum_j |x[i, j]|, EPS)  row sum (last dim, keepdim)
coln     1      x / max(sum_i |x[i, j]|, EPS)  column sum (dim 0, keepdim)
add      2      x + y
sub      2      x - y
mul      2      x * y
div      2      x / max(||y||_F, EPS)  Frobenius norm of y broadcast to x's shape (Pruner-Zero)
pdiv     2      x / y where |y| > EPS, else x / (EPS * s), s = -1 if y < 0 else +1
=======  =====  ==========================================================================

``EPS = 1e-8``.  In the infix form ``+ - * /`` are add, sub, mul and **pdiv**.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor

from ..errors import UserError

if TYPE_CHECKING:
    from .expr import Node

EPS = 1e-8
LOG_EPS = 1e-3
EXP_CLAMP = 100.0
# A score ranks weights only if ties are rare: when one value is shared by more than this share of
# a row's non-zero weights (W / W scores every non-zero weight 1), position, not the score, picks
# the mask. Magnitude on SmolLM2's dequantised 4-bit weights ties at most 3% of a row (checked on
# every linear); wanda, gblm, ria and pruner-zero at 0.3% (a row's single median entry).
MAX_TIE_SHARE = 0.5
TIE_ROWS = 32  # rows sampled per score tensor: degenerate formulas tie in every row, so a sample finds them


@dataclass(frozen=True)
class Primitive:
    """One operator: ``name`` in trees/JSON, ``symbol`` its infix operator if it has one."""

    name: str
    arity: int
    fn: Callable[..., Tensor]
    doc: str
    symbol: str | None = None


def _log(x: Tensor) -> Tensor:
    return torch.log(x.abs() + LOG_EPS)


def _exp(x: Tensor) -> Tensor:
    return torch.exp(x.clamp(max=EXP_CLAMP))


def _mms(x: Tensor) -> Tensor:
    lo, hi = torch.aminmax(x)  # scalars over the whole tensor, one pass (NaN propagates as in min / max)
    return (x - lo) / (hi - lo + EPS)


def _zsn(x: Tensor) -> Tensor:
    std = x.std() if x.numel() > 1 else torch.zeros((), dtype=x.dtype, device=x.device)
    return (x - x.mean()) / (std + EPS)


def _rown(x: Tensor) -> Tensor:
    if x.dim() == 0:  # a scalar is its own (only) row
        return x / x.abs().clamp_min(EPS)
    return x / x.abs().sum(dim=-1, keepdim=True).clamp_min(EPS)  # (out, 1) or (1, 1)


def _coln(x: Tensor) -> Tensor:
    if x.dim() == 0:
        return x / x.abs().clamp_min(EPS)
    return x / x.abs().sum(dim=0, keepdim=True).clamp_min(EPS)  # (1, in)


def _div(x: Tensor, y: Tensor) -> Tensor:
    xb, yb = torch.broadcast_tensors(x, y)  # Pruner-Zero takes the norm of the broadcast y
    return xb / torch.linalg.vector_norm(yb).clamp_min(EPS)


def _pdiv(x: Tensor, y: Tensor) -> Tensor:
    small = torch.where(y < 0, -EPS, EPS).to(y.dtype)
    # `y.abs() <= EPS` is False for NaN, so a NaN divisor still propagates.
    return x / torch.where(y.abs() <= EPS, small, y)


def _table(*prims: Primitive) -> dict[str, Primitive]:
    return {p.name: p for p in prims}


PRIMITIVES: dict[str, Primitive] = _table(
    Primitive("sqr", 1, lambda x: x * x, "x^2"),
    Primitive("neg", 1, torch.neg, "-x", symbol="-"),
    Primitive("abs", 1, torch.abs, "|x|"),
    Primitive("log", 1, _log, "log(|x| + 1e-3)"),
    Primitive("exp", 1, _exp, "exp(min(x, 100))"),
    Primitive("sqrt", 1, lambda x: torch.sqrt(x.abs()), "sqrt(|x|)"),
    Primitive("tanh", 1, torch.tanh, "tanh(x)"),
    Primitive("pow", 1, lambda x: torch.pow(x, 2), "x^2 (as sqr)"),
    Primitive("skp", 1, lambda x: x, "identity"),
    Primitive("mms", 1, _mms, "min-max scale over the tensor"),
    Primitive("zsn", 1, _zsn, "z-score over the tensor"),
    Primitive("rown", 1, _rown, "x / row sum of |x|"),
    Primitive("coln", 1, _coln, "x / column sum of |x|"),
    Primitive("add", 2, torch.add, "x + y", symbol="+"),
    Primitive("sub", 2, torch.sub, "x - y", symbol="-"),
    Primitive("mul", 2, torch.mul, "x * y", symbol="*"),
    Primitive("div", 2, _div, "x / ||y||_F"),
    Primitive("pdiv", 2, _pdiv, "x / y, protected", symbol="/"),
)

UNARY: tuple[str, ...] = tuple(n for n, p in PRIMITIVES.items() if p.arity == 1)
BINARY: tuple[str, ...] = tuple(n for n, p in PRIMITIVES.items() if p.arity == 2)
# Pruner-Zero's own function set (the default GP search space).
PRUNER_ZERO_OPS: tuple[str, ...] = (
    "sqr", "neg", "abs", "log", "exp", "sqrt", "tanh", "pow", "skp", "mms", "zsn",
    "add", "sub", "mul", "div",
)
COMMUTATIVE: frozenset[str] = frozenset({"add", "mul"})


# ----------------------------------------------------------------------------- evaluation
class InvalidMetricError(Exception):
    """A metric whose scores cannot rank weights; ``reason`` is short ("nan", "inf", ...)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"invalid metric: {reason}")
        self.reason = reason


def _run(node: "Node", env: dict[str, Tensor], dev: torch.device) -> Tensor:
    if node.op == "const":
        return torch.tensor(node.value, dtype=torch.float32, device=dev)  # 0-d
    if not node.children:
        if node.op not in env:
            raise UserError(f"the metric uses terminal {node.op} but it was not given (got {', '.join(sorted(env))})")
        return env[node.op]
    return PRIMITIVES[node.op].fn(*(_run(c, env, dev) for c in node.children))


def evaluate(expr: "Node", terminals: dict[str, Tensor], validate: bool = True) -> Tensor:
    """Scores of shape W.shape (out, in), float32, on W's device; raises InvalidMetricError.

    ``terminals`` must hold "W" (it fixes the shape even if the formula does not use it)
    and every other terminal the formula uses (see ``prepare_terminals``).
    ``validate=False`` keeps only the shape and nan / inf checks, not constant and ties: for scoring
    the same weights again after a checked call (the OBS sweep rescores a column block once per N:M
    group, 32 times per block at 2:4, and the full checks cost about 20x the formula there).
    """
    if "W" not in terminals:
        raise UserError("evaluate needs terminals['W'] (it fixes the score shape)")
    dev = terminals["W"].device
    env = {k: v.to(dev, torch.float32) for k, v in terminals.items()}
    shape = env["W"].shape  # (out, in)
    try:
        with torch.no_grad():
            out = _run(expr, env, dev)
            if out.shape != shape:
                try:
                    ok = torch.broadcast_shapes(out.shape, shape) == shape
                except RuntimeError:
                    ok = False
                if not ok:
                    raise InvalidMetricError(f"shape {tuple(out.shape)} does not broadcast to {tuple(shape)}")
            if validate:
                # One pass for the finiteness and constant checks: min and max propagate NaN, so both
                # finite means every score is finite.
                low, high = torch.aminmax(out) if out.numel() else (out.new_zeros(()), out.new_zeros(()))
                if not bool(torch.isfinite(low) & torch.isfinite(high)):
                    raise InvalidMetricError("nan" if torch.isnan(out).any() else "inf")
                _check_ranks(out.expand(shape), env["W"], bool(low == high))
            # A finite sum means every score is finite (a nan or inf would make it nan or inf), at a
            # fraction of isfinite's cost; only a sum that overflows needs the per-element check.
            elif not bool(torch.isfinite(out.sum())) and not bool(torch.isfinite(out).all()):
                raise InvalidMetricError("nan" if torch.isnan(out).any() else "inf")
    except (InvalidMetricError, UserError, KeyboardInterrupt):
        raise
    except Exception as exc:  # torch errors (e.g. out of memory) become invalid metrics
        raise InvalidMetricError(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    if any(out is t for t in env.values()) or any(out is t for t in terminals.values()):
        out = out.clone()  # never hand back a caller's tensor: callers may edit scores in place
    # (out, in): a broadcast result is copied out (callers may write into it); a full one is returned
    # in whatever layout it has (the OBS sweep scores a transposed block: no copy back)
    return out if out.shape == shape else out.expand(shape).contiguous()


def _check_ranks(scores: Tensor, weight: Tensor, constant: bool) -> None:
    """InvalidMetricError unless scores (out, in) can rank the weights (out, in): not `constant` (its
    minimum equals its maximum), and not mostly one tie per row."""
    if scores.numel() == 0 or constant:
        raise InvalidMetricError("constant")
    share = tie_share(scores, weight)
    if share > MAX_TIE_SHARE:
        raise InvalidMetricError(f"ties: {share:.0%} of the weights share one score value with most of their "
                                 "row, so position, not the score, would choose the mask")


def tie_share(scores: Tensor, weight: Tensor, rows: int = TIE_ROWS) -> float:
    """Share of the non-zero weights, in up to ``rows`` evenly spaced rows, whose score equals the
    median score of their row. A value held by more than half of a row is that row's median, so a
    share above 0.5 means some rows are mostly one tie. Zero weights are left out: ties among
    already pruned weights (a pruned model pruned again) decide nothing.  scores, weight: (out, in)."""
    n = scores.shape[0]
    idx = torch.linspace(0, n - 1, steps=min(n, rows), device=scores.device).round().long().unique()
    s, nonzero = scores[idx], weight[idx] != 0  # (r, in)
    total = int(nonzero.sum())
    if total == 0:
        return 0.0
    median = torch.nanmedian(torch.where(nonzero, s, torch.nan), dim=-1, keepdim=True).values  # (r, 1)
    return int(((s == median) & nonzero).sum()) / total


def check(expr: "Node", terminals: dict[str, Tensor]) -> str | None:
    """The reason ``evaluate`` would reject ``expr`` on these terminals, or None if valid."""
    try:
        evaluate(expr, terminals)
    except InvalidMetricError as exc:
        return exc.reason
    return None
