"""Calibration batches in lockstep (calib/lockstep.py): every task pauses at each name until all
have reached it, exceptions and diverging batches end every task, and the statistics collector
still shares one accumulator between linears fed the same tensor when batches interleave."""
from __future__ import annotations

import pytest
import torch

from conftest import build_tiny_model
from prunerzero.calib.lockstep import BatchesDiverged, Lockstep
from prunerzero.calib.stats import StatsCollector
from prunerzero.errors import UserError
from prunerzero.masks import parse_target
from prunerzero.methods import get_method
from prunerzero.pipeline import prune_model


def _task(lockstep: Lockstep, log: list, i: int, names: tuple[str, ...]):
    def nested(name: str) -> None:  # pauses from inside a nested call, as a forward hook does
        log.append(("arrive", i, name))
        lockstep.pause(name)
        log.append(("leave", i, name))

    def run() -> int:
        for name in names:
            nested(name)
        return 10 * i

    return run


def test_tasks_pause_at_each_name_until_every_task_arrived():
    lockstep, log, handled = Lockstep(), [], []

    def on_all_at(name: str) -> None:
        assert sum(1 for e in log if e[0] == "arrive" and e[2] == name) == 3  # all three are there
        assert not any(e[0] == "leave" and e[2] == name for e in log)  # and none went on
        handled.append(name)

    results = lockstep.run([_task(lockstep, log, i, ("q", "k", "down")) for i in range(3)], on_all_at)
    assert results == [0, 10, 20]
    assert handled == ["q", "k", "down"]
    # Between two handled names the tasks run one after another, in order.
    assert log[:3] == [("arrive", 0, "q"), ("arrive", 1, "q"), ("arrive", 2, "q")]
    assert log[3:5] == [("leave", 0, "q"), ("arrive", 0, "k")]


def test_batch_index_names_the_running_task():
    lockstep, seen = Lockstep(), []

    def task():
        seen.append(lockstep.batch)
        lockstep.pause("a")
        seen.append(lockstep.batch)
        return lockstep.batch

    assert lockstep.run([task, task], lambda name: None) == [0, 1]
    assert seen == [0, 1, 0, 1]


def test_diverging_tasks_raise_and_are_ended():
    lockstep, ended = Lockstep(), []

    def task(names):
        def run():
            try:
                for name in names:
                    lockstep.pause(name)
            finally:
                ended.append(names)
        return run

    with pytest.raises(BatchesDiverged, match="batch 0: q, batch 1: expert3"):
        lockstep.run([task(("q",)), task(("expert3",))], lambda name: None)
    assert sorted(ended) == [("expert3",), ("q",)]  # both stacks unwound: their finally blocks ran
    with pytest.raises(BatchesDiverged, match="finished"):
        lockstep.run([task(("q",)), task(())], lambda name: None)


def test_an_exception_in_a_task_or_handler_propagates_and_ends_the_others():
    lockstep, ended = Lockstep(), []

    def task(fail: bool):
        def run():
            try:
                lockstep.pause("a")
                if fail:
                    raise ValueError("boom")
                lockstep.pause("b")
            finally:
                ended.append(fail)
        return run

    with pytest.raises(ValueError, match="boom"):
        lockstep.run([task(False), task(True), task(False)], lambda name: None)
    assert sorted(ended) == [False, False, True]

    def handler(name):
        raise KeyError(name)

    ended.clear()
    with pytest.raises(KeyError):
        lockstep.run([task(False), task(False)], handler)
    assert ended == [False, False]


def test_pause_outside_a_run_is_an_error():
    with pytest.raises(RuntimeError, match="outside"):
        Lockstep().pause("a")


def test_interleaved_batches_still_share_one_accumulator():
    """q, k and v see the same tensor within each batch; with batches interleaved (q of every batch,
    then k of every batch) they still share one accumulator, which counts every batch's tokens once."""
    collector = StatsCollector(frozenset({"X", "H"}))
    x = [torch.randn(2, 5, 8), torch.randn(3, 5, 8)]
    for name in ("q", "k", "v"):
        for batch, xb in enumerate(x):
            collector.observe(name, xb, batch=batch)
    acc = collector.accumulators
    assert acc["q"] is acc["k"] is acc["v"]
    assert acc["q"].tokens == 25
    flat = torch.cat([t.reshape(-1, 8) for t in x])
    torch.testing.assert_close(collector.stats("v").x_mean_sq, flat.pow(2).mean(0))
    torch.testing.assert_close(collector.stats("v").hessian, flat.t() @ flat / 25)


def test_diverging_batches_are_one_clear_error_from_prune_model(calib_ids, monkeypatch):
    def diverge(self, tasks, on_all_at):
        raise BatchesDiverged("calibration batches reached different linears (...)")

    monkeypatch.setattr(Lockstep, "run", diverge)
    with pytest.raises(UserError, match="model.layers.0: calibration batches reached different linears"):
        prune_model(build_tiny_model("llama"), get_method("wanda"), parse_target(0.5), calib_ids, batch_size=2,
                    within_layer="sequential", progress=False)
