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
