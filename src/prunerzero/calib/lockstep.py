"""Run every calibration batch through a layer in lockstep, all of them pausing at each linear.

One-pass pruning (pipeline.py) prunes a linear the moment its input is known from every
calibration sample, so the linears after it in the layer see already-pruned outputs. Holding
every sample in one batch does that simply, but on CPU it is slow: at 16k tokens the layer's
elementwise work (norms, rotary embeddings, activations) streams 40-100 MB tensors that miss the
caches, and SmolLM2's forward over 32x512 tokens took 25.5 s in one batch against 20.4 s in
batches of 8 (one sitting, same process; docs/BENCHMARKS.md "floor").

Here each batch runs the layer as its own greenlet: a coroutine on this thread, from the greenlet
library (what gevent and SQLAlchemy use to suspend a call stack; Python's generators cannot pause
inside nested calls such as a module's forward hook). A batch calls `pause(name)` when it reaches
a linear, after adding its input to the statistics; when every batch has paused at that linear,
`on_all_at(name)` prunes it and the batches go on, one after another, to the next. Each linear so
sees every batch's input before it is pruned, and every batch's output comes from the pruned
linears, exactly as with one batch. Only one batch computes at a time: torch's own threads keep
the cores, as in a plain batched forward. Memory is that of one batch holding everything (the
paused batches keep their activations), less the larger temporaries of the single batch.

Torch's grad mode and autocast state are per thread, so the greenlets share the caller's.
"""
from __future__ import annotations

from typing import Callable, Generic, TypeVar

from greenlet import GreenletExit, getcurrent, greenlet

T = TypeVar("T")


class BatchesDiverged(RuntimeError):
    """The batches did not reach the same linears in the same order (data-dependent routing)."""


class Lockstep(Generic[T]):
    """Runs one task per batch; a task pauses with `pause(name)` from anywhere in its call stack."""

    def __init__(self) -> None:
        self._scheduler: greenlet | None = None
        self.batch = 0  # index of the task now running: lets a caller keep per-batch state

    def pause(self, name: str) -> None:
        """Inside a task: wait here until every task has paused at `name` and it was handled."""
        if self._scheduler is None or getcurrent() is self._scheduler:
            raise RuntimeError("Lockstep.pause called outside a task of Lockstep.run")
        self._scheduler.switch(("paused", name))

    def run(self, tasks: list[Callable[[], T]], on_all_at: Callable[[str], None]) -> list[T]:
        """Run `tasks` in lockstep; returns their results in order. An exception in a task (or in
        `on_all_at`) propagates here, and the other tasks are ended."""
        self._scheduler = getcurrent()
        lets = [greenlet(lambda task=task: ("done", task())) for task in tasks]  # parent: this greenlet

        def resume_all() -> list[tuple[str, object]]:
            reports = []
            for i, let in enumerate(lets):
                self.batch = i
                reports.append(let.switch())  # runs task i until it pauses or returns
            return reports

        try:
            reports = resume_all()
            while True:
                kinds = {kind for kind, _ in reports}
                if kinds == {"done"}:
                    return [value for _, value in reports]  # type: ignore[misc]
                names = {value for kind, value in reports if kind == "paused"}
                if kinds != {"paused"} or len(names) != 1:
                    seen = ", ".join(f"batch {i}: {v if k == 'paused' else 'finished'}"
                                     for i, (k, v) in enumerate(reports))
                    raise BatchesDiverged(f"calibration batches reached different linears ({seen})")
                on_all_at(names.pop())
                reports = resume_all()
        finally:
            for let in lets:
                if let and not let.dead:  # started and paused: unwind its stack (finally blocks, hooks)
                    let.throw(GreenletExit)
            self._scheduler = None
