"""simplify keeps values; canonical_key keeps masks (top scores per row and per layer)."""
from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given

from prunerzero.symbolic import (
    PRIMITIVES,
    Node,
    TerminalSpec,
    canonical_form,
    canonical_key,
    check,
    evaluate,
    parse,
    prepare_terminals,
    shape_of,
    simplify,
    size,
)

try:  # works whether or not tests/ is a package
    from .test_symbolic_expr import FAST, trees
except ImportError:
    from test_symbolic_expr import FAST, trees

ABS, SIGNED = TerminalSpec(), TerminalSpec(w="signed")
OUT, IN = 6, 10
K = IN // 2


def make_terms(spec: TerminalSpec, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(OUT, IN, generator=gen)  # no ties
    x = torch.rand(IN, generator=gen) + 0.05
    g = torch.rand(OUT, IN, generator=gen) * 0.02 + 1e-3
    return prepare_terminals(spec, w, x_mean_sq=x, grad_l2=g)


TERMS = {ABS: make_terms(ABS), SIGNED: make_terms(SIGNED)}


def raw(e: Node, t: dict[str, torch.Tensor]) -> torch.Tensor:
    """Plain evaluation without validity checks, keeping the natural broadcast shape."""
    if e.op == "const":
        return torch.tensor(e.value, dtype=torch.float32)
    if not e.children:
        return t[e.op]
    return PRIMITIVES[e.op].fn(*(raw(c, t) for c in e.children))


def assert_same_values(a: Node, b: Node, spec: TerminalSpec) -> None:
    va, vb = raw(a, TERMS[spec]), raw(b, TERMS[spec])
    assert va.shape == vb.shape, (str(a), str(b))
    scale = 1.0 + float(va.abs().max())
    assert torch.allclose(va, vb, rtol=1e-4, atol=1e-5 * scale), (str(a), str(b))


# ----------------------------------------------------------------------------- simplify rules
RULES = [  # (before, after, spec): every included rule, checked for the tree and the values
    ("skp(W)", "W", SIGNED), ("pow(W)", "sqr(W)", SIGNED), ("neg(neg(W))", "W", SIGNED),
    ("abs(abs(W))", "abs(W)", SIGNED), ("abs(-W)", "abs(W)", SIGNED), ("abs(sqr(W))", "sqr(W)", SIGNED),
    ("sqr(-W)", "sqr(W)", SIGNED), ("sqr(abs(W))", "sqr(W)", SIGNED), ("pow(-W)", "sqr(W)", SIGNED),
    ("sqrt(-W)", "sqrt(W)", SIGNED), ("sqrt(abs(W))", "sqrt(W)", SIGNED),
    ("log(-W)", "log(W)", SIGNED), ("log(abs(W))", "log(W)", SIGNED),
    ("sqrt(sqr(W))", "abs(W)", SIGNED), ("sqr(sqrt(W))", "abs(W)", SIGNED), ("sqrt(pow(W))", "abs(W)", SIGNED),
    ("-(W - G)", "G - W", SIGNED), ("W + -G", "W - G", SIGNED), ("-W + G", "G - W", SIGNED),
    ("W - -G", "W + G", SIGNED), ("-W * -G", "W * G", SIGNED),
    ("W + 0", "W", SIGNED), ("0 + W", "W", SIGNED), ("W - 0", "W", SIGNED), ("W * 1", "W", SIGNED),
    ("1 * W", "W", SIGNED), ("W / 1", "W", SIGNED), ("0 - W", "-W", SIGNED), ("W * -1", "-W", SIGNED),
    ("-1 * W", "-W", SIGNED), ("W / -1", "-W", SIGNED),
    ("2 * 3 + W", "6 + W", SIGNED), ("sqrt(4) * W", "2 * W", SIGNED), ("W * (1 - 1)", "W * 0", SIGNED),
    ("abs(W)", "W", ABS), ("abs(mms(W))", "mms(W)", SIGNED), ("abs(exp(W))", "exp(W)", SIGNED),
    ("abs(X * G)", "X * G", SIGNED), ("sqrt(sqr(W))", "W", ABS), ("abs(W / X)", "abs(W / X)", SIGNED),
    ("X + (W - W) * 0", "X + (W - W) * 0", SIGNED),
]
REFUSED = [
    "exp(log(W))", "log(exp(W))", "W / W", "div(W, W)", "mms(mms(W))", "zsn(zsn(W))", "W - W", "W * 0",
    "mms(2 * W + 1)", "coln(X + (W - W))", "coln(X + 0 * W)", "sqrt(W) * sqrt(W)", "abs(W)", "tanh(-W)",
]


@pytest.mark.parametrize("before, after, spec", RULES)
def test_each_rule_keeps_values(before: str, after: str, spec: TerminalSpec) -> None:
    e = parse(before)
    assert simplify(e, spec) == parse(after)
    assert_same_values(e, simplify(e, spec), spec)


@pytest.mark.parametrize("formula", REFUSED)
def test_refused_rules_leave_tree_alone(formula: str) -> None:
    assert simplify(parse(formula), SIGNED) == parse(formula)


def test_exp_log_is_not_identity() -> None:  # why the rule is refused: |x| + 1e-3
    assert not torch.allclose(raw(parse("exp(log(W))"), TERMS[SIGNED]), TERMS[SIGNED]["W"])


@FAST
@given(trees(any_floats=False, max_leaves=8))
def test_simplify_keeps_values_shape_and_is_idempotent(e: Node) -> None:
    for spec in (SIGNED, ABS):
        s = simplify(e, spec)
        assert simplify(s, spec) == s
        assert size(s) <= size(e) and shape_of(s) == shape_of(e)
        va = raw(e, TERMS[spec])
        assume(bool(va.isfinite().all()) and float(va.abs().max()) < 1e6)
        assert_same_values(e, s, spec)


# ----------------------------------------------------------------------------- canonical key
def top_mask(s: torch.Tensor, per_row: bool) -> torch.Tensor:
    flat = s if per_row else s.reshape(1, -1)
    k = flat.shape[1] // 2
    mask = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, flat.topk(k, dim=1).indices, True)
    return mask.reshape(s.shape)


def clear_boundary(s: torch.Tensor, per_row: bool) -> bool:
    """No near-tie at the keep/prune boundary, so float rounding cannot flip the mask."""
    flat = (s if per_row else s.reshape(1, -1)).sort(dim=1, descending=True).values
    k = flat.shape[1] // 2
    gap = flat[:, k - 1] - flat[:, k]
    return bool((gap > 1e-3 * (flat[:, 0] - flat[:, -1])).all())


def assert_same_masks(a: Node, b: Node, spec: TerminalSpec) -> None:
    sa, sb = evaluate(a, TERMS[spec]), evaluate(b, TERMS[spec])
    for per_row in (True, False):
        if clear_boundary(sa, per_row) and clear_boundary(sb, per_row):
            assert torch.equal(top_mask(sa, per_row), top_mask(sb, per_row)), (str(a), str(b), per_row)


SAME_KEY = [
    ("W * X", "X * W", ABS), ("mms(W * X)", "W * X", ABS), ("tanh(W * X) + 3", "X * W", ABS),
    ("2 * W * X", "W * X", ABS), ("W * X / 2", "W * X", ABS), ("div(W * X, G)", "W * X", ABS),
    ("sqrt(W * X)", "W * X", ABS), ("log(X * W)", "W * X", ABS), ("exp(W * X)", "X * W", ABS),
    ("zsn(W * X) - 5", "W * X", ABS), ("sqr(W)", "W", ABS), ("pow(abs(W))", "W", ABS), ("sqr(W)", "abs(W)", SIGNED), ("log(-W)", "sqrt(W)", SIGNED),
    ("abs(W)", "W", ABS), ("3 - W", "-W", SIGNED), ("-mms(W)", "-W", SIGNED), ("W + X + G", "G + (X + W)", SIGNED),
    ("abs(W * W) * mms(G)", "mms(G) * (W * W)", ABS), ("sqrt(sqr(W) * X)", "sqr(W) * X", SIGNED),
    ("2 * (W + 1)", "W", SIGNED), ("-(3 - W)", "W", SIGNED), ("skp(W + 0)", "W", SIGNED),
    ("W + W", "W", SIGNED), ("W * X + X * W", "W * X", SIGNED), ("W * W * X", "sqr(W) * X", SIGNED),
    ("abs(W * W) * mms(G)", "sqr(W) * mms(G)", SIGNED), ("2 * W + W * 2 + G", "W * 4 + G", SIGNED),
]
DIFFERENT_KEY = [("W", "-W", SIGNED), ("sqr(W)", "W", SIGNED), ("rown(W)", "W", ABS), ("W * X", "W + X", ABS),
                 ("sqrt(W)", "W", SIGNED), ("-2 * W", "W", SIGNED), ("W / -2", "W", SIGNED),
                 ("W + W + G", "W + G", SIGNED), ("W * W * X", "W * X", SIGNED)]


@pytest.mark.parametrize("a, b, spec", SAME_KEY)
def test_rank_equivalent_metrics_share_a_key(a: str, b: str, spec: TerminalSpec) -> None:
    ea, eb = parse(a), parse(b)
    assert canonical_key(ea, spec) == canonical_key(eb, spec)
    assert_same_masks(ea, eb, spec)
    assert_same_masks(ea, canonical_form(ea, spec), spec)


@pytest.mark.parametrize("a, b, spec", DIFFERENT_KEY)
def test_different_metrics_keep_different_keys(a: str, b: str, spec: TerminalSpec) -> None:
    assert canonical_key(parse(a), spec) != canonical_key(parse(b), spec)


@FAST
@given(trees(any_floats=False, max_leaves=8))
def test_canonical_form_keeps_masks(e: Node) -> None:
    for spec in (ABS, SIGNED):
        c = canonical_form(e, spec)
        assert canonical_form(c, spec) == c
        assert canonical_key(c, spec) == canonical_key(e, spec)
        if check(e, TERMS[spec]) is None and check(c, TERMS[spec]) is None:
            assert_same_masks(e, c, spec)
