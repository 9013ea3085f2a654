"""Executors: Ray gives the same search as serial, survives a dying worker and an interrupted run,
and the CLI's --executor flags (ToyFitness for speed; one CLI test on a tiny saved model)."""
from __future__ import annotations

import functools
import os
import sys
from collections import Counter
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch

from prunerzero.cli import main
from prunerzero.search import SearchConfig, run_search
from prunerzero.search import checkpoint as ck
from prunerzero.search.executors import RayExecutor
from prunerzero.search.toy import ToyFitness

import test_search_engine  # noqa: E402 -- a sibling test module (tests/ is on sys.path)
from test_search_engine import PickyFitness  # noqa: E402

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report attempts (no network here)

# Small, but with invalid candidates (tanh raises, exp is declared invalid) and rescoring.
CFG = SearchConfig(population=10, generations=3, seed=5, hall_of_fame_size=5,
                   ops=("tanh", "exp", "mul", "sqrt", "add", "abs", "div"))


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Ray workers here run one torch thread each (one CPU each); so does this process, so that
    serial and Ray compute the very same floats."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    import ray.cloudpickle  # noqa: F811  (the submodule, for register_pickle_by_value)

    # The fitness classes live in test modules, which Ray workers cannot import: ship them by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.cloudpickle.register_pickle_by_value(test_search_engine)
    ray.init(num_cpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()


class DyingToy(PickyFitness):
    """The worker process exits hard on its ``at``-th evaluation -- once per marker file."""

    def __init__(self, marker: str, at: int) -> None:
        super().__init__()
        self.marker, self.at = marker, at

    def evaluate(self, metric, fidelity):  # type: ignore[override]
        if self.calls + 1 == self.at:
            try:
                os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL))  # exactly one worker wins
            except FileExistsError:
                pass
            else:
                os._exit(1)
        return super().evaluate(metric, fidelity)


class Crash(BaseException):
    """Stands in for kill -9 of the driver."""


def _ray(factory=PickyFitness, workers: int = 2) -> RayExecutor:
    return RayExecutor(factory, workers=workers, expect=PickyFitness().describe())


def _search(out: Path, executor=None, **kw):
    return run_search(PickyFitness(), CFG, out, progress=False, executor=executor, **kw)


def _records(out: Path) -> Counter:
    """The log as a multiset (line order differs between executors)."""
    return Counter((r["generation"], r["key"], r["fidelity"], r["fitness"], r["reason"])
                   for r in ck.read_log(out / ck.LOG))


@pytest.fixture(scope="module")
def serial_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("serial")
    return _search(out), _records(out)


def test_ray_and_serial_find_the_same(ray_cluster, serial_run, tmp_path):
    ref, ref_log = serial_run
    with _ray() as ex:
        res = _search(tmp_path, ex)
    assert res.hall_of_fame == ref.hall_of_fame and res.population == ref.population
    assert res.stats == ref.stats and res.stats["worker_replacements"] == 0
    assert _records(tmp_path) == ref_log and max(ref_log.values()) == 1
    assert any(reason is not None for *_, reason in ref_log)  # invalid candidates were recorded, not retried


def test_a_dying_worker_is_replaced_and_nothing_is_lost(ray_cluster, serial_run, tmp_path):
    ref, ref_log = serial_run
    marker = tmp_path / "died"
    with _ray(functools.partial(DyingToy, str(marker), 4)) as ex:
        res = _search(tmp_path / "run", ex)
    assert marker.exists() and res.stats["worker_replacements"] == 1
    assert res.hall_of_fame == ref.hall_of_fame and res.population == ref.population
    assert _records(tmp_path / "run") == ref_log  # every evaluation exactly once, the retried one included


@pytest.mark.parametrize("first", ["ray", "serial"])
def test_interrupted_run_resumes_on_ray(ray_cluster, serial_run, tmp_path, monkeypatch, first):
    ref, ref_log = serial_run
    stop_after = sum(1 for g, *_ in ref_log.elements() if g == 0) + 3  # a few results into generation 1
    real_append, appended = ck.EvaluationLog.append, []

    def append(self, record):
        if len(appended) == stop_after:
            raise Crash()
        appended.append(record)
        real_append(self, record)

    monkeypatch.setattr(ck.EvaluationLog, "append", append)
    with pytest.raises(Crash), _ray() if first == "ray" else nullcontext() as ex:
        _search(tmp_path, ex)  # serial when ex is None
    monkeypatch.setattr(ck.EvaluationLog, "append", real_append)
    assert len(ck.read_log(tmp_path / ck.LOG)) == stop_after
    with _ray() as ex:
        res = _search(tmp_path, ex, resume=True)
    assert res.hall_of_fame == ref.hall_of_fame and res.population == ref.population
    assert _records(tmp_path) == ref_log


def _cli_search(model_dir, wikitext, out, *extra: str) -> list[str]:
    return ["--quiet", "search", "--model", str(model_dir), "--out", str(out), "--population", "6",
            "--generations", "2", "--seed", "0", "--nsamples", "4", "--seqlen", "32",
            "--fidelity-tokens", "64,128", "--report-data", str(wikitext), "--report-tokens", "64",
            "--leaderboard-top", "1", "--baselines", "magnitude", "--reconstruct", "obs", *extra]


def test_cli_ray_workers_build_the_job_fitness_from_the_run_folder(ray_cluster, tiny_model_dir, wikitext_test,
                                                                    tmp_path, monkeypatch):
    """ProxyFitnessFactory in a worker: model, search split, X, G and H (--reconstruct obs) read back."""
    monkeypatch.setenv("PRUNERZERO_CACHE", str(tmp_path / "cache"))
    assert main(_cli_search(tiny_model_dir, wikitext_test, tmp_path / "serial")) == 0
    assert main(_cli_search(tiny_model_dir, wikitext_test, tmp_path / "ray", "--executor", "ray", "--workers", "1")) == 0
    hof = [ck.read_json(tmp_path / run / ck.HALL_OF_FAME) for run in ("serial", "ray")]
    assert hof[0] == hof[1]
    log = (tmp_path / "serial" / ck.LOG).read_text()
    # A run started serially resumes on Ray (here: finished, so nothing is redone and Ray is not needed).
    assert main(["--quiet", "search", "--resume", str(tmp_path / "serial"), "--executor", "ray"]) == 0
    assert (tmp_path / "serial" / ck.LOG).read_text() == log


def test_cli_without_ray_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError, as when it is not installed
    assert main(["--quiet", "search", "--out", str(tmp_path / "run"), "--executor", "ray"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'prunerzero[ray]'" in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()
    assert main(["--quiet", "search", "--out", str(tmp_path / "run"), "--workers", "2"]) == 2
    assert "need --executor ray" in capsys.readouterr().err


class KillerToy(ToyFitness):
    """Any metric using tanh kills the worker evaluating it, every time."""

    def evaluate(self, metric, fidelity):  # type: ignore[override]
        if "tanh" in str(metric):
            os._exit(1)
        return super().evaluate(metric, fidelity)


def test_a_candidate_that_keeps_killing_workers_is_invalid_but_a_dying_cluster_stops(ray_cluster):
    from prunerzero.errors import UserError
    from prunerzero.search.executors import EvalRequest
    from prunerzero.symbolic import load_metric

    def job(formula: str) -> EvalRequest:
        return EvalRequest(formula, load_metric(formula), "low")

    with RayExecutor(KillerToy, workers=1, max_attempts=2) as ex:
        out = {r.request.key: r for r in ex.map_unordered([job("tanh(W)"), job("W * sqrt(X)")])}
        assert out["tanh(W)"].value == float("inf") and "2 Ray workers died" in out["tanh(W)"].reason
        assert out["W * sqrt(X)"].reason is None and ex.replacements == 2
        ex.max_attempts = 1  # now 2 deaths in a row (tanh(W), then tanh(X)) mean the cluster is at fault
        with pytest.raises(UserError, match="died 2 times in a row"):
            list(ex.map_unordered([job("tanh(W)"), job("tanh(X)")]))
