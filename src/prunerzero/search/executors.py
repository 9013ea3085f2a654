"""Where the search's fitness calls run: in this process (``serial``) or on Ray actors (``ray``).

An executor takes a batch of :class:`EvalRequest` (one candidate at one fidelity) and yields one
:class:`EvalResult` per request as each completes, in any order.  The engine logs every result the
moment it arrives and continues in its own deterministic order only after the batch, so the
choice of executor changes how fast a search runs, never what it finds.

Both executors decide a candidate's outcome with the same :func:`evaluate_candidate`: any
``Exception`` from the fitness, or a non-finite value, makes the candidate invalid (with the
reason); ``BaseException`` (KeyboardInterrupt, a simulated crash) stops the run.

``ray``: ``workers`` actors each build their own fitness once, from a picklable ``factory``
(for a real job: load the model, read the run's saved statistics), then evaluate one candidate
at a time.  Each free actor takes the next request, so a batch waits on its slowest candidate only
at its tail.  An actor that dies (``RayActorError``: process killed, node lost, out of memory)
is replaced by a new one and its candidate resubmitted; a candidate on which ``max_attempts``
workers died is recorded invalid (it is then the likeliest cause, and the search must not loop
forever), unless deaths keep coming without any result in between: then the cluster is the
cause and the run stops with an error (resumable) instead of marking every candidate invalid.  Invalid
candidates are never retried: the worker reports them like any value.
"""
from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Protocol

from ..errors import UserError
from ..symbolic import InvalidMetricError, Metric

log = logging.getLogger(__name__)
KINDS = ("serial", "ray")
INSTALL_RAY = "the ray executor needs Ray: install it with pip install 'prunerzero[ray]'"


@dataclass(frozen=True)
class EvalRequest:
    key: str  # canonical key (the cache's name for the candidate)
    metric: Metric
    fidelity: str


@dataclass(frozen=True)
class EvalResult:
    request: EvalRequest
    value: float  # +inf when invalid
    reason: str | None  # why invalid
    seconds: float  # time inside Fitness.evaluate


class Executor(Protocol):
    replacements: int  # workers replaced after dying (0 for serial)

    def map_unordered(self, requests: Iterable[EvalRequest]) -> Iterator[EvalResult]:
        """One result per request, each as soon as it is known; order unspecified."""
        ...

    def close(self) -> None: ...


def evaluate_candidate(fitness: Any, metric: Metric, fidelity: str) -> tuple[float, str | None, float]:
    """(value, reason, seconds): value +inf with a reason for an invalid candidate."""
    t0 = time.perf_counter()
    try:
        value, reason = float(fitness.evaluate(metric, fidelity)), None
        if not math.isfinite(value):
            value, reason = math.inf, f"non-finite fitness {value}"
    except InvalidMetricError as exc:
        value, reason = math.inf, exc.reason
    except Exception as exc:  # noqa: BLE001 -- any failure of one candidate must not stop the run
        value, reason = math.inf, f"{type(exc).__name__}: {exc}"
    return value, reason, time.perf_counter() - t0


class SerialExecutor:
    """In this process, in submission order (so its log order is the engine's member order)."""

    def __init__(self, fitness: Any) -> None:
        self.fitness = fitness
        self.replacements = 0

    def map_unordered(self, requests: Iterable[EvalRequest]) -> Iterator[EvalResult]:
        for request in requests:
            yield EvalResult(request, *evaluate_candidate(self.fitness, request.metric, request.fidelity))

    def close(self) -> None:
        pass

    def __enter__(self) -> "SerialExecutor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError(INSTALL_RAY) from None
    return ray


class _Worker:
    """The Ray actor's body: builds the fitness once, then evaluates candidates one at a time."""

    def __init__(self, factory: Callable[[], Any], threads: int | None) -> None:
        if threads:
            import torch

            torch.set_num_threads(threads)  # the actor's share of the node's cores
        self.fitness, self.error = None, None
        try:
            self.fitness = factory()
        except Exception as exc:  # noqa: BLE001 -- reported to the driver by describe()
            self.error = f"{type(exc).__name__}: {exc}"

    def describe(self) -> dict[str, Any]:
        if self.fitness is None:
            return {"error": self.error}
        from .checkpoint import json_roundtrip

        return {"fitness": json_roundtrip(self.fitness.describe()), "fidelities": list(self.fitness.fidelities),
                "pid": os.getpid()}

    def evaluate(self, metric: Metric, fidelity: str) -> tuple[float, str | None, float]:
        return evaluate_candidate(self.fitness, metric, fidelity)


@dataclass
class _Slot:
    """One worker position: its current actor and how often actors died there while starting."""

    index: int
    actor: Any = None
    start_failures: int = 0


@dataclass
class _Task:
    slot: _Slot
    request: EvalRequest | None  # None: the actor's start-up (describe) call
    attempt: int = 1
    batch: object | None = None  # the map_unordered call that wants the result


class RayExecutor:
    """Candidates evaluated by ``workers`` Ray actors; see the module doc.

    ``address``: None starts a local cluster (unless this process already joined one),
    "auto" or "HOST:PORT" joins an existing one.  ``cpus_per_worker`` is both the actor's CPU
    request and its torch thread count (default: a local cluster's cores split evenly, else 1).
    One GPU per worker when the cluster has GPUs and ``use_gpus``; ``workers`` defaults to the
    number of GPUs, or 1.  ``expect``: ``fitness.describe()`` of the driver's fitness; a worker
    that builds a different one is refused.  The cluster is joined and the actors started on
    first use (or ``start()``), so a finished run resumes without touching Ray.
    """

    def __init__(self, factory: Callable[[], Any], workers: int | None = None, address: str | None = None,
                 cpus_per_worker: int | None = None, use_gpus: bool = True, expect: dict | None = None,
                 max_attempts: int = 3) -> None:
        self.ray = import_ray()
        if workers is not None and workers < 1:
            raise UserError(f"--workers must be at least 1, got {workers}")
        if cpus_per_worker is not None and cpus_per_worker < 1:
            raise UserError(f"--cpus-per-worker must be at least 1, got {cpus_per_worker}")
        self.factory, self.address, self.use_gpus = factory, address, use_gpus
        self.workers, self.cpus_per_worker, self.gpus_per_worker = workers, cpus_per_worker, 0
        self.expect, self.max_attempts = expect, max_attempts
        self.replacements = 0
        self._deaths_in_a_row = 0  # evaluations that killed their worker since the last result
        self.seconds: dict[str, float] = {}  # "cluster": joining/starting Ray, "ready": until every actor is up
        self._connected = False
        self._slots: list[_Slot] = []
        self._idle: deque[_Slot] = deque()
        self._inflight: dict[Any, _Task] = {}  # object ref -> what it is
        self._actor_cls: Any = None

    # ------------------------------------------------------------------ cluster and actors
    def start(self) -> None:
        if self._slots:
            return
        ray, t0 = self.ray, time.perf_counter()
        if ray.is_initialized():
            if self.address is not None:
                log.warning("Ray is already initialised in this process; using that cluster, not %s", self.address)
            self._size_for_cluster(ray.cluster_resources())
        elif self.address is None:  # a fresh local cluster, sized for the workers
            import torch

            gpus = torch.cuda.device_count() if self.use_gpus else 0
            workers = self.workers or max(gpus, 1)
            cpus = self.cpus_per_worker or max(1, (os.cpu_count() or 1) // workers)
            ray.init(address="local", num_cpus=workers * cpus, num_gpus=gpus, include_dashboard=False)
            self._connected = True  # ours: shut down (the local cluster with it) on close
            self._size_for_cluster(ray.cluster_resources(), default_cpus=cpus)
        else:
            _probe(self.address)
            try:
                ray.init(address=self.address)
            except Exception as exc:  # noqa: BLE001 -- ConnectionError, ValueError (bad address), ...
                raise UserError(f"cannot join the Ray cluster at {self.address}: {exc}".splitlines()[0]) from None
            self._connected = True  # disconnect on close; the cluster itself stays up
            self._size_for_cluster(ray.cluster_resources())
        self.seconds["cluster"] = time.perf_counter() - t0
        self._actor_cls = ray.remote(_Worker).options(num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker,
                                                      max_restarts=0)
        self._slots = [_Slot(i) for i in range(self.workers)]
        for slot in self._slots:
            self._launch(slot)
        log.info("Ray executor: %d workers, %d CPU(s) and %d GPU(s) each", self.workers, self.cpus_per_worker,
                 self.gpus_per_worker)

    def _size_for_cluster(self, total: dict[str, float], default_cpus: int = 1) -> None:
        gpus = int(total.get("GPU", 0)) if self.use_gpus else 0
        self.gpus_per_worker = 1 if gpus >= 1 else 0
        self.workers = self.workers or max(gpus, 1)
        self.cpus_per_worker = self.cpus_per_worker or default_cpus
        cpus = total.get("CPU", 0)
        if cpus < self.cpus_per_worker:
            raise UserError(f"the Ray cluster has {cpus:g} CPUs, fewer than one worker's {self.cpus_per_worker}")
        fit = min(self.workers, int(cpus // self.cpus_per_worker), *([gpus] if self.gpus_per_worker else []))
        if fit < self.workers:
            log.warning("the Ray cluster (%s) fits %d of the %d workers; the others start when resources free up",
                        {k: total.get(k, 0) for k in ("CPU", "GPU")}, fit, self.workers)

    def _launch(self, slot: _Slot) -> None:
        slot.actor = self._actor_cls.remote(self.factory, self.cpus_per_worker)
        self._inflight[slot.actor.describe.remote()] = _Task(slot, None)

    def _replace(self, slot: _Slot) -> None:
        self.replacements += 1
        try:
            self.ray.kill(slot.actor, no_restart=True)
        except Exception:  # noqa: BLE001 -- already gone
            pass
        self._launch(slot)

    def wait_ready(self) -> None:
        """Block until every actor has built its fitness (for timing start-up; never needed)."""
        self.start()
        t0 = time.perf_counter()
        while any(t.request is None for t in self._inflight.values()):
            self._settle(self._next_done(), batch=None)
        self.seconds["ready"] = self.seconds.get("cluster", 0.0) + time.perf_counter() - t0

    # ------------------------------------------------------------------ the event loop
    def map_unordered(self, requests: Iterable[EvalRequest]) -> Iterator[EvalResult]:
        self.start()
        batch = object()
        queue: deque[tuple[EvalRequest, int]] = deque((request, 1) for request in requests)
        # Results of an abandoned batch (the consumer stopped early) are dropped when they arrive.
        while queue or any(t.batch is batch for t in self._inflight.values()):
            while queue and self._idle:
                slot = self._idle.popleft()
                request, attempt = queue.popleft()
                ref = slot.actor.evaluate.remote(request.metric, request.fidelity)
                self._inflight[ref] = _Task(slot, request, attempt, batch)
            result = self._settle(self._next_done(), batch, queue)
            if result is not None:
                yield result

    def _next_done(self) -> Any:
        if not self._inflight:  # every slot is idle yet requests wait: cannot happen
            raise RuntimeError("Ray executor has no worker running")
        (ref,), _ = self.ray.wait(list(self._inflight), num_returns=1)
        return ref

    def _settle(self, ref: Any, batch: object | None,
                queue: deque[tuple[EvalRequest, int]] | None = None) -> EvalResult | None:
        """Handle one finished call: start-up done, a result, or a dead worker."""
        ray, task = self.ray, self._inflight.pop(ref)
        slot, request = task.slot, task.request
        try:
            out = ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            what = f"while evaluating {request.metric} at {request.fidelity}" if request else "while starting"
            log.warning("Ray worker %d died %s (%s); starting a replacement", slot.index, what,
                        type(exc).__name__)
            if request is None:
                slot.start_failures += 1
                if slot.start_failures >= self.max_attempts:
                    raise UserError(f"Ray workers died {slot.start_failures} times while starting (loading the "
                                    f"model and statistics): {str(exc).splitlines()[0]}") from None
            else:
                # Many deaths without a single result in between is the cluster, not the candidates
                # (e.g. every worker runs out of memory): stop (resumable) rather than mark all invalid.
                self._deaths_in_a_row += 1
                if self._deaths_in_a_row >= self.max_attempts * max(self.workers, 2):
                    raise UserError(f"Ray workers died {self._deaths_in_a_row} times in a row without a result "
                                    f"(last: {str(exc).splitlines()[0]}); stopping, --resume continues the run"
                                    ) from None
            self._replace(slot)
            if request is None or task.batch is not batch or queue is None:
                return None
            if task.attempt < self.max_attempts:
                queue.appendleft((request, task.attempt + 1))  # retried first: it waited longest
                return None
            return EvalResult(request, math.inf, f"{task.attempt} Ray workers died evaluating it "
                                             f"({type(exc).__name__})", 0.0)
        if request is None:
            self._check_started(out)
            slot.start_failures = 0
            self._idle.append(slot)
            return None
        self._idle.append(slot)
        self._deaths_in_a_row = 0
        return EvalResult(request, *out) if task.batch is batch else None

    def _check_started(self, info: dict[str, Any]) -> None:
        if "error" in info:
            raise UserError(f"a Ray worker could not build its fitness: {info['error']}".splitlines()[0])
        if self.expect is not None:
            from .checkpoint import json_roundtrip

            if info["fitness"] != json_roundtrip(self.expect):
                raise UserError("a Ray worker built a different fitness than this process "
                                f"(worker: {info['fitness']}; here: {json_roundtrip(self.expect)})")

    def close(self) -> None:
        for slot in self._slots:
            try:
                self.ray.kill(slot.actor, no_restart=True)
            except Exception:  # noqa: BLE001 -- already gone, or Ray already shut down
                pass
        self._slots, self._inflight, self._idle = [], {}, deque()
        if self._connected:
            self.ray.shutdown()
            self._connected = False

    def __enter__(self) -> "RayExecutor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _probe(address: str) -> None:
    """Fail fast on a HOST:PORT where nothing listens (ray.init would retry for minutes)."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto" and the like: ray.init resolves it and fails quickly itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as exc:
        raise UserError(f"cannot join the Ray cluster at {address}: nothing answers there ({exc})") from None


@dataclass(frozen=True)
class ExecutorSpec:
    """The executor a job asks for (``prunerzero search --executor ...``).  Not part of the run's
    saved settings: a run started on one executor may resume on the other."""

    kind: str = "serial"
    workers: int | None = None
    address: str | None = None
    cpus_per_worker: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UserError(f"--executor must be one of {', '.join(KINDS)}, not {self.kind!r}")
        if self.kind == "serial" and (self.workers, self.address, self.cpus_per_worker) != (None, None, None):
            raise UserError("--workers, --ray-address and --cpus-per-worker need --executor ray")

    def check(self) -> None:
        """Fail now (before any model is loaded) if the executor cannot exist here."""
        if self.kind == "ray":
            import_ray()

    def build(self, fitness: Any, factory: Callable[[], Any] | None = None, use_gpus: bool = True) -> Any:
        """The executor; ``factory`` (picklable, builds a fitness equal to ``fitness``) for ray."""
        if self.kind == "serial":
            return SerialExecutor(fitness)
        if factory is None:
            raise ValueError("the ray executor needs a fitness factory")
        return RayExecutor(factory, self.workers, self.address, self.cpus_per_worker, use_gpus=use_gpus,
                           expect=fitness.describe())
