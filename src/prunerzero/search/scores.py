"""Every score the search holds: the fitness cache (rebuilt from evaluations.jsonl, the source of
truth), the hall of fame ranked from it, and how well the cheap rungs rank like the expensive ones."""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any


def finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


@dataclass
class Entry:
    fitness: float  # +inf for an invalid candidate
    reason: str | None
    expression: str
    generation: int


class FitnessCache:
    """Fitness by (canonical key, fidelity), rebuilt from the log.

    ``seen`` holds keys evaluated in *completed* generations (the duplicate filter);
    ``pending`` holds log entries of the generation being replayed after a crash.
    """

    def __init__(self, records: list[dict[str, Any]], completed_generation: int) -> None:
        self.entries: dict[tuple[str, str], Entry] = {}
        self.pending: dict[tuple[str, str], int] = {}  # -> the generation that logged it
        self.seen: set[str] = set()
        for r in records:
            ck = (r["key"], r["fidelity"])
            if ck in self.entries:
                continue
            f = r["fitness"]
            self.entries[ck] = Entry(math.inf if f is None else float(f), r.get("reason"), r["expression"],
                                     int(r["generation"]))
            if r["generation"] > completed_generation:
                self.pending[ck] = int(r["generation"])
            else:
                self.seen.add(r["key"])

    def get(self, key: str, fidelity: str) -> Entry | None:
        """The entry if it was scored before now (pending replays do not count)."""
        ck = (key, fidelity)
        return None if ck in self.pending else self.entries.get(ck)

    def take_pending(self, key: str, fidelity: str) -> Entry | None:
        """A replayed entry of the interrupted generation, now consumed (it counts as evaluated)."""
        ck = (key, fidelity)
        if ck not in self.pending:
            return None
        del self.pending[ck]
        return self.entries[ck]

    def add(self, key: str, fidelity: str, entry: Entry) -> None:
        self.entries[(key, fidelity)] = entry
        self.pending.pop((key, fidelity), None)

    def end_generation(self, generation: int) -> None:
        """Entries of ``generation`` the replay did not ask for stop being pending; those of later
        generations (a replay from scratch, without a checkpoint) wait for their own."""
        self.pending = {ck: g for ck, g in self.pending.items() if g > generation}
        self.seen.update(k for (k, f) in self.entries if (k, f) not in self.pending)


def parsimony_bucket(fitness: float, tolerance: float) -> float:
    """Fitness values within a relative ``tolerance`` of each other share a bucket, so that at (about)
    equal fitness the smaller formula wins (lexicographic parsimony); 0 = no buckets."""
    if tolerance <= 0 or not math.isfinite(fitness) or fitness <= 0:
        return fitness
    return float(math.floor(math.log(fitness) / math.log1p(tolerance)))


def hall_of_fame(cache: FitnessCache, fids: tuple[str, ...], size: int,
                 parsimony: float = 0.0) -> list[dict[str, Any]]:
    """Best distinct valid metrics: by the highest fidelity scored (higher first), then by the
    score there (lower first; with ``parsimony`` scores within that relative tolerance count as
    equal and the smaller formula comes first), then by key.  Invalid at the cheapest fidelity =
    left out.  Each row carries the formula's size (nodes)."""
    from ..symbolic import parse, size as tree_size

    rows: dict[str, dict[str, Any]] = {}
    for (k, f), entry in cache.entries.items():
        if (k, f) in cache.pending:
            continue
        row = rows.setdefault(k, {"expression": entry.expression, "key": k, "generation": entry.generation,
                                  "fitness": {}})
        row["fitness"][f] = finite_or_none(entry.fitness)
    ranked = []
    for row in rows.values():
        if row["fitness"].get(fids[0]) is None:
            continue
        level = max(i for i, f in enumerate(fids) if f in row["fitness"])
        top = row["fitness"][fids[level]]
        row["fitness"] = {f: row["fitness"][f] for f in fids if f in row["fitness"]}
        row["size"] = tree_size(parse(row["expression"]))
        value = math.inf if top is None else top
        order = (top is None, -level, parsimony_bucket(value, parsimony), row["size"] if parsimony > 0 else 0,
                 value, row["key"])
        ranked.append((order, row))
    ranked.sort(key=lambda t: t[0])
    return merge_equal_scores([row for _, row in ranked])[:size]


def merge_equal_scores(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per metric *as pruning sees it*: rows whose fitness is equal to the last bit at every
    rung they were scored on prune alike (e.g. ``mms(X * W)`` and ``mms(X * (W + W))``, which the
    canonical key keeps apart because mms's EPS makes them differ on near-constant tensors; two
    different masks giving the very same perplexity on thousands of tokens does not happen in
    practice).  The group keeps the rank of its best row and the expression of its smallest; the
    others are listed under ``same_scores`` so the report says what was merged."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    order: list[tuple] = []
    for row in rows:
        scored = tuple(sorted(row["fitness"].items()))
        if any(v is None for _, v in scored):  # invalid somewhere: nothing to compare
            scored = (("key", row["key"]),)
        if scored not in groups:
            order.append(scored)
        groups.setdefault(scored, []).append(row)
    merged = []
    for scored in order:
        group = groups[scored]
        keep = min(group, key=lambda r: (r["size"], group.index(r)))
        others = [r["expression"] for r in group if r is not keep]
        merged.append({**keep, "same_scores": others} if others else keep)
    return merged


def rung_agreement(cache: FitnessCache, fids: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Spearman and Kendall rank agreement between every pair of rungs (cheaper first), over keys
    valid at both: ``{"low~high": {"rho": float | None, "tau": float | None, "n": int}}``.  The
    pairs come in key order, not arrival order, so any executor gives the same numbers."""
    from scipy.stats import kendalltau, spearmanr  # heavy import, only needed for the report

    out = {}
    for i, low in enumerate(fids):
        for high in fids[i + 1:]:
            pairs = []
            for (k, fid), entry in sorted(cache.entries.items(), key=lambda item: item[0]):
                cheap = cache.entries.get((k, low))
                if fid == high and math.isfinite(entry.fitness) and cheap is not None and math.isfinite(cheap.fitness):
                    pairs.append((cheap.fitness, entry.fitness))
            rho = tau = None
            if len(pairs) >= 3:
                with warnings.catch_warnings():  # constant input: nan, reported as None
                    warnings.simplefilter("ignore")
                    xs, ys = [a for a, _ in pairs], [b for _, b in pairs]
                    r, t = float(spearmanr(xs, ys).statistic), float(kendalltau(xs, ys).statistic)
                rho, tau = (None if math.isnan(r) else r), (None if math.isnan(t) else t)
            out[f"{low}~{high}"] = {"rho": rho, "tau": tau, "n": len(pairs)}
    return out


def fidelity_spearman(cache: FitnessCache, fids: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Spearman of the cheapest fidelity with each other one (:func:`rung_agreement`'s first row)."""
    agreement = rung_agreement(cache, fids)
    return {f"{fids[0]}~{f}": {"rho": agreement[f"{fids[0]}~{f}"]["rho"], "n": agreement[f"{fids[0]}~{f}"]["n"]}
            for f in fids[1:]}
