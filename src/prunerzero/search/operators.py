"""Genetic operators on metric trees, every random draw from one explicit ``random.Random``.

Why not DEAP: its tree generators and operators (``genHalfAndHalf``, ``cxOnePoint``,
``mutUniform``, ...) draw from the global ``random`` module, so a run cannot own its RNG
state (checkpoint it, restore it, run two searches side by side), and DEAP compiles every
individual to Python source and ``eval``s it.  Our trees are immutable ``symbolic.Node``
values evaluated by ``symbolic.evaluate``; the few operators GP needs are below.

Limits against bloat: ``Limits(max_depth, max_size)``.  Every operator returns a tree
within the limits: it retries its random choice a bounded number of times and otherwise
returns (a copy of) the parent -- the engine then treats that as a duplicate and draws again.
Depth counts edges (a leaf has depth 0), as ``symbolic.depth`` does.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Sequence

from ..symbolic import PRIMITIVES, Node, call, const, depth, replace_at, size, subtrees, var

TERMINAL_NAMES: tuple[str, ...] = ("W", "X", "G")
# Ephemeral constants (``use_constants``): a small fixed menu keeps the search space finite.
CONSTANTS: tuple[float, ...] = (0.1, 0.5, 2.0, 3.0, 10.0)
RETRIES = 10
MUTATIONS: tuple[str, ...] = ("subtree", "point", "hoist")


@dataclass(frozen=True)
class Limits:
    max_depth: int
    max_size: int

    def ok(self, e: Node) -> bool:
        return depth(e) <= self.max_depth and size(e) <= self.max_size


@dataclass(frozen=True)
class Language:
    """What random trees are built from: primitive names and whether constants are leaves."""

    ops: tuple[str, ...]
    use_constants: bool = False

    def __post_init__(self) -> None:
        unknown = [o for o in self.ops if o not in PRIMITIVES]
        if unknown or not self.ops:
            raise ValueError(f"unknown or no primitives: {unknown}")

    @property
    def unary(self) -> tuple[str, ...]:
        return tuple(o for o in self.ops if PRIMITIVES[o].arity == 1)

    @property
    def binary(self) -> tuple[str, ...]:
        return tuple(o for o in self.ops if PRIMITIVES[o].arity == 2)


def random_leaf(rng: random.Random, lang: Language) -> Node:
    n = len(TERMINAL_NAMES) + (1 if lang.use_constants else 0)
    i = rng.randrange(n)
    return var(TERMINAL_NAMES[i]) if i < len(TERMINAL_NAMES) else const(rng.choice(CONSTANTS))


def random_tree(rng: random.Random, lang: Language, max_depth: int, full: bool) -> Node:
    """"full": every leaf at ``max_depth``; "grow": a leaf is picked with the share of leaves
    among all symbols (terminals + primitives), as in Koza's grow (DEAP's genGrow)."""
    if max_depth <= 0:
        return random_leaf(rng, lang)
    n_leaf = len(TERMINAL_NAMES) + (1 if lang.use_constants else 0)
    if not full and rng.random() < n_leaf / (n_leaf + len(lang.ops)):
        return random_leaf(rng, lang)
    op = rng.choice(lang.ops)
    kids = [random_tree(rng, lang, max_depth - 1, full) for _ in range(PRIMITIVES[op].arity)]
    return call(op, *kids)


def ramped_half_and_half(rng: random.Random, lang: Language, index: int, min_depth: int, max_depth: int) -> Node:
    """The ``index``-th tree of a ramped population: depths cycle min..max, and for each
    depth the method alternates full / grow."""
    n_depths = max_depth - min_depth + 1
    d = min_depth + index % n_depths
    full = (index // n_depths) % 2 == 0
    return random_tree(rng, lang, d, full)


def _pick(rng: random.Random, e: Node) -> tuple[tuple[int, ...], Node]:
    nodes = list(subtrees(e))
    return nodes[rng.randrange(len(nodes))]


def crossover(rng: random.Random, a: Node, b: Node, limits: Limits) -> Node:
    """Subtree crossover: a random subtree of ``a`` is replaced by a random subtree of ``b``."""
    for _ in range(RETRIES):
        pa, _sub = _pick(rng, a)
        _pb, donor = _pick(rng, b)
        child = replace_at(a, pa, donor)
        if limits.ok(child):
            return child
    return a


def mutate_subtree(rng: random.Random, e: Node, lang: Language, limits: Limits) -> Node:
    """A random subtree becomes a fresh "grow" tree of depth <= 2 (and within the limits)."""
    for _ in range(RETRIES):
        path, _old = _pick(rng, e)
        room = max(0, min(2, limits.max_depth - len(path)))
        child = replace_at(e, path, random_tree(rng, lang, room, full=False))
        if limits.ok(child):
            return child
    return e


def mutate_point(rng: random.Random, e: Node, lang: Language, limits: Limits) -> Node:
    """One node changes symbol, keeping its arity (a leaf becomes another leaf)."""
    path, old = _pick(rng, e)
    if old.is_leaf:
        choices: Sequence[Node] = [var(t) for t in TERMINAL_NAMES if t != old.op]
        if lang.use_constants:
            choices = [*choices, const(rng.choice(CONSTANTS))]
        new = rng.choice(list(choices))
    else:
        same = lang.unary if len(old.children) == 1 else lang.binary
        options = [o for o in same if o != old.op]
        if not options:
            return e
        new = Node(rng.choice(options), old.children)
    child = replace_at(e, path, new)
    return child if limits.ok(child) else e  # same shape: always within limits


def mutate_hoist(rng: random.Random, e: Node, lang: Language, limits: Limits) -> Node:
    """A random proper inner subtree becomes the whole tree (shrinks; fights bloat).
    A tree without inner proper subtrees gets a subtree mutation instead."""
    inner = [(p, n) for p, n in subtrees(e) if p and not n.is_leaf]
    if not inner:
        return mutate_subtree(rng, e, lang, limits)
    return inner[rng.randrange(len(inner))][1]


def mutate(rng: random.Random, e: Node, lang: Language, limits: Limits) -> Node:
    """One of subtree / point / hoist mutation, uniformly."""
    kind = MUTATIONS[rng.randrange(len(MUTATIONS))]
    if kind == "subtree":
        return mutate_subtree(rng, e, lang, limits)
    if kind == "point":
        return mutate_point(rng, e, lang, limits)
    return mutate_hoist(rng, e, lang, limits)


def tournament(rng: random.Random, fitness: Sequence[Any], k: int) -> int:
    """Index of the best (lowest fitness, or lowest key such as (bucket, size, fitness)) of ``k``
    members drawn with replacement; ties go to the earlier draw, so the result depends only on the
    RNG state."""
    best = rng.randrange(len(fitness))
    for _ in range(k - 1):
        j = rng.randrange(len(fitness))
        if fitness[j] < fitness[best]:
            best = j
    return best


__all__ = [
    "CONSTANTS", "Language", "Limits", "MUTATIONS", "TERMINAL_NAMES", "crossover", "mutate",
    "mutate_hoist", "mutate_point", "mutate_subtree", "ramped_half_and_half", "random_leaf", "random_tree",
    "tournament",
]
