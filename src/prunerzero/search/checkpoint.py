"""What a search run writes to its out dir, how it survives a kill -9, and reading it back.

Files (``<out>/``):

* ``config.json`` -- ``{"format": 1, "search": SearchConfig.to_dict(), "fidelities": [...],
  "fitness": Fitness.describe()}``; written once when a run starts; resume must match it.
* ``evaluations.jsonl`` -- one JSON object per fitness call, appended, flushed and fsync'd as it
  happens: ``{"generation": int, "expression": str (format_expr of the simplified tree),
  "key": str (canonical_key), "fidelity": str, "fitness": float | null (null = invalid),
  "reason": str | null (why invalid), "seconds": float (time in Fitness.evaluate),
  "time": float (unix time when logged)}``.  Cache hits are not logged (nothing was run).
* ``checkpoint.json`` -- written atomically after every generation: ``{"format": 1,
  "generation": int (last completed), "finished": bool, "rng_state": [version, [625 ints],
  gauss_next], "population": [{"expression", "key", "fitness": {fidelity: float | null}}],
  "stats": {counters}, "generations": [per-generation summaries], "hall_of_fame": [...]}``.
* ``hall_of_fame.json`` -- ``[{"expression", "key", "generation" (first evaluated),
  "fitness": {fidelity: float | null}}]``, best first, rewritten atomically each generation.
* ``best_metric.txt`` (the formula, ``load_metric`` reads it) and ``best_tree.json``
  (Pruner-Zero tree dict) at the end.

Crash safety: the log is the source of truth for fitness values (the cache is rebuilt from
it), the checkpoint for everything random.  A kill -9 in generation g leaves the checkpoint
of g - 1 and log records tagged g; resume replays g from the checkpoint's RNG state, and the
records tagged g are *pending*: found again without calling the fitness, but counted as that
generation's evaluations and not yet treated as "seen" (so the replay draws exactly what the
interrupted attempt drew).  A torn last log line (killed mid-write) is cut off on resume.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError

LOG, CHECKPOINT, CONFIG, HALL_OF_FAME = "evaluations.jsonl", "checkpoint.json", "config.json", "hall_of_fame.json"
BEST_METRIC, BEST_TREE, BEST_METRIC_JSON = "best_metric.txt", "best_tree.json", "best_metric.json"
RUN_FILES = (LOG, CHECKPOINT, CONFIG, HALL_OF_FAME, BEST_METRIC, BEST_TREE, BEST_METRIC_JSON)


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temp file in the same dir, fsync, then os.replace: readers see old or new."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    try:  # make the rename itself durable (best effort: not every platform can open a dir)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, allow_nan=False) + "\n")


def rng_state_to_json(state: tuple) -> list:
    version, internal, gauss_next = state
    return [version, list(internal), gauss_next]


def rng_state_from_json(obj: Any) -> tuple:
    version, internal, gauss_next = obj
    return (version, tuple(internal), gauss_next)


def finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None


def read_log(path: Path, repair: bool = False) -> list[dict[str, Any]]:
    """All records of ``evaluations.jsonl``; a torn last line is ignored (and cut off if
    ``repair``, so later appends start on a fresh line).  A bad line elsewhere is an error."""
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1  # bytes up to the last complete line
    if repair and end < len(data):
        with open(path, "r+b") as fh:
            fh.truncate(end)
            fh.flush()
            os.fsync(fh.fileno())
    records = []
    for i, line in enumerate(data[:end].decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise UserError(f"{path} line {i} is not valid JSON ({exc.msg})") from None
    return records


class EvaluationLog:
    """Append-only writer: every record is on disk (fsync) before the search goes on."""

    def __init__(self, path: Path) -> None:
        self._fh = open(path, "a", encoding="utf-8")

    def append(self, record: dict[str, Any]) -> None:
        self._fh.write(json.dumps(record, allow_nan=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()


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
        self.pending: set[tuple[str, str]] = set()
        self.seen: set[str] = set()
        for r in records:
            ck = (r["key"], r["fidelity"])
            if ck in self.entries:
                continue
            f = r["fitness"]
            self.entries[ck] = Entry(math.inf if f is None else float(f), r.get("reason"), r["expression"],
                                     int(r["generation"]))
            if r["generation"] > completed_generation:
                self.pending.add(ck)
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
        self.pending.discard(ck)
        return self.entries[ck]

    def add(self, key: str, fidelity: str, entry: Entry) -> None:
        self.entries[(key, fidelity)] = entry

    def end_generation(self) -> None:
        self.pending.clear()
        self.seen.update(k for k, _ in self.entries)


def load_run(out_dir: Path | str) -> dict[str, Any]:
    """Everything a run left, for analysis: ``{"config", "evaluations" (log records),
    "checkpoint", "hall_of_fame", "best_metric" (formula str), "best_tree"}``; missing files
    are None (``evaluations`` is then []).  Record formats: see this module's docstring."""
    out = Path(out_dir)
    if not any((out / f).exists() for f in RUN_FILES):
        raise UserError(f"{out} holds no search run (no {CONFIG}, {LOG} or {CHECKPOINT})")

    def opt(name: str) -> Any:
        return read_json(out / name) if (out / name).exists() else None

    best = (out / BEST_METRIC).read_text(encoding="utf-8").strip() if (out / BEST_METRIC).exists() else None
    return {"config": opt(CONFIG), "evaluations": read_log(out / LOG), "checkpoint": opt(CHECKPOINT),
            "hall_of_fame": opt(HALL_OF_FAME), "best_metric": best, "best_tree": opt(BEST_TREE)}


def json_roundtrip(obj: Any) -> Any:
    """``obj`` as it will read back from JSON (so a saved and a new config compare equal)."""
    try:
        return json.loads(json.dumps(obj, sort_keys=True, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise UserError(f"fitness.describe() must be JSON-able: {exc}") from None


def _diff(saved: dict[str, Any], new: dict[str, Any]) -> list[str]:
    out = []
    for part in sorted(set(saved) | set(new)):
        a, b = saved.get(part), new.get(part)
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{part}.{k}: saved {a.get(k)!r}, now {b.get(k)!r}"
                    for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            out.append(f"{part}: saved {a!r}, now {b!r}")
    return out


def check_budget(out: Path, generations: int) -> None:
    """A resumed run's generation budget may grow or shrink, but not below what it has already run."""
    if generations < 1:
        raise UserError("--generations must be >= 1")
    done = read_json(out / CHECKPOINT)["generation"] + 1 if (out / CHECKPOINT).exists() else 0
    if generations < done:
        raise UserError(f"{out} has already run {done} generations; --generations {generations} cannot take them back")


def prepare_out_dir(out: Path, run_config: dict[str, Any], resume: bool,
                    overwrite: bool) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Check the out dir against the request; returns (log records, checkpoint or None).

    resume: continue the run there (same config but for the generation budget, or UserError); an
    empty dir starts a new run.
    Without resume, a dir holding a run is refused unless ``overwrite`` (its run files are removed).
    """
    out.mkdir(parents=True, exist_ok=True)
    present = [f for f in RUN_FILES if (out / f).exists()]
    if resume and present:
        if not (out / CONFIG).exists():
            raise UserError(f"cannot resume {out}: it has {', '.join(present)} but no {CONFIG}")
        # The generation budget may change (extend a search, or stop it sooner): generation g
        # does not depend on how many follow, so the run equals one started with the new budget.
        diffs = [d for d in _diff(read_json(out / CONFIG), run_config) if not d.startswith("search.generations:")]
        if diffs:
            raise UserError(f"cannot resume {out} with a different config than the saved one: {'; '.join(diffs)}")
        saved = read_json(out / CHECKPOINT) if (out / CHECKPOINT).exists() else None
        budget = run_config.get("search", {}).get("generations")
        if budget is not None:
            check_budget(out, budget)
        atomic_write_json(out / CONFIG, run_config)  # records the budget now in force
        return read_log(out / LOG, repair=True), saved
    if present and not overwrite:
        done = (out / CHECKPOINT).exists() and read_json(out / CHECKPOINT).get("finished")
        what = "a finished search run" if done else "an unfinished search run (resume=True continues it)"
        raise UserError(f"{out} already holds {what}; pass overwrite=True to replace it or use another out dir")
    for f in present:
        (out / f).unlink()
    atomic_write_json(out / CONFIG, run_config)
    return [], None


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
    return [row for _, row in ranked[:size]]


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

