"""The GP loop of Pruner-Zero: evolve metric trees, score them with a multi-fidelity fitness.

Each generation: build the population (generation 0: named seeds + ramped half-and-half;
later: elites + offspring by tournament, subtree crossover and subtree/point/hoist
mutation), simplify every new tree (``symbolic.simplify``) and replace any whose canonical
key is already in the population or was evaluated before (bounded retries: new random
operators, then fresh random trees); with ``config.invariance`` a tree whose masks change under
that level's rescalings (``symbolic.invariance``) is replaced the same way, before any evaluation;
with ``config.dedup == "masks"`` so is a tree whose masks on fixed random layers (nearly) equal those
of a member of this generation or of a valid candidate evaluated before (``known_masks``): it would
prune like it, so its fitness would differ only by float rounding.
Score every member at the cheapest fidelity (cache first), then successive halving: for each
next fidelity, the best ``ceil(rescore_fraction * n)`` of the n valid members not yet scored
there (ranked by the previous fidelity) are scored there.

Fidelities and ranking: *selection* (tournaments, elitism) uses the cheapest fidelity,
which every candidate has.  The *hall of fame* ranks candidates by the highest fidelity
they were scored at first (anything proven at "high" outranks anything only seen at
"low", since scores of different fidelities are not comparable), then by that score.

Evaluation goes through an executor (``executors``: serial, or Ray actors): the members of a
generation that need a fidelity are submitted as one batch (and so is each successive-halving
rescore), every result is appended to ``evaluations.jsonl`` the moment it arrives, in whatever
order the executor finishes them, and only after the whole batch does the engine go on -- in
member order, reading values from the cache keyed by (canonical key, fidelity).  So the order
of arrival never reaches the RNG, the selection or the hall of fame: serial and Ray runs, and
a crash + resume, give the same run (only the log's line order may differ).

Determinism: all randomness is one ``random.Random(config.seed)`` whose state is
checkpointed after each generation; nothing random depends on wall time, set order, arrival
order or fitness values of the generation in progress, so a crash + resume gives the same run
(see ``checkpoint`` for the replay rules).  ``Exception`` from the fitness marks the
candidate invalid; ``BaseException`` (KeyboardInterrupt, SystemExit) stops the run, resumable.
Not DEAP: its operators draw from the global ``random`` module (no per-run RNG state to
checkpoint) and it compiles trees via ``eval``; see ``operators``.

Genes (``config.owl_lambdas``): a genome may carry, besides its tree, OWL's lambda, one of the
listed values. A random tree (and a named seed) draws it uniformly; an offspring inherits the
gene of its first parent (the tournament winner; crossover swaps subtrees only) and with
probability ``gene_mutation_rate`` moves it one step up or down the list. The gene is part of
the member's key (``<canonical key> @owl_lambda=<value>``), so the same formula with another
lambda is another candidate, and the key carries the gene through the log, the checkpoint and
the hall of fame; the fitness reads it from ``Metric.genes``. Without genes no extra random
numbers are drawn, so such runs are unchanged.
"""
from __future__ import annotations

import logging
import math
import random
import statistics
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tqdm.auto import tqdm

from ..errors import UserError
from ..symbolic import Metric, Node, TerminalSpec, canonical_key, format_expr, parse, simplify, size
from ..symbolic import named_metric, to_json
from ..symbolic.invariance import is_invariant, mask_signature
from . import checkpoint as ck
from . import scores
from .config import SEED_METRICS, SearchConfig
from .executors import EvalRequest, EvalResult, Executor, SerialExecutor
from .known_masks import KnownMasks
from .operators import Language, Limits, crossover, mutate, ramped_half_and_half, tournament

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 30  # per offspring slot: the first half vary parents, the rest draw fresh trees
# With --invariance gauge about 3% of random trees qualify (units: 70%), so a slot gets more tries;
# each costs a simplification and a check on a random layer (~5 ms), not a forward pass.
INVARIANT_ATTEMPTS = 300
Member = tuple[Node, str]  # (simplified tree, canonical key [+ " @owl_lambda=<value>" when genes are searched])
GENE_MARK = " @owl_lambda="


def genes_of(key: str) -> tuple[tuple[str, float], ...]:
    """The genes a member key carries, as ``Metric.genes``: (("owl_lambda", 0.08),) or ()."""
    if GENE_MARK not in key:
        return ()
    return (("owl_lambda", float(key.rsplit(GENE_MARK, 1)[1])),)


def _with_gene(key: str, lam: float | None) -> str:
    return key if lam is None else f"{key}{GENE_MARK}{lam:g}"


class Fitness(Protocol):
    fidelities: tuple[str, ...]  # cheapest first, e.g. ("low", "high")

    def evaluate(self, metric: Metric, fidelity: str) -> float:
        """Lower is better; raise InvalidMetricError(reason) for an invalid candidate (any other
        Exception, or a non-finite value, also marks it invalid, with the reason logged)."""
        ...

    def describe(self) -> dict:
        """Settings recorded in config.json (resume refuses a different description)."""
        ...


@dataclass
class SearchResult:
    hall_of_fame: list[dict[str, Any]]  # {"expression", "key", "generation", "fitness": {fidelity: float | None}}
    best: Metric
    stats: dict[str, Any]  # counters, "generations" (summaries), "fidelity_spearman", "rung_agreement"
    population: list[str]  # final population, formulas
    out_dir: Path


def run_search(fitness: Fitness, config: SearchConfig, out_dir: Path | str, resume: bool = False,
               overwrite: bool = False, progress: bool = True, executor: Executor | None = None) -> SearchResult:
    """Run (or with ``resume`` continue) a search writing to ``out_dir``; see the module doc.
    ``fitness.spec`` (a TerminalSpec), if present, is the meaning of W, X, G for every metric.
    ``executor`` (default: serial, in this process) evaluates the candidates; the caller closes
    one it passes.  It is not part of the run's config, so a run may resume on another executor."""
    fids = tuple(fitness.fidelities)
    if not fids or len(set(fids)) != len(fids) or not all(isinstance(f, str) for f in fids):
        raise UserError(f"fitness fidelities must be distinct names, cheapest first; got {fids!r}")
    run_config = {"format": 1, "search": config.to_dict(), "fidelities": list(fids),
                  "fitness": ck.json_roundtrip(fitness.describe())}
    records, checkpoint, lost = ck.prepare_out_dir(Path(out_dir), run_config, resume, overwrite)
    return _Search(fitness, config, Path(out_dir), fids, records, checkpoint, progress,
                   executor or SerialExecutor(fitness), lost).run()


class _Search:
    def __init__(self, fitness: Fitness, cfg: SearchConfig, out: Path, fids: tuple[str, ...],
                 records: list[dict[str, Any]], saved: dict[str, Any] | None, progress: bool,
                 executor: Executor, lost: list[ck.LostRecord] | None = None) -> None:
        self.fitness, self.cfg, self.out, self.fids, self.executor = fitness, cfg, out, fids, executor
        self.lost = list(lost or [])
        self.spec: TerminalSpec = getattr(fitness, "spec", None) or TerminalSpec()
        self.layer_group = bool(getattr(fitness, "layer_group", False))  # a setting compares across the layer
        self.lang = Language(cfg.ops, cfg.use_constants)
        self.limits = Limits(cfg.max_depth, cfg.max_size)
        self.attempts = MAX_ATTEMPTS if cfg.invariance == "none" else INVARIANT_ATTEMPTS
        self._invariant: dict[str, bool] = {}  # canonical key -> passes cfg.invariance
        self._signatures: dict[str, Any] = {}  # canonical key -> mask_signature (dedup "masks"), a tensor or None
        # Masks of every valid candidate evaluated in a completed generation and of this generation's
        # members: a pure function of the cache and the members, so a resume rebuilds it.
        self.known = KnownMasks()
        self.rng = random.Random(cfg.seed)
        done = saved["generation"] if saved else -1
        self.cache = scores.FitnessCache(records, done)
        self.stats: dict[str, int] = dict(saved["stats"]) if saved else {
            "evaluations": 0, "cache_hits": 0, "duplicates_replaced": 0, "invalid": 0, "rescored": 0}
        self.stats.setdefault("worker_replacements", 0)  # Ray workers that died (checkpoints before it lack it)
        self.stats.setdefault("mask_duplicates", 0)  # of duplicates_replaced: a new formula, a known mask
        self.summaries: list[dict[str, Any]] = list(saved["generations"]) if saved else []
        self.pop: list[Member] = []
        if saved:
            self.rng.setstate(ck.rng_state_from_json(saved["rng_state"]))
            self.pop = [(parse(m["expression"]), m["key"]) for m in saved["population"]]
        self.start, self.gen, self.progress = done + 1, done + 1, progress
        self.bar: Any = None
        self.best_seen = min((e.fitness for (_, f), e in self.cache.entries.items() if f == fids[0]), default=math.inf)

    # ------------------------------------------------------------------ main loop
    def run(self) -> SearchResult:
        cfg = self.cfg
        self.bar = tqdm(total=cfg.generations, initial=min(self.start, cfg.generations), unit="gen",
                        desc="metric search", disable=not self.progress)
        self.log = ck.EvaluationLog(self.out / ck.LOG)
        try:
            self._recover_lost()
            for g in range(self.start, cfg.generations):
                self.gen = g
                before = dict(self.stats)
                self._seen_masks()
                pop, created = self._initial() if g == 0 else self._breed()
                self._score(pop, self.fids[0])
                self._rescore(pop)
                self.pop = pop
                self.cache.end_generation(g)
                self._finish_generation(g, before, created)
                self.bar.update(1)
        finally:
            self.log.close()
            self.bar.close()
        hof = scores.hall_of_fame(self.cache, self.fids, self.cfg.hall_of_fame_size, self.cfg.parsimony)
        if not hof:
            raise UserError(f"the search in {self.out} found no valid metric (every candidate was invalid)")
        if self.start >= cfg.generations:  # resumed a finished run: its result files are derived, write them again
            self._write_results(hof)  # (the same bytes, unless one was damaged or a lost record re-scored)
        best = Metric(parse(hof[0]["expression"]), self.spec, genes=genes_of(hof[0]["key"]))
        return SearchResult(hof, best, {**self.stats, "generations": self.summaries,
                                        "fidelity_spearman": scores.fidelity_spearman(self.cache, self.fids),
                                        "rung_agreement": scores.rung_agreement(self.cache, self.fids)},
                            [format_expr(e) for e, _ in self.pop], self.out)

    def _finish_generation(self, g: int, before: dict[str, int], created: int) -> None:
        cheap = [self._cheap(k) for _, k in self.pop]
        valid = [f for f in cheap if math.isfinite(f)]
        dups = self.stats["duplicates_replaced"] - before["duplicates_replaced"]
        best_i = min(range(len(cheap)), key=lambda i: (cheap[i], i))
        self.summaries.append({
            "generation": g, "best": min(valid) if valid else None,
            "best_expression": format_expr(self.pop[best_i][0]),
            "median": statistics.median(valid) if valid else None,
            "invalid_share": 1 - len(valid) / len(cheap),
            "duplicates_replaced": dups, "duplicate_share": dups / (dups + created) if dups + created else 0.0,
            **{f"new_{c}": self.stats[c] - before[c] for c in ("evaluations", "cache_hits", "invalid", "rescored")},
        })
        if self.cfg.dedup == "masks":  # of duplicates_replaced: new formulas whose masks were known
            self.summaries[-1]["mask_duplicates"] = self.stats["mask_duplicates"] - before["mask_duplicates"]
        hof = scores.hall_of_fame(self.cache, self.fids, self.cfg.hall_of_fame_size, self.cfg.parsimony)
        finished = g == self.cfg.generations - 1
        if finished:  # best files before the checkpoint: "finished" implies they exist
            self._write_results(hof)
        else:
            ck.atomic_write_json(self.out / ck.HALL_OF_FAME, hof)
        ck.atomic_write_json(self.out / ck.CHECKPOINT, {
            "format": 1, "generation": g, "finished": finished,
            "rng_state": ck.rng_state_to_json(self.rng.getstate()),
            "population": [{"expression": format_expr(e), "key": k, "fitness": self._fitness_dict(k)}
                           for e, k in self.pop],
            "stats": self.stats, "generations": self.summaries, "hall_of_fame": hof})

    def _write_results(self, hof: list[dict[str, Any]]) -> None:
        """hall_of_fame.json, and with a best metric best_metric.txt, best_tree.json (best_genes.json)."""
        ck.atomic_write_json(self.out / ck.HALL_OF_FAME, hof)
        if hof:
            expr = parse(hof[0]["expression"])
            ck.atomic_write_text(self.out / ck.BEST_METRIC, format_expr(expr) + "\n")
            ck.atomic_write_json(self.out / ck.BEST_TREE, to_json(expr))
            # The formula with the meaning of its terminals (best_tree.json is Pruner-Zero's format,
            # which has no place for it): what `prune --metric-file` should read after a scale-free run.
            ck.atomic_write_json(self.out / ck.BEST_METRIC_JSON, Metric(expr, self.spec).to_dict())
            if genes_of(hof[0]["key"]):
                ck.atomic_write_json(self.out / "best_genes.json", dict(genes_of(hof[0]["key"])))

    def _recover_lost(self) -> None:
        """Evaluate again the candidates whose records a completed generation lost (a torn last log
        line): logged under their own generation, and not counted again (the checkpoint's
        counters already hold them), so the run's outputs equal the undamaged run's."""
        if not self.lost:
            return
        by_request = {(r.key, r.fidelity): r for r in self.lost}
        requests = [EvalRequest(r.key, Metric(parse(r.expression), self.spec, genes=genes_of(r.key)), r.fidelity)
                    for r in self.lost]
        with closing(self.executor.map_unordered(requests)) as results:
            for res in results:
                lost = by_request[(res.request.key, res.request.fidelity)]
                self.log.append({"generation": lost.generation, "expression": lost.expression, "key": lost.key,
                                 "fidelity": lost.fidelity, "fitness": scores.finite_or_none(res.value),
                                 "reason": res.reason, "seconds": res.seconds, "time": time.time()})
                self.cache.add(lost.key, lost.fidelity, scores.Entry(res.value, res.reason, lost.expression,
                                                                 lost.generation))
                self.cache.seen.add(lost.key)
        self.lost = []

    # ------------------------------------------------------------------ populations
    def _allowed(self, e: Node, key: str) -> bool:
        """Within the size limits and, with ``invariance``, invariant (symbolic.invariance) at that level."""
        if not self.limits.ok(e):
            return False
        if self.cfg.invariance == "none":
            return True
        if key not in self._invariant:
            self._invariant[key] = is_invariant(Metric(e, self.spec), self.cfg.invariance, self.layer_group)
        return self._invariant[key]

    def _signature(self, e: Node, key: str) -> tuple[Any, str]:
        """(mask_signature or None, gene suffix of the key) of a member; (None, "") when dedup is "formula"."""
        if self.cfg.dedup != "masks":
            return None, ""
        canonical = key.split(GENE_MARK, 1)[0]
        if canonical not in self._signatures:
            self._signatures[canonical] = mask_signature(Metric(e, self.spec), self.layer_group)
        return self._signatures[canonical], key[len(canonical):]

    def _seen_masks(self) -> None:
        """``known`` := the masks of every candidate evaluated in a completed generation and valid there.
        An invalid one does not stand for its masks: formulas equal in exact arithmetic can differ in
        float range on real layers (div(G * W, sqr(sqr(X) * (X * X))) overflows where G * W does not)."""
        self.known.clear()
        if self.cfg.dedup != "masks":
            return
        expressions = {k: entry.expression for (k, fid), entry in self.cache.entries.items()
                       if k in self.cache.seen and fid == self.fids[0] and math.isfinite(entry.fitness)}
        for k in sorted(expressions):
            signature, gene = self._signature(parse(expressions[k]), k)
            if signature is not None:
                self.known.add(signature, gene)

    def _new(self, e: Node, k: str, taken: set[str]) -> bool:
        """Whether member (e, k) is new: its key not in ``taken`` nor evaluated before, nor (dedup "masks")
        its masks; counts a duplicate when not. A new member's key and masks are then taken."""
        if k in taken or k in self.cache.seen:
            self.stats["duplicates_replaced"] += 1
            return False
        signature, gene = self._signature(e, k)
        if signature is not None and self.known.alike(signature, gene):
            self.stats["duplicates_replaced"] += 1
            self.stats["mask_duplicates"] += 1
            return False
        self._take(e, k, taken)
        return True

    def _take(self, e: Node, k: str, taken: set[str]) -> None:
        taken.add(k)
        signature, gene = self._signature(e, k)
        if signature is not None:
            self.known.add(signature, gene)

    def _initial(self) -> tuple[list[Member], int]:
        cfg, pop, taken = self.cfg, [], set()
        if cfg.seed_named:  # a named metric that is not invariant at cfg.invariance is left out
            for name in SEED_METRICS[: cfg.population]:
                e = simplify(named_metric(name).expr, self.spec)
                key = canonical_key(e, self.spec)
                k = _with_gene(key, self._random_gene())
                if self._allowed(e, key) and k not in taken:
                    pop.append((e, k))
                    self._take(e, k, taken)
        seeds, index = len(pop), 0
        while len(pop) < cfg.population:
            # The first invariant member, with nothing to vary, comes from random trees alone (gauge: about
            # one distinct valid one in 200 draws): ten times the tries. So does every member when masks must
            # differ too: most mutants of an invariant member prune like it (gauge, population 40: about 350
            # replaced in generation 0, some slots needing over 300 tries; later generations need far fewer).
            hard = cfg.invariance != "none" and (not pop or cfg.dedup == "masks")
            tries, fallback = self.attempts * (10 if hard else 1), None
            for attempt in range(tries):
                if cfg.invariance != "none" and pop and attempt >= self.attempts // 2:
                    # Few random trees are invariant (gauge: ~14 distinct in 3000 draws): vary a member
                    # that is, most of whose mutants keep the property.
                    e = mutate(self.rng, pop[self.rng.randrange(len(pop))][0], self.lang, self.limits)
                else:
                    e = ramped_half_and_half(self.rng, self.lang, index, cfg.init_min_depth, cfg.init_max_depth)
                e = simplify(e, self.spec)
                index += 1
                key = canonical_key(e, self.spec)
                if not self._allowed(e, key):
                    continue
                k = _with_gene(key, self._random_gene())
                if self._new(e, k, taken):
                    pop.append((e, k))
                    break
                if fallback is None and k not in taken:  # a new formula whose masks are known
                    fallback = (e, k)
            else:
                if fallback is None:
                    raise self._too_small()
                pop.append(fallback)  # evaluated, though it prunes like a member: better than no run
                self._take(*fallback, taken)
        return pop, len(pop) - seeds

    def _selection_keys(self) -> list[tuple[float, int, float]]:
        """What tournaments and elitism compare, lower first: the cheapest fidelity's value, bucketed
        by the parsimony tolerance with the formula's size next (plain fitness when parsimony is off)."""
        keys = []
        for e, k in self.pop:
            f = self._cheap(k)
            keys.append((scores.parsimony_bucket(f, self.cfg.parsimony), size(e) if self.cfg.parsimony else 0, f))
        return keys

    def _breed(self) -> tuple[list[Member], int]:
        cfg = self.cfg
        fit = self._selection_keys()
        order = sorted(range(len(fit)), key=lambda i: (fit[i], i))
        new = [self.pop[i] for i in order[: cfg.elitism] if math.isfinite(fit[i][2])]
        taken = {k for _, k in new}  # (the elites' masks are known: they were evaluated)
        elites = len(new)
        while len(new) < cfg.population:
            new.append(self._offspring(fit, taken))
        return new, len(new) - elites

    def _offspring(self, fit: list[tuple[float, int, float]], taken: set[str]) -> Member:
        """A new member whose key is neither in ``taken`` nor seen before (bounded tries; as a
        last resort a seen-before key re-enters, served from the cache, or failing that a new
        formula whose masks are known, which costs an evaluation)."""
        fallback: Member | None = None  # seen before: free
        alike: Member | None = None  # new formula, known masks (dedup "masks" only)
        for attempt in range(self.attempts):
            if attempt < self.attempts // 2:
                e, lam = self._vary(fit)
            else:
                e = ramped_half_and_half(self.rng, self.lang, attempt, self.cfg.init_min_depth, self.cfg.init_max_depth)
                lam = self._random_gene()
            e = simplify(e, self.spec)
            key = canonical_key(e, self.spec)
            if not self._allowed(e, key):
                continue
            k = _with_gene(key, lam)
            if self._new(e, k, taken):
                return e, k
            if k in self.cache.seen and k not in taken and fallback is None:
                fallback = (e, k)
            elif k not in self.cache.seen and k not in taken and alike is None:
                alike = (e, k)
        fallback = fallback or alike
        if fallback is None:
            raise self._too_small()
        self._take(*fallback, taken)
        return fallback

    def _vary(self, fit: list[tuple[float, int, float]]) -> tuple[Node, float | None]:
        """Crossover with probability crossover_rate (else a tournament winner's copy), then
        mutation with probability mutation_rate -- always if the child equals its parent.
        The gene (if any) comes from the first parent, then mutates (module doc)."""
        cfg, rng = self.cfg, self.rng
        parent, parent_key = self.pop[tournament(rng, fit, cfg.tournament_size)]
        child = parent
        if rng.random() < cfg.crossover_rate:
            other = self.pop[tournament(rng, fit, cfg.tournament_size)][0]
            child = crossover(rng, parent, other, self.limits)
        if child == parent or rng.random() < cfg.mutation_rate:
            child = mutate(rng, child, self.lang, self.limits)
        lam = None
        if cfg.owl_lambdas:
            lam = dict(genes_of(parent_key)).get("owl_lambda", cfg.owl_lambdas[len(cfg.owl_lambdas) // 2])
            if rng.random() < cfg.gene_mutation_rate:
                grid = cfg.owl_lambdas
                i = grid.index(lam) if lam in grid else len(grid) // 2
                lam = grid[min(max(i + rng.choice((-1, 1)), 0), len(grid) - 1)]
        return child, lam

    def _random_gene(self) -> float | None:
        """A uniformly drawn lambda when genes are searched; None (and no draw) otherwise."""
        return self.rng.choice(self.cfg.owl_lambdas) if self.cfg.owl_lambdas else None

    def _too_small(self) -> UserError:
        return UserError(f"cannot find {self.cfg.population} distinct metrics in generation {self.gen}: the "
                         f"search space (ops, max_depth={self.cfg.max_depth}, max_size={self.cfg.max_size}) "
                         "is too small")

    # ------------------------------------------------------------------ fitness
    def _score(self, members: list[Member], fid: str) -> None:
        """Make sure every member has a fitness at ``fid`` in the cache: cache hits and replays
        of the interrupted generation first (member order), the rest as one executor batch."""
        requests, queued = [], set()
        for e, k in members:
            if k in queued or self.cache.get(k, fid) is not None:
                self.stats["cache_hits"] += 1
                continue
            queued.add(k)
            replayed = self.cache.take_pending(k, fid)
            if replayed is not None:  # logged by the interrupted attempt of this generation
                self._count(replayed.fitness, fid)
            else:
                requests.append(EvalRequest(k, Metric(e, self.spec, genes=genes_of(k)), fid))
        if not requests:
            return
        before = self.executor.replacements
        with closing(self.executor.map_unordered(requests)) as results:
            for res in results:
                self._record(res)
        self.stats["worker_replacements"] += self.executor.replacements - before

    def _record(self, res: EvalResult) -> None:
        """One result, as it arrives: on disk (fsync) first, then in the cache."""
        req, expression = res.request, format_expr(res.request.metric.expr)
        self.log.append({"generation": self.gen, "expression": expression, "key": req.key, "fidelity": req.fidelity,
                         "fitness": scores.finite_or_none(res.value), "reason": res.reason, "seconds": res.seconds,
                         "time": time.time()})
        self.cache.add(req.key, req.fidelity, scores.Entry(res.value, res.reason, expression, self.gen))
        if res.reason is not None:
            log.debug("invalid metric %s at %s: %s", expression, req.fidelity, res.reason)
        self._count(res.value, req.fidelity)

    def _count(self, value: float, fid: str) -> None:
        self.stats["evaluations"] += 1
        self.stats["invalid"] += not math.isfinite(value)
        if fid == self.fids[0] and value < self.best_seen:
            self.best_seen = value
        self.bar.set_postfix(gen=self.gen, evals=self.stats["evaluations"], hits=self.stats["cache_hits"],
                             dups=self.stats["duplicates_replaced"], best=f"{self.best_seen:.4g}", refresh=False)

    def _rescore(self, pop: list[Member]) -> None:
        for level in range(1, len(self.fids)):
            prev, cur = self.fids[level - 1], self.fids[level]
            todo = []
            for i, (e, k) in enumerate(pop):
                entry = self.cache.get(k, prev)
                if entry is not None and math.isfinite(entry.fitness) and self.cache.get(k, cur) is None:
                    todo.append((entry.fitness, i))
            todo.sort()
            n = math.ceil(self.cfg.rescore_fraction * len(todo))
            self._score([pop[i] for _, i in todo[:n]], cur)
            self.stats["rescored"] += n

    def _cheap(self, k: str) -> float:
        entry = self.cache.get(k, self.fids[0])
        return math.inf if entry is None else entry.fitness

    def _fitness_dict(self, k: str) -> dict[str, float | None]:
        out = {}
        for f in self.fids:
            entry = self.cache.get(k, f)
            if entry is not None:
                out[f] = scores.finite_or_none(entry.fitness)
        return out
