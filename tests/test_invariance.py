"""Gauge invariance of metrics (symbolic.invariance) and the function-preserving regauge (reparam)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from prunerzero.errors import UserError
from prunerzero.reparam import regauge, regauge_gradients
from prunerzero.search import SearchConfig, load_run, run_search
from prunerzero.search.toy import ToyFitness
from prunerzero.symbolic import Metric, TerminalSpec, load_metric, parse
from prunerzero.symbolic.invariance import GAUGES, broken_gauges, is_invariant


pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors: conftest's one-thread fixture


@pytest.mark.parametrize("formula, broken", [
    ("wanda", ()),  # |w| sqrt(X): the column factor cancels, the row factor is one per row
    ("G * W", ()),  # first-order Taylor: the gradient scales inversely to the weight
    ("sqr(G * (X * W)) * sqr(rown(rown(sqr(W))))", ()),  # |G| X |W|^3, the seed-1 search's winner
    ("rown(W * sqrt(X)) + rown(G * W)", ()),  # a sum of two per-row-normalised invariant scores
    ("magnitude", ("channels",)),
    ("gblm", ("units", "rows")),  # the balance of W sqrt(X) and W G depends on their sizes
    ("ria", ("channels", "rows")),
    ("mms(X * W) * (tanh(G * W) + sqr(mms(W)))", GAUGES),  # tanh saturates at a size that is a model's
    ("log(W) * sqrt(X)", ("units", "channels", "rows")),  # log(|w| + 1e-3): the guard has a size
])
def test_broken_gauges_of_known_metrics(formula: str, broken: tuple[str, ...]) -> None:
    assert broken_gauges(load_metric(formula)) == broken


def test_levels_and_scale_free_terminals() -> None:
    gblm = load_metric("gblm")
    assert is_invariant(gblm, "none") and not is_invariant(gblm, "units") and not is_invariant(gblm, "gauge")
    assert is_invariant(load_metric("wanda"), "gauge")
    # Terminals divided by their layer mean have no overall size: the sum's balance no longer moves with it.
    layer = Metric(parse("W * sqrt(X) + W * G"), TerminalSpec(scale="layer"))
    assert "units" not in broken_gauges(layer)
    with pytest.raises(ValueError):
        is_invariant(gblm, "everything")


def test_a_metric_invalid_on_the_random_layer_is_not_shown_invariant() -> None:
    assert broken_gauges(Metric(parse("W / W"))) == GAUGES  # every score 1: nothing to compare


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("fold", [False, True])
def test_regauge_keeps_the_function_and_moves_the_weights(make_tiny_model, arch: str, fold: bool) -> None:
    model = make_tiny_model(arch, seed=0)
    with torch.no_grad():  # norms with gains of their own, so folding them changes something
        for m in model.modules():
            if type(m).__name__.endswith("RMSNorm"):
                m.weight.uniform_(0.5, 2.0)
    ids = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(0))
    before = model(ids).logits
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    gauges = regauge(model, spread=4.0, seed=1, fold_norms=fold)
    assert torch.allclose(model(ids).logits, before, atol=1e-5, rtol=1e-4)
    assert len(gauges) == 7 * len(model.model.layers)
    name = "model.layers.0.self_attn.q_proj"
    moved = model.get_submodule(name).weight / weights[name + ".weight"]  # (out, in): one factor per column
    assert torch.allclose(moved, gauges[name].cols.expand_as(moved), rtol=1e-5)
    assert not torch.allclose(gauges[name].cols, torch.ones_like(gauges[name].cols))
    if fold:
        assert all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in model.modules()
                   if type(m).__name__.endswith("RMSNorm") and m is not model.model.norm)


def test_regauge_gradients_follow_the_weights() -> None:
    """w -> r w s with input x / s (from the previous norm) and output / r (in the next linear) is the
    same function; its weight gradient is the original's divided by r s, which regauge_gradients gives."""
    from prunerzero.reparam import LinearGauge

    torch.manual_seed(0)
    w, x = torch.randn(3, 5), torch.randn(7, 5)  # (out, in), (tokens, in)
    r, s = torch.rand(3) + 0.5, torch.rand(5) + 0.5  # (out,), (in,)

    def grad(weight: torch.Tensor, inputs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        weight = weight.clone().requires_grad_()
        ((inputs @ weight.t()) / rows).pow(3).sum().backward()  # a loss of the unchanged function
        return weight.grad.abs()  # (out, in)

    g = grad(w, x, torch.ones(3))
    moved = grad(r[:, None] * w * s[None, :], x / s, r)
    out = regauge_gradients({"lin": (g, 2 * g), "other": (g, g)}, {"lin": LinearGauge(r, s)})
    assert torch.allclose(out["lin"][0], moved, rtol=1e-4, atol=1e-6)
    assert torch.allclose(out["lin"][1], 2 * moved, rtol=1e-4, atol=1e-6)
    assert out["other"][0] is g  # linears the regauge left alone keep their statistics


def test_regauge_with_one_factor_changes_units_only(make_tiny_model) -> None:
    model = make_tiny_model("llama", seed=0)
    ids = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(0))
    before = model(ids).logits
    up = model.model.layers[0].mlp.up_proj.weight.detach().clone()
    gauges = regauge(model, uniform=4.0)
    assert torch.allclose(model(ids).logits, before, atol=1e-5, rtol=1e-4)
    assert torch.allclose(model.model.layers[0].mlp.up_proj.weight, 16 * up)  # row 4 x column 4
    assert torch.equal(gauges["model.layers.0.mlp.down_proj"].cols, torch.full((128,), 0.25))


def test_regauge_rejects_what_it_cannot_do(make_tiny_model) -> None:
    with pytest.raises(UserError, match="spread"):
        regauge(make_tiny_model("llama", seed=0), spread=0.5)
    with pytest.raises(UserError, match="uniform"):
        regauge(make_tiny_model("llama", seed=0), uniform=0.0)
    with pytest.raises(UserError, match="Llama-style"):
        regauge(make_tiny_model("gpt2", seed=0))


def test_search_with_gauge_invariance_evaluates_only_invariant_formulas(tmp_path: Path) -> None:
    cfg = SearchConfig(population=10, generations=3, seed=2, hall_of_fame_size=4, invariance="gauge")
    run_search(ToyFitness(), cfg, tmp_path, progress=False)
    evaluated = {r["expression"] for r in load_run(tmp_path)["evaluations"]}
    assert len(evaluated) >= 10
    assert all(is_invariant(load_metric(e), "gauge") for e in evaluated)
    assert "W * sqrt(X)" in evaluated and "W * sqrt(X) + W * G" not in evaluated  # wanda seeded, gblm not
    saved = json.loads((tmp_path / "config.json").read_text())["search"]
    assert saved["invariance"] == "gauge"
    assert "invariance" not in SearchConfig().to_dict()  # runs saved before the option resume unchanged
    with pytest.raises(UserError, match="invariance"):
        SearchConfig(invariance="strict")


def test_gauge_search_without_seeds_still_fills_its_population(tmp_path: Path) -> None:
    cfg = SearchConfig(population=8, generations=2, seed=5, seed_named=False, invariance="gauge",
                       ops=("sqr", "sqrt", "abs", "log", "tanh", "mms", "rown", "coln", "add", "sub", "mul", "div"))
    run_search(ToyFitness(), cfg, tmp_path, progress=False)
    evaluated = {r["expression"] for r in load_run(tmp_path)["evaluations"]}
    assert len(evaluated) >= 8 and all(is_invariant(load_metric(e), "gauge") for e in evaluated)


@pytest.mark.parametrize("formula, alike", [("wanda", True), ("magnitude", False)])
def test_an_invariant_metric_prunes_the_regauged_model_to_the_same_function(make_tiny_model, calib_ids,
                                                                              formula: str, alike: bool) -> None:
    """The whole pipeline, not just one layer: Wanda keeps the same weights of the regauged model (its
    pruned model computes what the original's pruned model computes); magnitude does not."""
    from prunerzero.masks import parse_setting
    from prunerzero.methods.symbolic import symbolic_method
    from prunerzero.pipeline import prune_model

    original, regauged = make_tiny_model("llama", seed=0), make_tiny_model("llama", seed=0)
    regauge(regauged, spread=4.0, seed=3)
    for model in (original, regauged):
        prune_model(model, symbolic_method(load_metric(formula)), parse_setting("0.5"), calib_ids, progress=False)
    masks = [[(m.weight == 0) for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear)]
             for model in (original, regauged)]  # every decoder linear's pruned entries
    same = all(torch.equal(a, b) for a, b in zip(*masks))
    assert same is alike
    with torch.no_grad():
        out = [model(calib_ids).logits for model in (original, regauged)]
    assert torch.allclose(out[0], out[1], atol=1e-4, rtol=1e-3) is alike
