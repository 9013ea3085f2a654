"""The search settings: one frozen :class:`SearchConfig`, saved to ``<out>/config.json``.

Frozen and JSON-round-trippable so that a resumed run can prove it continues the *same*
search: ``run_search(..., resume=True)`` compares the saved dict with the new one and
refuses (``UserError``) on any difference.  Defaults follow Pruner-Zero where it says
(initial depth 2..4, its function set); the rest are small enough for a proxy model.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..errors import UserError, known_keys_only
from ..settings import option

# Generation 0 gets these when ``seed_named`` (the order is part of the run).
SEED_METRICS: tuple[str, ...] = ("magnitude", "wanda", "gblm", "ria", "pruner-zero")


def _finite(v: int | float) -> bool:
    try:
        return math.isfinite(v)
    except OverflowError:  # an integer too large for a float (a hand-edited or hostile config.json)
        return False


def _pruner_zero_ops() -> tuple[str, ...]:
    from ..symbolic import PRUNER_ZERO_OPS  # torch: loaded when a config is made, not when the CLI starts

    return PRUNER_ZERO_OPS


@dataclass(frozen=True)
class SearchConfig:
    population: int = option(40, "candidates per generation")
    generations: int = option(15, "generations (with --resume: a new budget, to extend a finished search or stop "
                              "sooner)")
    seed: int = 0
    tournament_size: int = 3
    crossover_rate: float = 0.7  # an offspring is a crossover child with this probability...
    mutation_rate: float = 0.3  # ...and is then mutated with this one (always, if it equals its parent)
    elitism: int = 2  # best members (cheapest fidelity) copied unchanged into the next generation
    init_min_depth: int = 2
    init_max_depth: int = 4
    max_depth: int = option(6, "deepest tree")
    max_size: int = option(25, "most nodes in a tree")
    seed_named: bool = option(True, "put the named metrics (magnitude, wanda, gblm, ria, pruner-zero) in generation 0")
    use_constants: bool = False
    rescore_fraction: float = option(0.25, "share of each generation's best (by the previous rung) scored again at "
                                     "the next rung")
    hall_of_fame_size: int = 10
    # Primitives random trees and point mutation use (default: Pruner-Zero's set, built when a config is made).
    ops: tuple[str, ...] = field(default_factory=_pruner_zero_ops, metadata={
        "help": "primitives of random trees and point mutation, a comma list (default: Pruner-Zero's sqr,neg,abs,"
                "log,exp,sqrt,tanh,pow,skp,mms,zsn,add,sub,mul,div; rown and coln normalise per row / column)",
        "items": str})
    # OWL's lambda searched jointly with the metric: the values a genome may carry (empty = not
    # searched, the run's fixed lambda applies). See engine's module doc for how genes evolve.
    owl_lambdas: tuple[float, ...] = option((), "evolve OWL's lambda with the metric, over these values (e.g. "
                                            "0,0.04,0.08,0.12); each genome carries one", items=float, empty_ok=True)
    gene_mutation_rate: float = 0.2  # an offspring's gene moves to a neighbouring value with this probability
    # Lexicographic parsimony: fitness values within this relative tolerance count as equal in
    # tournaments, elitism and the hall of fame, and the smaller formula wins (smaller formulas
    # transfer better to other models and texts). 0 = off (runs made before it existed).
    parsimony: float = option(0.0, "fitness values within this relative tolerance count as equal and the smaller "
                              "formula wins (0 = off)")
    # Only formulas whose masks do not depend on how the model is parameterised (symbolic.invariance):
    # "units" (the overall size of W, X and G, which differ between models and losses), "gauge"
    # (that and per-channel / per-row rescalings that leave the model's function unchanged). A
    # formula that fails is replaced like a duplicate, before any forward pass. "none" = any formula.
    invariance: str = option("none", "only formulas whose masks do not change when W, X, G are rescaled: units "
                             "(their overall size), gauge (that and the per-channel / per-row rescalings that keep "
                             "the model's function), none", choices=("none", "units", "gauge"))

    # What counts as a duplicate: "formula" (the same canonical formula) or "masks" (the same 50% and
    # 2:4 masks on fixed random layers up to rounding, search.known_masks): formulas that prune
    # alike are evaluated once. "formula" = runs made before it existed.
    dedup: str = option("formula", "what counts as a duplicate candidate: formula (the same formula) or masks (the "
                        "same masks on fixed random layers, up to rounding: monotone transforms of one formula are "
                        "evaluated once)",
                        choices=("formula", "masks"))

    def __post_init__(self) -> None:
        object.__setattr__(self, "ops", tuple(self.ops))
        object.__setattr__(self, "owl_lambdas", tuple(self.owl_lambdas))
        ints = {"population": 1, "generations": 1, "tournament_size": 1, "elitism": 0, "init_min_depth": 0,
                "init_max_depth": 0, "max_depth": 0, "max_size": 1, "hall_of_fame_size": 1, "seed": -(2**63)}
        for name, low in ints.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise UserError(f"search config {name}={v!r}: must be an integer >= {low}")
        for name in ("crossover_rate", "mutation_rate", "rescore_fraction", "gene_mutation_rate", "parsimony"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (_finite(v) and 0 <= v <= 1):
                raise UserError(f"search config {name}={v!r}: must be a number in [0, 1]")
        if self.invariance not in ("none", "units", "gauge"):
            raise UserError(f"search config invariance={self.invariance!r}: choose none, units or gauge")
        if self.dedup not in ("formula", "masks"):
            raise UserError(f"search config dedup={self.dedup!r}: choose formula or masks")
        for name in ("seed_named", "use_constants"):
            if not isinstance(getattr(self, name), bool):
                raise UserError(f"search config {name}={getattr(self, name)!r}: must be true or false")
        if self.elitism >= self.population:
            raise UserError(f"search config elitism={self.elitism} must be < population={self.population}")
        from ..symbolic import PRIMITIVES
        from ..symbolic.expr import MAX_DEPTH, MAX_SIZE

        if self.max_depth > MAX_DEPTH or self.max_size > MAX_SIZE:  # deeper trees could not be read back on resume
            raise UserError(f"search config max_depth={self.max_depth}, max_size={self.max_size}: at most "
                            f"{MAX_DEPTH} and {MAX_SIZE}")
        if not self.init_min_depth <= self.init_max_depth <= self.max_depth:
            raise UserError(f"search config needs init_min_depth <= init_max_depth <= max_depth, got "
                            f"{self.init_min_depth}, {self.init_max_depth}, {self.max_depth}")
        lams = self.owl_lambdas
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not (_finite(v) and v >= 0) for v in lams) \
                or list(lams) != sorted(set(lams)):
            raise UserError(f"search config owl_lambdas={list(lams)!r}: must be distinct ascending numbers >= 0")
        object.__setattr__(self, "owl_lambdas", tuple(float(v) for v in lams))
        bad = [o for o in self.ops if not isinstance(o, str) or o not in PRIMITIVES]
        if bad or not self.ops:
            raise UserError(f"search config ops: unknown primitive(s) {bad} (choose from {', '.join(PRIMITIVES)})")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ops"] = list(self.ops)
        d["owl_lambdas"] = list(self.owl_lambdas)
        if not self.parsimony:  # runs saved before parsimony existed still compare equal on resume
            del d["parsimony"]
        if self.invariance == "none":  # likewise for runs saved before invariance existed
            del d["invariance"]
        if self.dedup == "formula":  # and before dedup existed
            del d["dedup"]
        return d

    @classmethod
    def from_dict(cls, obj: Any) -> "SearchConfig":
        kw = known_keys_only(obj, [f.name for f in fields(cls)], "search config")
        if "ops" in kw:
            if not isinstance(kw["ops"], (list, tuple)):
                raise UserError(f"search config ops={kw['ops']!r}: must be a list of primitive names")
            kw["ops"] = tuple(kw["ops"])
        if "owl_lambdas" in kw:
            if not isinstance(kw["owl_lambdas"], (list, tuple)):
                raise UserError(f"search config owl_lambdas={kw['owl_lambdas']!r}: must be a list of numbers")
            kw["owl_lambdas"] = tuple(kw["owl_lambdas"])
        return cls(**kw)
