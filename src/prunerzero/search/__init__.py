"""Genetic-programming search for pruning metrics (Pruner-Zero, arXiv 2406.02924).

``run_search(fitness, SearchConfig(...), out_dir)`` evolves trees of the ``symbolic`` metric
language against any object implementing ``Fitness`` (lower is better, several fidelities,
cheapest first); everything is logged to ``out_dir`` as it happens and a killed run resumes
to the same result (``resume=True``).  ``load_run(out_dir)`` reads a run back; the file
formats are documented in ``checkpoint``.  ``toy.ToyFitness`` is a cheap real fitness
(pruning one random layer) for tests and demos.  ``executors``: candidates are evaluated in
this process (serial, the default) or by Ray actors (``run_search(..., executor=RayExecutor(...))``),
with the same result.

A whole ``prunerzero search`` (a *job*) on a real model: ``job`` holds its settings (job.json) and
checks, ``context`` loads the model, texts and statistics once, ``fitness`` scores a candidate
(``proxies``: the rungs' math), ``run.run_job`` runs the GP and then ``leaderboard``. One candidate
at one fidelity, handed to an executor, is an ``executors.EvalRequest``.
"""
from __future__ import annotations

from typing import Any

__all__ = ["SEED_METRICS", "Fitness", "SearchConfig", "SearchResult", "load_run", "run_search"]
_HOME = {"load_run": "checkpoint", "SEED_METRICS": "config", "SearchConfig": "config", "Fitness": "engine",
         "SearchResult": "engine", "run_search": "engine"}


def __getattr__(name: str) -> Any:
    """The names above, loaded on first use: the command line reads ``search.job``'s settings without
    loading the engine (and torch) first."""
    if name not in _HOME:
        raise AttributeError(name)
    import importlib

    return getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
