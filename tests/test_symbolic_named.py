"""Named metrics against direct torch implementations; saving and loading metrics."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from prunerzero.errors import UserError
from prunerzero.symbolic import (
    NAMED_METRICS,
    PRUNER_ZERO_BEST_TREE,
    Metric,
    MetricSyntaxError,
    TerminalSpec,
    format_expr,
    load_metric,
    named_metric,
    parse,
    ria_expr,
    to_json,
)

OUT, IN = 5, 12
gen = torch.Generator().manual_seed(1)
WEIGHT = torch.randn(OUT, IN, generator=gen)
X_MEAN_SQ = torch.rand(IN, generator=gen) + 0.01  # mean of x^2 per input channel
GRAD_L1 = torch.rand(OUT, IN, generator=gen) * 1e-3
GRAD_L2 = torch.rand(OUT, IN, generator=gen) * 1e-3


def direct(name: str) -> torch.Tensor:
    """Each method written as in its own repository."""
    w = WEIGHT.abs()
    act_norm = X_MEAN_SQ.sqrt().reshape(1, -1)  # Wanda's ||X_j||_2 (up to the constant sqrt(#tokens))
    if name == "magnitude":
        return w
    if name == "wanda":
        return w * act_norm
    if name == "gblm":  # GBLM-Pruner prune_gblm: |W| sqrt(scaler_row) + |W| |grad_l2 scaled by 100|
        return w * act_norm + w * (GRAD_L2 * 100).abs()
    if name == "ria":  # RIA: (|W|/sum(|W|, dim=0) + |W|/sum(|W|, dim=1)) * sqrt(scaler_row) ** 0.5
        return (w / w.sum(dim=0) + w / w.sum(dim=1).reshape(-1, 1)) * act_norm**0.5
    if name == "pruner-zero":  # gptree.py: mul(abs(mul(W, W)), mms(G)), G = 100 * l2 grad
        g = GRAD_L2 * 100
        return (w * w).abs() * ((g - g.min()) / (g.max() - g.min()))
    raise KeyError(name)


def test_named_list() -> None:
    assert set(NAMED_METRICS) == {"magnitude", "wanda", "gblm", "ria", "pruner-zero"}


@pytest.mark.parametrize("name", ["magnitude", "wanda", "gblm", "ria", "pruner-zero"])
def test_named_metric_matches_direct_implementation(name: str) -> None:
    metric = named_metric(name)
    assert metric.name == name and metric.spec == TerminalSpec()
    got = metric.scores(WEIGHT, X_MEAN_SQ, GRAD_L1, GRAD_L2)
    assert got.shape == (OUT, IN)
    assert torch.allclose(got, direct(name), rtol=1e-5, atol=1e-7)


def test_pruner_zero_is_the_paper_tree() -> None:
    metric = named_metric("pruner-zero")
    assert to_json(metric.expr) == PRUNER_ZERO_BEST_TREE
    assert format_expr(metric.expr) == "abs(W * W) * mms(G)"


@pytest.mark.parametrize("a", [0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0])
def test_ria_exponent(a: float) -> None:
    w = WEIGHT.abs()
    want = (w / w.sum(dim=0) + w / w.sum(dim=1).reshape(-1, 1)) * X_MEAN_SQ.sqrt().reshape(1, -1) ** a
    got = Metric(ria_expr(a)).scores(WEIGHT, X_MEAN_SQ)
    assert torch.allclose(got, want, rtol=1e-5)


def test_ria_exponent_errors() -> None:
    for a in (-1.0, 0.1, float("nan")):
        with pytest.raises(UserError):
            ria_expr(a)


def test_unknown_name_suggests() -> None:
    with pytest.raises(UserError, match="did you mean 'wanda'"):
        named_metric("wandda")


def test_missing_statistics_are_user_errors() -> None:
    with pytest.raises(UserError, match="activation statistics"):
        named_metric("wanda").scores(WEIGHT)
    with pytest.raises(UserError, match="gradient statistics"):
        named_metric("pruner-zero").scores(WEIGHT, X_MEAN_SQ, grad_l1=GRAD_L1)
    named_metric("magnitude").scores(WEIGHT)  # needs nothing else


# ----------------------------------------------------------------------------- save / load
def test_metric_dict_round_trip() -> None:
    m = Metric(parse("sqrt(X) * W / G"), TerminalSpec(w="signed", g="l1", g_scale=3.0), "mine")
    d = json.loads(json.dumps(m.to_dict()))
    assert d["formula"] == "sqrt(X) * W / G" and d["tree"]["data"] == "pdiv"
    assert Metric.from_dict(d) == m
    assert Metric.from_dict({"formula": "W"}) == Metric(parse("W"))
    assert Metric.from_dict({"tree": {"data": "W"}}) == Metric(parse("W"))
    for bad in ({"formula": "W", "tree": {"data": "X"}}, {"formula": "W", "extra": 1}, {}, [],
                {"formula": "W", "terminals": {"w": "abs", "bogus": 1}}):
        with pytest.raises(UserError):
            Metric.from_dict(bad)


def test_load_metric_sources(tmp_path: Path) -> None:
    assert load_metric("abs(W * W) * mms(G)") == Metric(parse("abs(W*W)*mms(G)"))
    assert load_metric("wanda") == named_metric("wanda")
    tree = tmp_path / "best_tree.json"
    tree.write_text(json.dumps(PRUNER_ZERO_BEST_TREE, indent=4))
    assert load_metric(str(tree)).expr == named_metric("pruner-zero").expr
    saved = tmp_path / "metric.json"
    m = Metric(parse("W * X"), TerminalSpec(x="rms"), "wx")
    saved.write_text(json.dumps(m.to_dict()))
    assert load_metric(saved) == m
    txt = tmp_path / "metric.txt"
    txt.write_text("# my metric\nW *\n  sqrt(X)\n")
    assert load_metric(txt) == Metric(parse("W * sqrt(X)"))
    assert load_metric(txt, spec=TerminalSpec(w="signed")).spec.w == "signed"


def test_load_metric_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        load_metric(str(tmp_path / "nope.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(MetricSyntaxError, match="not valid JSON"):
        load_metric(bad)
    bad.write_text(json.dumps({"data": "mul", "left": {"data": "W"}}))
    with pytest.raises(MetricSyntaxError, match=r"at \$:"):
        load_metric(bad)
    with pytest.raises(MetricSyntaxError, match="position 6"):
        load_metric("W * (X")


def test_named_match_finds_a_named_metric_in_any_spelling() -> None:
    """A search seeds the named metrics into generation 0; when one ends on top it must be called by
    its name, not 'found' (the demo's winner was GBLM's formula, listed as 'searched #1')."""
    from prunerzero.symbolic import TerminalSpec, load_metric, named_match

    assert named_match(load_metric("W * G + sqrt(X) * W")) == "gblm"
    assert named_match(load_metric("abs(W) * sqrt(X)")) == "wanda"
    assert named_match(load_metric("pruner-zero")) == "pruner-zero"
    assert named_match(load_metric("mms(X * W)")) is None
    scale_free = load_metric("W * sqrt(X) + W * G")
    assert named_match(Metric(scale_free.expr, TerminalSpec(scale="layer"))) is None  # another metric


def test_leaderboard_names_a_seeded_metric_that_is_not_a_baseline() -> None:
    from prunerzero.search.job import SearchJob
    from prunerzero.search.leaderboard import baseline_ranks, leaderboard_entries

    job = SearchJob(baselines=("magnitude", "wanda"), leaderboard_top=2)
    hof = [{"expression": "W * sqrt(X) + W * G", "key": "G * W + W * sqrt(X)", "fitness": {}},
           {"expression": "W * sqrt(X)", "key": "W * sqrt(X)", "fitness": {}},
           {"expression": "mms(X * W)", "key": "mms(W * X)", "fitness": {}}]
    skip = baseline_ranks(job, hof)
    labels = [label for label, _, _ in leaderboard_entries(job, hof, skip)]
    assert skip == {2: "wanda"}
    assert labels == ["searched #1 (= gblm, seeded)", "searched #3", "magnitude", "wanda"]
