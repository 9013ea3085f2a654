"""The GP search: determinism, crash + resume equivalence, cache, invalid candidates, limits,
duplicates, improvement on a toy layer, and the files it leaves (fast: tiny populations)."""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

from prunerzero.errors import UserError
from prunerzero.search import SearchConfig, load_run, run_search
from prunerzero.search import checkpoint as ck
from prunerzero.search.operators import (Language, Limits, crossover, mutate, mutate_hoist, mutate_point,
                                         mutate_subtree, ramped_half_and_half, random_tree)
from prunerzero.search.toy import Crash, CrashingFitness, ToyFitness
from prunerzero.symbolic import (PRUNER_ZERO_OPS, InvalidMetricError, depth, load_metric, named_metric, parse, size,
                                 terminals_used)



@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny tensors: a second intra-op thread on shared cores only adds contention (ms per op)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


SMALL = SearchConfig(population=12, generations=4, seed=3, hall_of_fame_size=5)


class PickyFitness(ToyFitness):
    """Raises for metrics using tanh (a plain bug) or exp (declared invalid)."""

    def evaluate(self, metric, fidelity):  # type: ignore[override]
        text = str(metric)
        if "tanh" in text:
            raise ValueError("tanh is broken here")
        if "exp" in text:
            raise InvalidMetricError("no exp")
        return super().evaluate(metric, fidelity)


def _run(out: Path, fitness=None, cfg: SearchConfig = SMALL, **kw):
    return run_search(fitness or ToyFitness(), cfg, out, progress=False, **kw)


def _log(out: Path) -> list[tuple]:
    return [(r["generation"], r["expression"], r["key"], r["fidelity"], r["fitness"], r["reason"])
            for r in ck.read_log(out / ck.LOG)]


def test_config_round_trip_and_validation() -> None:
    cfg = SearchConfig(population=7, ops=("mul", "sqrt"))
    assert SearchConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(UserError, match="unknown key"):
        SearchConfig.from_dict({"populaton": 3})
    with pytest.raises(UserError):
        SearchConfig(elitism=40)
    with pytest.raises(UserError):
        SearchConfig(ops=("nope",))


def test_same_seed_same_run_and_global_rng_untouched(tmp_path: Path) -> None:
    random.seed(123)
    state = random.getstate()
    a = _run(tmp_path / "a")
    assert random.getstate() == state  # no draws from the global RNG
    b = _run(tmp_path / "b")
    assert _log(tmp_path / "a") == _log(tmp_path / "b")
    assert a.hall_of_fame == b.hall_of_fame and a.population == b.population
    c = _run(tmp_path / "c", cfg=SearchConfig(**{**SMALL.to_dict(), "seed": 4}))
    assert [r[1] for r in _log(tmp_path / "c")] != [r[1] for r in _log(tmp_path / "a")]
    assert c.population != a.population


@pytest.mark.parametrize("crash_gen", [0, 2])
def test_crash_and_resume_equals_uninterrupted(tmp_path: Path, crash_gen: int) -> None:
    ref = _run(tmp_path / "ref")
    ref_log = _log(tmp_path / "ref")
    k = sum(1 for r in ref_log if r[0] < crash_gen) + 3  # three evaluations into generation crash_gen
    with pytest.raises(Crash):
        _run(tmp_path / "crash", CrashingFitness(after=k))
    assert len(_log(tmp_path / "crash")) == k
    with open(tmp_path / "crash" / ck.LOG, "a") as fh:
        fh.write('{"generation": 2, "expr')  # a torn last line, as after kill -9 mid-write
    fresh = ToyFitness()
    res = _run(tmp_path / "crash", fresh, resume=True)
    assert fresh.calls == len(ref_log) - k  # logged evaluations come from the rebuilt cache
    assert res.hall_of_fame == ref.hall_of_fame
    assert res.population == ref.population
    assert res.stats == ref.stats
    assert _log(tmp_path / "crash") == ref_log
    again = ToyFitness()  # resuming a finished run calls nothing and reports the same
    assert _run(tmp_path / "crash", again, resume=True).hall_of_fame == ref.hall_of_fame and again.calls == 0


def test_out_dir_guards(tmp_path: Path) -> None:
    _run(tmp_path, cfg=SearchConfig(population=6, generations=1))
    with pytest.raises(UserError, match="finished"):
        _run(tmp_path, cfg=SearchConfig(population=6, generations=1))
    with pytest.raises(UserError, match="different config.*population") as info:
        _run(tmp_path, cfg=SearchConfig(population=7, generations=1), resume=True)
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="fitness.seed"):
        _run(tmp_path, ToyFitness(seed=1), cfg=SearchConfig(population=6, generations=1), resume=True)
    res = _run(tmp_path, cfg=SearchConfig(population=7, generations=1), overwrite=True)
    assert len(res.population) == 7
    assert load_run(tmp_path)["config"]["search"]["population"] == 7


def test_invalid_candidates_are_logged_and_skipped(tmp_path: Path) -> None:
    cfg = SearchConfig(population=16, generations=3, seed=1, ops=("tanh", "exp", "mul", "sqrt", "add"))
    res = _run(tmp_path, PickyFitness(), cfg)
    records = load_run(tmp_path)["evaluations"]
    bad = [r for r in records if r["fitness"] is None]
    assert bad and res.stats["invalid"] == len(bad)
    assert {r["reason"] for r in bad} <= {"ValueError: tanh is broken here", "no exp"}
    assert all("tanh" not in h["expression"] and "exp" not in h["expression"] for h in res.hall_of_fame)
    assert all(h["fitness"]["low"] is not None for h in res.hall_of_fame)


def test_operators_respect_limits() -> None:
    rng = random.Random(0)
    lang = Language(PRUNER_ZERO_OPS, use_constants=True)
    limits = Limits(max_depth=5, max_size=15)
    for d in range(5):
        assert depth(random_tree(rng, lang, d, full=True)) == d
    trees = [t for i in range(60) if limits.ok(t := ramped_half_and_half(rng, lang, i, 1, 4))]
    assert len(trees) > 20
    for _ in range(1500):
        a, b = rng.choice(trees), rng.choice(trees)
        for child in (crossover(rng, a, b, limits), mutate(rng, a, lang, limits), mutate_hoist(rng, a, lang, limits),
                      mutate_point(rng, a, lang, limits), mutate_subtree(rng, a, lang, limits)):
            assert depth(child) <= 5 and size(child) <= 15
    assert depth(ramped_half_and_half(rng, lang, 3, 2, 4)) <= 4


def test_duplicates_are_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written = []
    real = ck.atomic_write_json
    monkeypatch.setattr(ck, "atomic_write_json", lambda p, o: (written.append((p.name, o)), real(p, o)))
    cfg = SearchConfig(population=14, generations=5, seed=2, ops=("mul", "add", "sqrt"), max_depth=4, max_size=9)
    res = _run(tmp_path, cfg=cfg)
    pops = [o["population"] for name, o in written if name == ck.CHECKPOINT]
    assert len(pops) == 5
    for pop in pops:
        keys = [m["key"] for m in pop]
        assert len(set(keys)) == len(keys) == 14
    assert res.stats["duplicates_replaced"] > 0
    assert sum(g["duplicates_replaced"] for g in res.stats["generations"]) == res.stats["duplicates_replaced"]
    cheap = [(r["key"]) for r in load_run(tmp_path)["evaluations"] if r["fidelity"] == "low"]
    assert len(set(cheap)) == len(cheap)  # nothing evaluated twice


def test_toy_search_improves_and_files_round_trip(tmp_path: Path) -> None:
    cfg = SearchConfig(population=24, generations=8, seed=0, seed_named=False)
    res = _run(tmp_path, cfg=cfg)
    gens = res.stats["generations"]
    wanda = ToyFitness().evaluate(named_metric("wanda"), "low")
    assert gens[-1]["best"] < gens[0]["best"] or gens[-1]["best"] <= wanda * 1.001
    assert res.stats["fidelity_spearman"]["low~high"]["n"] >= 3
    assert res.stats["fidelity_spearman"]["low~high"]["rho"] > 0.5
    best = parse(res.hall_of_fame[0]["expression"])
    assert res.best.expr == best
    assert load_metric(tmp_path / ck.BEST_METRIC).expr == best
    assert load_metric(tmp_path / ck.BEST_TREE).expr == best
    # the hall of fame: distinct keys, high-fidelity entries first, ordered by their score
    hof = json.loads((tmp_path / ck.HALL_OF_FAME).read_text())
    assert hof == res.hall_of_fame and len({h["key"] for h in hof}) == len(hof)
    highs = [h["fitness"]["high"] for h in hof if "high" in h["fitness"]]
    assert highs == sorted(highs) and all("high" in h["fitness"] for h in hof[: len(highs)])
    run = load_run(tmp_path)
    assert set(run["evaluations"][0]) == {"generation", "expression", "key", "fidelity", "fitness", "reason",
                                          "seconds", "time"}
    assert run["checkpoint"]["finished"] and run["best_metric"] == res.hall_of_fame[0]["expression"]


def test_seed_named_puts_named_metrics_in_generation_zero(tmp_path: Path) -> None:
    _run(tmp_path, cfg=SearchConfig(population=8, generations=1))
    gen0 = [r for r in load_run(tmp_path)["evaluations"] if r["fidelity"] == "low"][:5]
    from prunerzero.symbolic import canonical_key
    assert [r["key"] for r in gen0] == [canonical_key(named_metric(n).expr) for n in
                                        ("magnitude", "wanda", "gblm", "ria", "pruner-zero")]
    assert all(math.isfinite(r["fitness"]) for r in gen0)
    assert terminals_used(parse(gen0[2]["expression"])) == {"W", "X", "G"}


class LambdaFitness(ToyFitness):
    """The toy error, worsened the further a genome's OWL lambda is from 0.12: a planted optimum."""

    def evaluate(self, metric, fidelity):  # type: ignore[override]
        lam = dict(metric.genes)["owl_lambda"]
        return super().evaluate(metric, fidelity) * (1 + 4 * abs(lam - 0.12))


GENES = SearchConfig(population=10, generations=6, seed=0, owl_lambdas=(0.0, 0.04, 0.08, 0.12, 0.16),
                     gene_mutation_rate=0.5)


def test_owl_lambda_evolves_with_the_metric(tmp_path: Path) -> None:
    res = _run(tmp_path / "a", LambdaFitness(), cfg=GENES)
    log = ck.read_log(tmp_path / "a" / ck.LOG)
    assert all(" @owl_lambda=" in r["key"] for r in log)
    assert {r["key"].rsplit("=", 1)[1] for r in log} >= {"0", "0.12", "0.16"}  # the gene varies
    assert dict(res.best.genes) == {"owl_lambda": 0.12}  # and selection finds the planted value
    assert json.loads((tmp_path / "a" / "best_genes.json").read_text()) == {"owl_lambda": 0.12}
    # The same formula with two lambdas is two candidates; the checkpoint keeps each gene.
    saved = json.loads((tmp_path / "a" / ck.CHECKPOINT).read_text())
    assert all(" @owl_lambda=" in m["key"] for m in saved["population"])
    again = _run(tmp_path / "b", LambdaFitness(), cfg=GENES)
    assert again.hall_of_fame == res.hall_of_fame and _log(tmp_path / "a") == _log(tmp_path / "b")


def test_crash_and_resume_with_genes(tmp_path: Path) -> None:
    class CrashingLambda(LambdaFitness):
        def evaluate(self, metric, fidelity):  # type: ignore[override]
            if self.calls >= 25:
                raise Crash()
            return super().evaluate(metric, fidelity)

    ref = _run(tmp_path / "ref", LambdaFitness(), cfg=GENES)
    with pytest.raises(Crash):
        _run(tmp_path / "crash", CrashingLambda(), cfg=GENES)
    res = _run(tmp_path / "crash", LambdaFitness(), cfg=GENES, resume=True)
    assert res.hall_of_fame == ref.hall_of_fame and res.population == ref.population


def test_gene_config_is_validated() -> None:
    with pytest.raises(UserError, match="owl_lambdas"):
        SearchConfig(owl_lambdas=(0.1, 0.05))
    with pytest.raises(UserError, match="owl_lambdas"):
        SearchConfig(owl_lambdas=(-0.1,))
    cfg = SearchConfig(owl_lambdas=(0.0, 0.1))
    assert SearchConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


class CoarseFitness(ToyFitness):
    """The toy fitness rounded to 2 significant digits: many formulas tie, as real ones nearly do."""

    def evaluate(self, metric, fidelity):  # type: ignore[override]
        value = super().evaluate(metric, fidelity)
        return float(f"{value:.2g}")


def test_parsimony_prefers_the_smaller_formula_at_equal_fitness(tmp_path):
    """With parsimony on, among hall-of-fame entries of (about) equal fitness the smaller comes first;
    off, the run is the one made before parsimony existed (its config has no parsimony key)."""
    cfg = SearchConfig(population=12, generations=4, seed=3, hall_of_fame_size=10, parsimony=0.02)
    res = _run(tmp_path / "p", CoarseFitness(), cfg)
    hof = res.hall_of_fame
    for a, b in zip(hof, hof[1:]):
        fa, fb = a["fitness"]["low"], b["fitness"]["low"]
        if a["fitness"].keys() == b["fitness"].keys() and abs(fa - fb) <= 1e-12:
            assert a["size"] <= b["size"], (a, b)
    assert all(row["size"] >= 1 for row in hof)
    off = _run(tmp_path / "off", CoarseFitness(), SearchConfig(population=12, generations=4, seed=3))
    assert "parsimony" not in json.loads((tmp_path / "off" / "config.json").read_text())["search"]
    assert "parsimony" in json.loads((tmp_path / "p" / "config.json").read_text())["search"]
    assert [r["key"] for r in off.hall_of_fame] != [] and off.stats["rung_agreement"]["low~high"]["n"] >= 3


def test_rung_agreement_covers_every_pair_of_rungs(tmp_path):
    res = _run(tmp_path / "r")
    agreement = res.stats["rung_agreement"]
    assert set(agreement) == {"low~high"} and agreement["low~high"]["tau"] is not None
    assert res.stats["fidelity_spearman"]["low~high"]["rho"] == agreement["low~high"]["rho"]


def test_hall_of_fame_merges_metrics_that_score_alike_at_every_rung():
    """mms(X * W) and mms(X * (W + W)) prune alike; the canonical key keeps them apart (mms's EPS),
    the scores do not: one row, the smaller formula, the other named under same_scores."""
    from prunerzero.search.scores import FitnessCache, hall_of_fame

    def rec(expr: str, key: str, low: float | None, high: float | None) -> list[dict]:
        return [{"key": key, "fidelity": f, "fitness": v, "expression": expr, "generation": 0}
                for f, v in (("low", low), ("high", high)) if v is not None or f == "low"]

    records = (rec("mms(X * (W + W))", "mms(W * X * 2)", 0.5, 0.25)  # larger, ranked first by key order
               + rec("mms(X * W)", "mms(W * X)", 0.5, 0.25)
               + rec("W * sqrt(X)", "W * sqrt(X)", 0.5, 0.3)  # equal at the cheap rung only: distinct
               + rec("W", "W", None, None) + rec("abs(W)", "abs(W)", None, None))  # invalid: never merged
    hof = hall_of_fame(FitnessCache(records, 0), ("low", "high"), size=2)
    assert [h["expression"] for h in hof] == ["mms(X * W)", "W * sqrt(X)"]
    assert hof[0]["same_scores"] == ["mms(X * (W + W))"] and "same_scores" not in hof[1]
    assert hof[0]["fitness"] == {"low": 0.5, "high": 0.25}
