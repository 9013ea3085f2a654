"""Formulas that prune alike are one candidate: mask fingerprints and the search's ``dedup="masks"``."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from prunerzero.errors import UserError
from prunerzero.search import SearchConfig, load_run, run_search
from prunerzero.search.toy import Crash, CrashingFitness, ToyFitness
from prunerzero.symbolic import InvalidMetricError, load_metric
from prunerzero.search.known_masks import KnownMasks
from prunerzero.symbolic.invariance import mask_fingerprint, mask_signature

pytestmark = pytest.mark.usefixtures("single_thread")

# Every one of these ranks each row's weights like |W| sqrt(X): monotone transforms, a per-row
# factor (rown), or Pruner-Zero's div (a division by the Frobenius norm of G, a scalar).
WANDA_ALIKE = ["W * sqrt(X)", "sqr(W) * X", "rown(sqr(W) * X)", "div(W * sqrt(X), G)", "sqr(rown(X) * (W * W))"]


def _fp(formula: str) -> str | None:
    return mask_fingerprint(load_metric(formula))


def test_formulas_that_prune_alike_share_a_fingerprint() -> None:
    assert len({_fp(f) for f in WANDA_ALIKE}) == 1
    assert _fp("W * sqrt(X)") == _fp("wanda")  # named metrics too
    assert _fp("G * W") == _fp("sqr(G * -W)") == _fp("G * div(W, G)")
    # different rankings, different fingerprints: magnitude, GBLM's sum, |W| X (X not square-rooted)
    others = [_fp(f) for f in ("W", "G * W", "W * sqrt(X) + W * G", "W * X", "ria", "pruner-zero")]
    assert len(set(others + [_fp("wanda")])) == len(others) + 1
    assert _fp("W * sqrt(X)") == _fp("W * sqrt(X)")  # a pure function of the formula
    # equal in exact arithmetic, so alike, even where one overflows on real layers (the engine lets an
    # invalid candidate's masks be tried again: test below)
    assert _fp("rown(div(G * W, sqr(sqr(X) * (X * X))))") == _fp("G * W")


def test_known_masks_match_within_rounding_and_per_gene() -> None:
    """Formulas whose masks differ in a few entries only by float rounding are alike; GBLM's sum (3.7% of
    the entries differ from Wanda's) and RIA (10%) are not; the same masks with another gene are new."""
    known = KnownMasks()
    for formula in ("W * sqrt(X)", "G * W"):
        known.add(mask_signature(load_metric(formula)))

    def alike(formula: str, gene: str = "") -> bool:
        return known.alike(mask_signature(load_metric(formula)), gene)

    # exp(rown(.)) squeezes every score towards 1 (2 entries flip); mms shifts |W| by its minimum (8 flip)
    assert _fp("exp(rown(div(G * W, sqr(G))))") != _fp("G * W") and alike("exp(rown(div(G * W, sqr(G))))")
    assert _fp("mms(W) * sqrt(X)") != _fp("wanda") and alike("mms(W) * sqrt(X)")
    assert not alike("gblm") and not alike("ria") and not alike("W * X") and not alike("W")
    assert not alike("W * sqrt(X)", gene=" @owl_lambda=0.08")
    assert len(known) == 2 and not KnownMasks().alike(mask_signature(load_metric("wanda")))


def test_a_formula_invalid_on_the_probe_has_no_fingerprint() -> None:
    assert _fp("exp(exp(exp(X)))") is None  # overflows on the probe: no fingerprint, never a duplicate
    assert _fp("W / W") is None  # one score for every weight: the mask would be the position's, invalid
    assert _fp("exp(W)") == _fp("W")  # valid, and monotone in |W| (the default meaning of W)


def _cheap(out: Path) -> list[dict]:
    return [r for r in load_run(out)["evaluations"] if r["fidelity"] == "low"]


# div, sqrt, sqr and rown make many formulas that prune alike: the setting where the two dedups differ.
CLONE_PRONE = dict(population=12, generations=4, seed=1, hall_of_fame_size=4,
                   ops=("sqr", "sqrt", "abs", "rown", "add", "mul", "div"), max_depth=4, max_size=9)


def test_dedup_by_masks_evaluates_each_mask_once(tmp_path: Path) -> None:
    run_search(ToyFitness(), SearchConfig(**CLONE_PRONE), tmp_path / "formula", progress=False)
    res = run_search(ToyFitness(), SearchConfig(**CLONE_PRONE, dedup="masks"), tmp_path / "masks", progress=False)

    def fingerprints(out: Path) -> list[str]:
        return [fp for r in _cheap(out) if (fp := _fp(r["expression"])) is not None]

    by_formula, by_masks = fingerprints(tmp_path / "formula"), fingerprints(tmp_path / "masks")
    assert len(set(by_formula)) < len(by_formula)  # the formula dedup evaluates clones...
    assert len(set(by_masks)) == len(by_masks) >= 3 * 12  # ...the mask dedup none
    assert res.stats["mask_duplicates"] > 0
    assert sum(g["mask_duplicates"] for g in res.stats["generations"]) == res.stats["mask_duplicates"]
    assert json.loads((tmp_path / "masks" / "config.json").read_text())["search"]["dedup"] == "masks"


def test_dedup_by_masks_resumes_to_the_same_run(tmp_path: Path) -> None:
    cfg = SearchConfig(**{**CLONE_PRONE, "generations": 3}, dedup="masks")
    ref = run_search(ToyFitness(), cfg, tmp_path / "ref", progress=False)
    short = SearchConfig(**{**cfg.to_dict(), "generations": 1})
    run_search(ToyFitness(), short, tmp_path / "cut", progress=False)  # stopped after generation 0 ...
    res = run_search(ToyFitness(), cfg, tmp_path / "cut", resume=True, progress=False)  # ... then extended
    assert res.population == ref.population and res.hall_of_fame == ref.hall_of_fame
    assert [r["key"] for r in _cheap(tmp_path / "cut")] == [r["key"] for r in _cheap(tmp_path / "ref")]


def test_dedup_config() -> None:
    assert "dedup" not in SearchConfig().to_dict()  # runs saved before the option resume unchanged
    assert SearchConfig.from_dict(SearchConfig(dedup="masks").to_dict()).dedup == "masks"
    with pytest.raises(UserError, match="dedup"):
        SearchConfig(dedup="behaviour")


def test_a_space_with_few_masks_still_fills_its_population(tmp_path: Path) -> None:
    """Products of powers of W, X and G up to size 5 give fewer distinct masks than this population
    needs: it is completed with a new formula that prunes like a member (evaluated) instead of
    stopping the run."""
    cfg = SearchConfig(population=8, generations=2, seed=0, seed_named=False, ops=("sqr", "sqrt", "mul"),
                       max_depth=4, max_size=5, dedup="masks")
    res = run_search(ToyFitness(), cfg, tmp_path, progress=False)
    first = [r for r in _cheap(tmp_path) if r["generation"] == 0]
    assert len({r["key"] for r in first}) == len(first) == 8
    assert len({_fp(r["expression"]) for r in first}) < 8 and res.stats["mask_duplicates"] > 0


class NoSqrtFitness(ToyFitness):
    """Every formula with sqrt is invalid here: wanda (W * sqrt(X)), seeded in generation 0, among them."""

    def evaluate(self, metric, fidelity):  # type: ignore[override]
        if "sqrt" in str(metric):
            raise InvalidMetricError("no sqrt here")
        return super().evaluate(metric, fidelity)


def test_an_invalid_candidate_does_not_block_its_masks(tmp_path: Path) -> None:
    """Formulas alike in exact arithmetic can differ in float range on real layers: an invalid one
    does not stand for its masks, so a later formula that prunes like it is evaluated."""
    cfg = SearchConfig(**{**CLONE_PRONE, "seed": 1}, dedup="masks")
    run_search(NoSqrtFitness(), cfg, tmp_path, progress=False)
    cheap = _cheap(tmp_path)
    invalid = {_fp(r["expression"]) for r in cheap if r["fitness"] is None}
    assert "W * sqrt(X)" in {r["expression"] for r in cheap if r["fitness"] is None}
    assert [r["expression"] for r in cheap if r["fitness"] is not None and _fp(r["expression"]) in invalid]


def test_dedup_by_masks_survives_a_crash_mid_generation(tmp_path: Path) -> None:
    cfg = SearchConfig(**CLONE_PRONE, dedup="masks")
    ref = run_search(ToyFitness(), cfg, tmp_path / "ref", progress=False)
    k = sum(1 for r in load_run(tmp_path / "ref")["evaluations"] if r["generation"] < 2) + 3
    with pytest.raises(Crash):
        run_search(CrashingFitness(after=k), cfg, tmp_path / "crash", progress=False)
    res = run_search(ToyFitness(), cfg, tmp_path / "crash", resume=True, progress=False)
    assert res.population == ref.population and res.hall_of_fame == ref.hall_of_fame and res.stats == ref.stats
    assert [r["key"] for r in _cheap(tmp_path / "crash")] == [r["key"] for r in _cheap(tmp_path / "ref")]


def test_a_slot_that_finds_no_new_mask_takes_a_free_seen_member(tmp_path: Path) -> None:
    """A small gauge search (make demo's population) exhausts slots: the last resort is a member seen
    before (served from the cache), not a new formula that prunes like one (an evaluation for nothing)."""
    cfg = SearchConfig(population=10, generations=3, seed=0, invariance="gauge", dedup="masks",
                       ops=("sqr", "neg", "abs", "log", "exp", "sqrt", "tanh", "pow", "skp", "mms", "zsn", "add",
                            "sub", "mul", "div", "rown", "coln"))
    res = run_search(ToyFitness(), cfg, tmp_path, progress=False)
    assert res.stats["cache_hits"] > 0  # the free last resort was used
    known = KnownMasks()
    for gen in range(3):
        rows = [(r, mask_signature(load_metric(r["expression"]))) for r in _cheap(tmp_path) if r["generation"] == gen]
        if gen > 0:  # generation 0 may fill a slot with a known mask; later ones have seen members to reuse
            assert not [r["expression"] for r, sig in rows if sig is not None and known.alike(sig)]
        for r, sig in rows:
            if r["fitness"] is not None and sig is not None:
                known.add(sig)


def test_a_layer_group_search_tells_apart_formulas_that_differ_by_a_row_factor() -> None:
    """Per row, rown(.) changes no mask; compared across the layer it does: the layer signature has the
    '0.5:layer' mask too, and KnownMasks scales its tolerance with the signature's length."""
    assert _fp("rown(sqr(W) * X)") == _fp("W * sqrt(X)")
    layer = [mask_signature(load_metric(f), layer_group=True) for f in ("W * sqrt(X)", "rown(sqr(W) * X)", "sqr(W) * X")]
    assert layer[0].numel() == 3 * mask_signature(load_metric("W")).numel() // 2
    known = KnownMasks()
    known.add(layer[0])
    assert known.alike(layer[2]) and not known.alike(layer[1])
