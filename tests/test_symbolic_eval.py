"""Primitive semantics, evaluation and its validity checks, terminal specs."""
from __future__ import annotations

import math

import pytest
import torch

from prunerzero.errors import UserError
from prunerzero.symbolic import (
    EPS,
    PRIMITIVES,
    PRUNER_ZERO_OPS,
    InvalidMetricError,
    TerminalSpec,
    check,
    evaluate,
    parse,
    prepare_terminals,
)

OUT, IN = 4, 8


@pytest.fixture()
def terms() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(OUT, IN, generator=gen)
    x = torch.rand(IN, generator=gen) + 0.1
    g = torch.rand(OUT, IN, generator=gen) * 1e-2
    return prepare_terminals(TerminalSpec(w="signed"), w, x_mean_sq=x, grad_l2=g)


def test_one_table_has_pruner_zero_set_and_extras() -> None:
    assert set(PRUNER_ZERO_OPS) <= set(PRIMITIVES)
    assert {"pdiv", "rown", "coln"} <= set(PRIMITIVES)
    assert {p.name: p.arity for p in PRIMITIVES.values() if p.arity == 2} == {
        "add": 2, "sub": 2, "mul": 2, "div": 2, "pdiv": 2}


def test_unary_semantics(terms: dict[str, torch.Tensor]) -> None:
    w = terms["W"]  # signed (4, 8)
    expected = {
        "sqr": w * w, "neg": -w, "abs": w.abs(), "log": torch.log(w.abs() + 1e-3), "exp": torch.exp(w),
        "sqrt": w.abs().sqrt(), "tanh": torch.tanh(w), "pow": w**2, "skp": w,
        "mms": (w - w.min()) / (w.max() - w.min() + EPS), "zsn": (w - w.mean()) / (w.std() + EPS),
        "rown": w / w.abs().sum(1, keepdim=True), "coln": w / w.abs().sum(0, keepdim=True),
    }
    assert set(expected) == {n for n, p in PRIMITIVES.items() if p.arity == 1}
    for name, want in expected.items():
        got = evaluate(parse(f"{name}(W)"), terms)
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-6), name


def test_binary_semantics(terms: dict[str, torch.Tensor]) -> None:
    w, g, x = terms["W"], terms["G"], terms["X"]
    assert torch.allclose(evaluate(parse("add(W, X)"), terms), w + x)
    assert torch.allclose(evaluate(parse("sub(W, G)"), terms), w - g)
    assert torch.allclose(evaluate(parse("mul(W, X)"), terms), w * x)
    assert torch.allclose(evaluate(parse("W / X"), terms), w / x)
    # Pruner-Zero's div: divide by the Frobenius norm of the divisor broadcast to the result shape.
    assert torch.allclose(evaluate(parse("div(W, G)"), terms), w / g.norm())
    assert torch.allclose(evaluate(parse("div(W, X)"), terms), w / x.expand(OUT, IN).norm())


def test_protected_semantics() -> None:
    w = torch.tensor([[1.0, -2.0, 3.0, 0.5]])
    ys = torch.tensor([[0.0, 1e-9, -1e-9, -2.0]])
    t = {"W": w, "G": ys}
    got = evaluate(parse("W / G"), t)
    assert torch.allclose(got, torch.tensor([[1 / EPS, -2 / EPS, -3 / EPS, -0.25]]))
    assert not torch.isnan(evaluate(parse("div(W, G - G)"), t)).any()  # norm 0 -> EPS
    assert check(parse("W / (G * log(0))"), {"W": w, "G": torch.tensor([[math.nan, 1, 2, 3]])}) == "nan"
    assert check(parse("exp(W * 1000)"), {"W": w}) == "inf"  # exp clamps at 100: still inf in float32
    assert evaluate(parse("exp(W * 20)"), {"W": w}).isfinite().all()
    assert torch.equal(evaluate(parse("mms(W) + mms(G - G)"), t), evaluate(parse("mms(W)"), t))


def test_reductions_use_the_shape_at_hand(terms: dict[str, torch.Tensor]) -> None:
    x = terms["X"]  # (1, in)
    assert torch.allclose(evaluate(parse("rown(X)"), terms), (x / x.sum()).expand(OUT, IN))
    # coln of the (1, in) X divides each entry by itself: all ones (times W, as an all-ones score
    # would be refused for its ties)
    assert torch.allclose(evaluate(parse("coln(X) * W"), terms), terms["W"], atol=1e-5)


@pytest.mark.parametrize(
    "formula, reason",
    [("W - W", "constant"), ("W * 0", "constant"), ("3", "constant"), ("log(W - W)", "constant"),
     ("exp(exp(exp(W + 10)))", "inf"), ("exp(W + 200) - exp(W + 200)", "nan")],
)
def test_invalid_reasons(terms: dict[str, torch.Tensor], formula: str, reason: str) -> None:
    assert check(parse(formula), terms) == reason
    with pytest.raises(InvalidMetricError) as info:
        evaluate(parse(formula), terms)
    assert info.value.reason == reason


def test_shape_and_torch_errors_become_invalid(terms: dict[str, torch.Tensor]) -> None:
    bad = dict(terms, X=torch.rand(3))
    assert check(parse("X"), bad) == "shape (3,) does not broadcast to (4, 8)"
    reason = check(parse("W * X"), bad)
    assert reason is not None and reason.startswith("RuntimeError")


def test_result_shape_dtype_and_no_aliasing(terms: dict[str, torch.Tensor]) -> None:
    out = evaluate(parse("sqrt(X)"), terms)
    assert out.shape == (OUT, IN) and out.dtype == torch.float32 and out.is_contiguous()
    w_only = {"W": terms["W"]}
    same = evaluate(parse("skp(W)"), w_only)
    same[0, 0] = 123.0
    assert terms["W"][0, 0] != 123.0
    half = evaluate(parse("W * 2"), {"W": terms["W"].half()})
    assert half.dtype == torch.float32


def test_missing_terminal_is_a_user_error(terms: dict[str, torch.Tensor]) -> None:
    with pytest.raises(UserError, match="uses terminal G"):
        evaluate(parse("W * G"), {"W": terms["W"]})
    with pytest.raises(UserError, match="needs terminals\\['W'\\]"):
        evaluate(parse("X"), {"X": terms["X"]})


# ----------------------------------------------------------------------------- terminal spec
def test_prepare_terminals_variants() -> None:
    w = torch.randn(3, 5)
    xms = torch.rand(5)
    l1, l2 = torch.rand(3, 5), torch.rand(3, 5)
    t = prepare_terminals(TerminalSpec(), w, xms, l1, l2)
    assert torch.equal(t["W"], w.abs()) and t["X"].shape == (1, 5) and torch.allclose(t["G"], l2 * 100)
    t = prepare_terminals(TerminalSpec(w="signed", x="rms", g="l1", g_scale=2.0), w, xms, l1, l2)
    assert torch.equal(t["W"], w) and torch.allclose(t["X"], xms.sqrt()[None]) and torch.allclose(t["G"], 2 * l1)
    assert set(prepare_terminals(TerminalSpec(), w)) == {"W"}
    with pytest.raises(UserError, match="uses G but no gradient statistics"):
        prepare_terminals(TerminalSpec(g="l1"), w, xms, grad_l2=l2, needed={"W", "G"})
    with pytest.raises(UserError, match="uses X"):
        prepare_terminals(TerminalSpec(), w, needed=["X"])
    with pytest.raises(ValueError):
        prepare_terminals(TerminalSpec(), w, torch.rand(4))


def test_terminal_spec_dict() -> None:
    spec = TerminalSpec(w="signed", x="rms", g="l1", g_scale=10)
    assert TerminalSpec.from_dict(spec.to_dict()) == spec
    assert TerminalSpec.from_dict({}) == TerminalSpec()
    for bad in ({"w": "abs", "colour": 1}, {"w": "square"}, {"g_scale": 0}, {"g_scale": "x"}, [1]):
        with pytest.raises(UserError):
            TerminalSpec.from_dict(bad)


def test_unvalidated_scores_check_nan_and_inf_only(terms) -> None:
    """validate=False (the OBS sweep's repeated scoring of a block) skips the constant and tie checks,
    not nan / inf; the values are those of the checked call."""
    assert torch.equal(evaluate(parse("W * X"), terms, validate=False), evaluate(parse("W * X"), terms))
    for formula in ("W / W", "0 * W + 1"):  # cannot rank: refused when checked, returned when not
        with pytest.raises(InvalidMetricError):
            evaluate(parse(formula), terms)
        assert evaluate(parse(formula), terms, validate=False).shape == (OUT, IN)
    for formula, reason in (("exp(W * 1e6)", "inf"), ("exp(W * 1e6) - exp(W * 1e6)", "nan")):
        for validate in (True, False):
            with pytest.raises(InvalidMetricError, match=reason):
                evaluate(parse(formula), terms, validate=validate)


def test_finite_scores_whose_sum_overflows_are_valid(terms) -> None:
    """The finite check sums first; a sum that overflows float32 is not an inf score."""
    big = {**terms, "W": torch.full((OUT, IN), 3e38) * torch.linspace(0.5, 1.0, IN)}
    scores = evaluate(parse("W"), big)
    assert torch.isfinite(scores).all() and not torch.isfinite(scores.sum())


def test_scores_never_alias_the_callers_weight(terms) -> None:
    """A formula that is W itself, given a transposed (non-contiguous) W, returns a copy: callers may
    write into scores."""
    w_t = terms["W"].t().contiguous().t()  # (OUT, IN), column-major like the sweep's block
    scores = evaluate(parse("W"), {**terms, "W": w_t})
    scores.zero_()
    assert w_t.abs().sum() > 0
