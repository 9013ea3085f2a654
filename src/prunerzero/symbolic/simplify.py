"""Value-exact simplification and a mask-level canonical key for metric trees.

``simplify(e)`` rewrites only where the value is kept *exactly* (real arithmetic, any sign
of W, protected semantics of ``primitives``) **and** the symbolic broadcast shape is kept
(scalar < X-like (1, in) < W-like (out, in)): ``div``, ``rown``, ``coln`` and ``zsn``
reduce over the shape at hand, so e.g. ``sub(W, W) -> 0`` would change ``coln(X + (W - W))``.

Included rules (x, y any subtrees; "x >= 0" from the sign analysis below):

* ``skp(x) -> x``; ``pow(x) -> sqr(x)`` (same function); ``neg(neg(x)) -> x``
* ``abs(abs x)``, ``abs(neg x) -> abs(x)``; ``abs(x) -> x`` when x >= 0 (so abs(sqr x) -> sqr x)
* ``sqr(neg x)``, ``sqr(abs x) -> sqr(x)``; ``sqrt(neg x)``, ``sqrt(abs x) -> sqrt(x)``;
  ``log(neg x)``, ``log(abs x) -> log(x)`` (both use |x|)
* ``sqrt(sqr x) -> abs(x)`` and ``sqr(sqrt x) -> abs(x)`` (sqrt takes |.|, so both exact)
* ``neg(sub(a, b)) -> sub(b, a)``; ``a + -b -> a - b``; ``-a + b -> b - a``; ``a - -b -> a + b``;
  ``-a * -b -> a * b``
* identities with constants: ``x + 0``, ``0 + x``, ``x - 0``, ``x * 1``, ``1 * x``,
  ``pdiv(x, 1) -> x``; ``0 - x``, ``x * -1``, ``-1 * x``, ``pdiv(x, -1) -> neg(x)``
* constant folding: any node whose children are all constants (computed in float32 by
  the same torch functions, kept only if finite).

Refused (not exact under the protected semantics):
``exp(log x)`` (= |x| + 1e-3), ``log(exp x)`` (= log(e^x + 1e-3)), ``sqrt(x) * sqrt(x)``
style products (= |x|), ``pdiv(x, x) -> 1`` (x/EPS near 0), ``div(x, x)`` (a norm, not 1),
``mms(mms x)``, ``zsn(zsn x)``, ``mms(a*x + b)`` (the EPS in the denominator makes them
approximate), ``sub(x, x) -> 0`` and ``x * 0 -> 0`` (they change the shape a later
``div``/``rown``/``coln``/``zsn`` reduces over, and inf - inf, inf * 0 are nan).

``canonical_key(e)`` = simplify, flatten and sort ``add``/``mul`` chains, fold their
constants, merge equal operands (``x + x -> x * 2``, ``x * x -> sqr(x)``), then strip outermost
strictly increasing maps, which keep every mask (masks keep the top scores per row, layer or N:M
group): skp, tanh, exp (valid scores are < 88.7 so the clamp at 100 never ties), mms, zsn
(positive global affine), ``div(x, y) -> x`` (divides by a positive scalar), + or - a constant,
* or pdiv by a positive constant, and sqrt, sqr, pow, abs, log of a provably non-negative
subexpression (of any x they are increasing in |x|, so they become ``abs(x)``).  ``c - x -> -x``, and ``-f(x) -> -x``
for any f above (a common outer ``neg`` reverses both rankings alike).  Equal keys imply
equal masks (in exact arithmetic, for metrics that are valid), not conversely.
"""
from __future__ import annotations

import math

import torch

from .expr import Node, const, format_expr
from .primitives import PRIMITIVES
from .terminals import TerminalSpec

_DEFAULT_SPEC = TerminalSpec()

# ----------------------------------------------------------------------------- analyses
POS, NONNEG, ANY = 2, 1, 0  # sign classes, ordered by strength


def sign_of(e: Node, spec: TerminalSpec = _DEFAULT_SPEC) -> int:
    """POS (> 0), NONNEG (>= 0) or ANY, for every terminal value allowed by ``spec``."""
    if e.op == "const":
        return POS if e.value > 0 else NONNEG if e.value == 0 else ANY  # type: ignore[operator]
    if not e.children:
        return NONNEG if e.op in spec.nonneg_terminals() else ANY
    s = [sign_of(c, spec) for c in e.children]
    op = e.op
    if op in ("sqr", "pow", "abs", "sqrt"):
        return POS if s[0] == POS else NONNEG
    if op == "exp":
        return POS
    if op in ("tanh", "skp", "rown", "coln"):  # sign-preserving (rown/coln divide by > 0)
        return s[0]
    if op == "mms":
        return NONNEG
    if op == "add":
        return max(s) if min(s) >= NONNEG else ANY
    if op == "mul":
        return min(s) if min(s) >= NONNEG else ANY
    if op == "div":  # x / positive scalar
        return s[0]
    if op == "pdiv":  # a y >= 0 is replaced by +EPS near 0, so the divisor is > 0
        return s[0] if s[1] >= NONNEG else ANY
    return ANY  # neg, log, zsn, sub


def shape_of(e: Node) -> int:
    """Symbolic broadcast shape: 0 scalar, 1 X-like (1, in), 2 W-like (out, in)."""
    if e.op == "const":
        return 0
    if not e.children:
        return 1 if e.op == "X" else 2
    return max(shape_of(c) for c in e.children)


# ----------------------------------------------------------------------------- simplify
def _is(e: Node, v: float) -> bool:
    return e.op == "const" and e.value == v


def _fold(e: Node) -> Node:
    vals = [torch.tensor(c.value, dtype=torch.float32) for c in e.children]
    with torch.no_grad():
        v = float(PRIMITIVES[e.op].fn(*vals))
    return const(v) if math.isfinite(v) else e


def _rewrite(e: Node, spec: TerminalSpec) -> Node:
    """One rule at the root of ``e`` (children already simplified), or ``e`` itself."""
    op, k = e.op, e.children
    if not k:
        return e
    if all(c.op == "const" for c in k):
        return _fold(e)
    a = k[0]
    if op == "skp":
        return a
    if op == "pow":
        return Node("sqr", k)
    if op == "neg":
        if a.op == "neg":
            return a.children[0]
        if a.op == "sub":
            return Node("sub", (a.children[1], a.children[0]))
    if op in ("abs", "sqr", "sqrt", "log") and a.op in ("neg", "abs"):
        return Node(op, a.children)
    if op == "abs" and sign_of(a, spec) >= 1:
        return a
    if (op, a.op) in (("sqrt", "sqr"), ("sqr", "sqrt")):
        return Node("abs", a.children)
    if len(k) == 2:
        b = k[1]
        if op == "add":
            if _is(b, 0):
                return a
            if _is(a, 0):
                return b
            if b.op == "neg":
                return Node("sub", (a, b.children[0]))
            if a.op == "neg":
                return Node("sub", (b, a.children[0]))
        if op == "sub":
            if _is(b, 0):
                return a
            if _is(a, 0):
                return Node("neg", (b,))
            if b.op == "neg":
                return Node("add", (a, b.children[0]))
        if op == "mul":
            for x, y in ((a, b), (b, a)):
                if _is(y, 1):
                    return x
                if _is(y, -1):
                    return Node("neg", (x,))
            if a.op == "neg" and b.op == "neg":
                return Node("mul", (a.children[0], b.children[0]))
        if op == "pdiv":
            if _is(b, 1):
                return a
            if _is(b, -1):
                return Node("neg", (a,))
    return e


def _simplify_once(e: Node, spec: TerminalSpec) -> Node:
    if e.children:
        e = Node(e.op, tuple(_simplify_once(c, spec) for c in e.children))
    while True:
        new = _rewrite(e, spec)
        if new == e or shape_of(new) != shape_of(e):  # never change the broadcast shape
            return e
        e = new


def simplify(expr: Node, spec: TerminalSpec = _DEFAULT_SPEC) -> Node:
    """An equal-valued, no larger tree; idempotent.  ``spec`` tells which terminals are >= 0."""
    while True:
        new = _simplify_once(expr, spec)
        if new == expr:
            return expr
        expr = new


# ----------------------------------------------------------------------------- canonical key
def _chain(e: Node, op: str) -> list[Node]:
    return _chain(e.children[0], op) + _chain(e.children[1], op) if e.op == op else [e]


def _merge_repeats(op: str, items: list[Node]) -> list[Node]:
    """Equal operands of one chain merged: ``x + x -> x * 2`` and ``x * x -> sqr(x)`` (both exact in
    floating point), so the search does not treat them as new metrics."""
    groups: dict[str, list[Node]] = {}
    for item in items:
        groups.setdefault(format_expr(item), []).append(item)
    out: list[Node] = []
    for same in groups.values():
        item, n = same[0], len(same)
        if n == 1:
            out.append(item)
        elif op == "add":
            out.append(_sorted_chain("mul", _chain(item, "mul") + [const(float(n))]))
        else:
            out += [Node("sqr", (item,))] * (n // 2) + [item] * (n % 2)
    return out


def _sorted_chain(op: str, items: list[Node]) -> Node:
    consts = [c.value for c in items if c.op == "const"]
    rest = sorted(_merge_repeats(op, [c for c in items if c.op != "const"]), key=format_expr)
    total = math.fsum(consts) if op == "add" else math.prod(consts)  # type: ignore[arg-type]
    if consts and total != (0.0 if op == "add" else 1.0) or not rest:
        rest.append(const(total))
    out = rest[0]
    for c in rest[1:]:
        out = Node(op, (out, c))
    return out


def _canon(e: Node) -> Node:
    """Children canonical; add/mul chains flattened, constants folded, operands sorted."""
    if not e.children:
        return e
    if e.op in ("add", "mul"):
        new = _sorted_chain(e.op, [_canon(c) for c in _chain(e, e.op)])
        return new if shape_of(new) == shape_of(e) else Node(e.op, tuple(_canon(c) for c in e.children))
    return Node(e.op, tuple(_canon(c) for c in e.children))


def _strip(e: Node, spec: TerminalSpec) -> Node:
    """``e`` without one outermost strictly increasing map, or ``e`` itself."""
    op, k = e.op, e.children
    if op in ("skp", "tanh", "exp", "mms", "zsn", "div"):
        return k[0]
    if op in ("sqrt", "sqr", "pow", "abs", "log") and sign_of(k[0], spec) >= NONNEG:
        return k[0]
    if op in ("sqrt", "sqr", "pow", "log"):  # each is a strictly increasing function of |x|
        return Node("abs", k)
    if op in ("add", "mul"):
        items = _chain(e, op)
        keep = [c for c in items if not (c.op == "const" and (op == "add" or c.value > 0))]  # type: ignore[operator]
        if keep and len(keep) < len(items):
            return _sorted_chain(op, keep)
    if op == "sub" and k[1].op == "const":
        return k[0]
    if op == "sub" and k[0].op == "const":
        return Node("neg", (k[1],))
    if op == "pdiv" and k[1].op == "const" and k[1].value >= 0:  # type: ignore[operator]
        return k[0]
    if op == "neg":
        inner = _strip(k[0], spec)
        return e if inner == k[0] else Node("neg", (inner,))
    return e


def canonical_form(expr: Node, spec: TerminalSpec = _DEFAULT_SPEC) -> Node:
    """A tree giving the same masks as ``expr`` (see module docstring); canonical_key prints it."""
    e = _normal(expr, spec)
    while True:
        new = _strip(e, spec)
        if new == e:
            return e
        e = _normal(new, spec)


def _normal(e: Node, spec: TerminalSpec) -> Node:
    """Fixpoint of simplify + chain canonicalisation (sorting can expose new rewrites)."""
    for _ in range(100):  # each round shrinks or keeps the tree; 100 is a safety net
        new = _canon(simplify(e, spec))
        if new == e:
            break
        e = new
    return e


def canonical_key(expr: Node, spec: TerminalSpec = _DEFAULT_SPEC) -> str:
    """Equal for metrics that always give the same masks (the converse need not hold)."""
    return format_expr(canonical_form(expr, spec))
