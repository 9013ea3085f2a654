"""`prunerzero analyze`: figures and statistics of a search run, on planted synthetic runs (known
answers) and on a real (toy-fitness) search run."""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from prunerzero.analysis import analyze_run
from prunerzero.cli import main
from prunerzero.errors import UserError

FIGURES = ("fitness_by_generation.png", "invalid_duplicate_share.png", "feature_correlations.png")


def _write_run(out: Path, rows: list[tuple[int, str, float | None]], leaderboard: list[dict] | None = None,
               high: dict[str, float] | None = None) -> None:
    """A run folder in the documented formats: config.json, evaluations.jsonl (cheap fidelity
    "1024tok" for every row, "4096tok" for the keys in ``high``) and checkpoint.json."""
    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps({"format": 1, "search": {"population": 10, "generations": 4,
                                                                         "seed": 0},
                                                 "fidelities": ["1024tok", "4096tok"], "fitness": {}}))
    with open(out / "evaluations.jsonl", "w") as fh:
        for gen, expr, fit in rows:
            rec = {"generation": gen, "expression": expr, "key": expr, "fidelity": "1024tok", "fitness": fit,
                   "reason": None if fit is not None else "nan scores", "seconds": 0.1, "time": 0.0}
            fh.write(json.dumps(rec) + "\n")
            if high and expr in high:
                fh.write(json.dumps({**rec, "fidelity": "4096tok", "fitness": high[expr]}) + "\n")
    gens = sorted({g for g, _, _ in rows})
    summaries = []
    for g in gens:
        fits = [f for gg, _, f in rows if gg == g]
        valid = sorted(f for f in fits if f is not None)
        summaries.append({"generation": g, "best": valid[0], "median": valid[len(valid) // 2],
                          "invalid_share": 1 - len(valid) / len(fits), "duplicates_replaced": g,
                          "duplicate_share": g / 10})
    (out / "checkpoint.json").write_text(json.dumps({"format": 1, "generation": gens[-1], "finished": True,
                                                     "generations": summaries, "population": []}))
    if leaderboard is not None:
        (out / "leaderboard.jsonl").write_text("".join(json.dumps(r) + "\n" for r in leaderboard))


def _planted_rows(n: int = 60, seed: int = 0) -> tuple[list, dict[str, float]]:
    """Metrics that use G have ~e-fold lower perplexity; everything else is noise."""
    rng = random.Random(seed)
    rows, high = [], {}
    for i in range(n):
        uses_g = i % 2 == 0
        op = rng.choice(["sqrt", "abs", "log", "tanh"])
        expr = f"{op}(W) * {'G' if uses_g else 'X'} + {i + 1}"
        ppl = math.exp(3.0 - (1.0 if uses_g else 0.0) + rng.gauss(0, 0.3))
        rows.append((i % 4, expr, ppl))
        if i % 3 == 0:
            high[expr] = ppl * math.exp(rng.gauss(0, 0.05))
    rows += [(1, "exp(exp(W)) + 1000", None), (2, "exp(exp(X)) + 1001", None)]
    return rows, high


def test_planted_g_effect_gives_negative_rho_and_a_principle(tmp_path):
    rows, high = _planted_rows()
    board = [{"label": "dense", "setting": None, "ppl": 10.0}] + [
        {"label": f"searched #{k}", "setting": "0.5", "formula": f"f{k}", "key": f"f{k}",
         "search_fitness": {"1024tok": 10.0 + k, "4096tok": 11.0 + k}, "ppl": 20.0 + k} for k in (1, 2, 3)]
    run = tmp_path / "run"
    _write_run(run, rows, board, high)
    result = analyze_run(run)

    corr = {c.feature: c for c in result["correlations"]}
    assert corr["G"].rho < -0.5 and corr["G"].rho_p < 1e-3 and corr["G"].tau < 0
    assert corr["X"].rho > 0.5  # X is the alternative to G in the planted metrics
    assert abs(corr["G"].rho) == max(abs(c.rho) for c in result["correlations"] if c.rho is not None)
    assert result["candidates"] == 60 and result["invalid_keys"] == 2
    assert result["principles"][0].startswith("Using G correlates with lower perplexity (Spearman -0.")
    top = {r["feature"]: r for r in result["deciles"]}
    assert top["G"]["top"] == 1.0 and top["G"]["bottom"] == 0.0

    agree = result["fidelity_agreement"][0]
    assert agree["n"] == 20 and agree["rho"] > 0.9
    assert result["leaderboard"]["by_fidelity"][0]["n"] == 3

    md = (run / "analysis.md").read_text()
    assert "Using G correlates with lower perplexity" in md
    assert "too small" in md  # three leaderboard rows cannot say much
    assert "1024tok vs 4096tok: n=20" in md
    for name in (*FIGURES, "fidelity_agreement.png"):
        assert (run / name).stat().st_size > 1000, name


def test_no_signal_says_so(tmp_path):
    rng = random.Random(1)
    rows = [(i % 3, f"W * X + {i + 1}", math.exp(2 + rng.random())) for i in range(20)]
    run = tmp_path / "run"
    _write_run(run, rows)
    out = tmp_path / "elsewhere"
    result = analyze_run(run, out)
    assert result["principles"] == [] and result["correlations"] == []
    md = (out / "analysis.md").read_text()
    assert "None: no property correlates" in md and "No leaderboard.jsonl" in md
    assert not (run / "analysis.md").exists()


def test_real_search_run_through_the_cli(tmp_path, capsys):
    import torch

    from prunerzero.search import SearchConfig, run_search
    from prunerzero.search.toy import ToyFitness

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_search(ToyFitness(), SearchConfig(population=10, generations=3, seed=3), tmp_path / "run", progress=False)
    finally:
        torch.set_num_threads(threads)
    assert main(["analyze", str(tmp_path / "run")]) == 0
    assert "distinct valid candidates" in capsys.readouterr().out
    md = (tmp_path / "run" / "analysis.md").read_text()
    assert "## Rank agreement between fidelities" in md and "low vs high" in md
    for name in FIGURES:
        assert (tmp_path / "run" / name).exists(), name


def test_bad_input_is_one_line(tmp_path, capsys):
    assert main(["analyze", str(tmp_path / "missing")]) == 2
    assert "run folder not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["analyze", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no evaluations.jsonl" in err and len(err.splitlines()) == 1
    with pytest.raises(UserError):
        analyze_run(tmp_path / "empty")


# ----------------------------------------------------------------------------- several runs
def _random_rows(n: int, seed: int, g_share: float, g_effect: float, scale: float) -> list:
    """Metrics using G (else X) with a random primitive; log fitness = log(scale) + 3 - g_effect
    (when G is used) + noise.  ``scale`` puts each run on its own fitness scale, as real runs are."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        uses_g = rng.random() < g_share
        op = rng.choice(["sqrt", "abs", "log", "tanh"])
        fit = scale * math.exp(3.0 - (g_effect if uses_g else 0.0) + rng.gauss(0, 0.3))
        rows.append((i % 4, f"{op}(W) * {'G' if uses_g else 'X'} + {i + 1}", fit))
    return rows + [(1, "exp(exp(W)) + 1000", None)]


def test_planted_g_effect_is_found_across_runs_with_its_consistency(tmp_path, capsys):
    runs = tmp_path / "runs"
    # Three runs where G helps, on fitness scales 1000x apart; a fourth where no metric uses G.
    for k, scale in enumerate((1.0, 1000.0, 0.01)):
        _write_run(runs / f"r{k}", _random_rows(40, seed=k, g_share=0.5, g_effect=1.0, scale=scale))
    _write_run(runs / "no-g", _random_rows(30, seed=9, g_share=0.0, g_effect=0.0, scale=5.0))
    out = tmp_path / "report"
    assert main(["analyze", *(str(runs / r) for r in ("r0", "r1", "r2", "no-g")), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "4 runs, 150 candidates pooled on the rank percentile within the run" in printed

    from prunerzero.analysis import analyze_runs

    result = analyze_runs([runs / "r0", runs / "r1", runs / "r2", runs / "no-g"], out)
    corr = {c.feature: c for c in result["correlations"]}
    g = corr["G"]
    assert g.runs == 3 and g.n == 120 and g.rho < -0.5 and g.rho_p < 1e-6 and g.tau < 0
    assert g.same_sign == 3 and g.opposite_sign == 0 and g.per_run["no-g"] == "constant"
    assert corr["X"].rho > 0.5 and corr["X"].runs == 3  # X is G's alternative (and constant in no-g: always used)
    assert result["correlations"][0].feature in ("G", "X")
    g_line = next(p for p in result["principles"] if p.startswith("Using G"))
    assert g_line.startswith("Using G goes with better fitness: pooled Spearman -0.")
    assert "significant with that sign in 3 of 4 runs (it varies in 3 of them)" in g_line
    assert any(p.startswith("Using X goes with worse fitness") for p in result["principles"])
    assert not any(p.startswith(("Using sqrt", "Using abs", "Using log", "Using tanh")) for p in result["principles"])

    md = (out / "cross_runs.md").read_text()
    assert "rank percentile within the run" in md and "## Principles these runs support" in md
    assert g_line in md and "| G * | 3 of 4 | 120 |" in md
    assert (out / "cross_runs_correlations.png").stat().st_size > 1000
    assert not any((runs / r / "analysis.md").exists() for r in ("r0", "r1", "r2", "no-g"))


def test_run_level_differences_alone_claim_no_principle(tmp_path):
    """G is common in a run with huge fitness values and rare in one with small ones, but within
    each run it does nothing: pooling raw values would 'find' that G hurts, percentiles must not."""
    from prunerzero.analysis import analyze_runs

    runs = tmp_path / "runs"
    _write_run(runs / "a", _random_rows(60, seed=1, g_share=0.8, g_effect=0.0, scale=1000.0))
    _write_run(runs / "b", _random_rows(60, seed=2, g_share=0.2, g_effect=0.0, scale=1.0))
    _write_run(runs / "c", _random_rows(60, seed=3, g_share=0.5, g_effect=0.0, scale=30.0))
    raw = [f for r in ("a", "b") for f in [json.loads(line) for line in (runs / r / "evaluations.jsonl").open()]
           if f["fitness"] is not None]
    from scipy.stats import spearmanr
    assert spearmanr([float("G" in f["expression"]) for f in raw], [f["fitness"] for f in raw]).statistic > 0.4

    result = analyze_runs([runs / "a", runs / "b", runs / "c"])  # default out: the runs' common parent
    assert result["principles"] == []
    assert result["markdown"] == runs / "cross_runs.md"
    md = result["markdown"].read_text()
    assert "None: no property correlates" in md
    assert sum(len(s.cands) for s in result["runs"]) == result["n"] == 180


def test_shared_candidates_count_once_per_run(tmp_path):
    from prunerzero.analysis import analyze_runs

    rows = [(0, f"W * X + {i + 1}", float(i + 1)) for i in range(6)] + [(1, "sqrt(W) * G + 1", 0.5)]
    _write_run(tmp_path / "a", rows)
    _write_run(tmp_path / "b", rows + [(2, "sqrt(W) * G + 1", 0.1)])  # a repeat within a run is one candidate
    result = analyze_runs([tmp_path / "a", tmp_path / "b"], tmp_path / "out")
    assert result["n"] == 14 and result["shared_keys"] == 7
    assert [s.percentiles[-1] for s in result["runs"]] == [0.5 / 7, 0.5 / 7]  # first record wins, as in the engine


def test_bad_cross_run_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    rows = [(i % 2, f"W * X + {i + 1}", float(i + 1)) for i in range(6)]
    _write_run(tmp_path / "good", rows)
    (tmp_path / "empty").mkdir()
    dead = tmp_path / "dead"
    dead.mkdir()
    (dead / "config.json").write_text(json.dumps({"format": 1, "fidelities": ["1024tok"]}))
    (dead / "evaluations.jsonl").write_text(json.dumps({"generation": 0, "expression": "exp(exp(W))", "key": "k",
                                                        "fidelity": "1024tok", "fitness": None}) + "\n")
    out = tmp_path / "out"
    cases = {
        (str(tmp_path / "good"), str(tmp_path / "good" / ".." / "good")): "given twice",
        (str(tmp_path / "good"), str(tmp_path / "empty")): "no evaluations.jsonl",
        (str(tmp_path / "good"), str(tmp_path / "missing")): "run folder not found",
        (str(tmp_path / "good"), str(dead)): "no valid candidate",
    }
    for args, message in cases.items():
        assert main(["analyze", *args, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
        assert not out.exists() and not (tmp_path / "cross_runs.md").exists()


def test_planted_gauge_invariance_is_found_and_worded(tmp_path):
    """Half the metrics are gauge-invariant (powers of Wanda's and the Taylor score) and score better:
    the analysis states it as a property of the whole formula."""
    rng = random.Random(0)
    invariant = ["W * sqrt(X)", "G * W", "sqr(W) * X", "sqr(G * W)", "W * sqrt(X) * G * W", "rown(W * sqrt(X))"]
    other = ["W", "W + X", "tanh(W) * X", "W * G + W * X", "sqrt(W) * X", "log(W) * G"]
    rows = [(i % 3, expr, math.exp(2.0 + rng.gauss(0, 0.1))) for i, expr in enumerate(invariant)]
    rows += [(i % 3, expr, math.exp(3.0 + rng.gauss(0, 0.1))) for i, expr in enumerate(other)]
    _write_run(tmp_path / "run", rows)
    result = analyze_run(tmp_path / "run", tmp_path / "out")
    by = {c.feature: c for c in result["correlations"]}
    assert by["gauge-invariant"].rho < -0.8 and by["gauge-invariant"].rho_p < 0.01
    assert any(p.startswith("Being gauge-invariant correlates with lower") for p in result["principles"])


def test_invariance_is_read_with_the_runs_terminals(tmp_path):
    """A run with scale-free terminals (--terminals layer): W, X and G are divided by their layer means,
    so a change of units cannot move any mask and every formula is units-invariant; with raw terminals
    GBLM's sum is not."""
    from prunerzero.analysis.stats import candidates, run_spec
    from prunerzero.search import load_run

    rng = random.Random(1)
    rows = [(i % 2, expr, math.exp(2.0 + rng.gauss(0, 0.1)))
            for i, expr in enumerate(["W * sqrt(X) + W * G", "W + X", "W * G + sqr(X)", "W * sqrt(X)", "G * W"])]
    _write_run(tmp_path / "run", rows)
    raw = load_run(tmp_path / "run")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    config["fitness"] = {"terminal_scale": "layer"}
    (tmp_path / "run" / "config.json").write_text(json.dumps(config))
    layer = load_run(tmp_path / "run")
    assert run_spec(raw).scale == "raw" and run_spec(layer).scale == "layer"
    units = {spec: {c.expression: c.features["units-invariant"]
                    for c in candidates(run["evaluations"], "1024tok", ["add", "mul", "sqrt", "sqr"], run_spec(run))[0]}
             for spec, run in (("raw", raw), ("layer", layer))}
    assert units["raw"]["W * sqrt(X) + W * G"] == 0.0 and units["raw"]["W * sqrt(X)"] == 1.0
    assert set(units["layer"].values()) == {1.0}
