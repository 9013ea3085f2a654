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
interrupted attempt drew).  Without a checkpoint every generation is replayed this way, each
consuming its own records, so a deleted checkpoint is rebuilt without evaluating anything.

Damage (``inspect_run``): a torn last log line (killed mid-write) is reported and cut off on
resume; if it belonged to a completed generation -- the checkpoint's per-generation counts say
so -- its candidate is evaluated again (``LostRecord``) so every output equals the clean run's.
A bad line elsewhere, a damaged checkpoint or config, or records lost that cannot be identified,
refuse with one line naming the file and what to do.
"""
from __future__ import annotations

import json
import math
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import io
from ..errors import UserError, short, warn

LOG, CHECKPOINT, CONFIG, HALL_OF_FAME = "evaluations.jsonl", "checkpoint.json", "config.json", "hall_of_fame.json"
BEST_METRIC, BEST_TREE, BEST_METRIC_JSON = "best_metric.txt", "best_tree.json", "best_metric.json"
RUN_FILES = (LOG, CHECKPOINT, CONFIG, HALL_OF_FAME, BEST_METRIC, BEST_TREE, BEST_METRIC_JSON)


def atomic_write_text(path: Path, text: str) -> None:
    """A run file, atomically (``io.write_text``): readers see the old file or the new one."""
    io.write_text(path, text)


def atomic_write_json(path: Path, obj: Any) -> None:
    """A run folder's JSON file: one-space indent, no NaN (what resume reads back must be exact)."""
    io.write_json(path, obj, indent=1, strict=True)


def rng_state_to_json(state: tuple) -> list:
    version, internal, gauss_next = state
    return [version, list(internal), gauss_next]


def rng_state_from_json(obj: Any) -> tuple:
    version, internal, gauss_next = obj
    return (version, tuple(internal), gauss_next)


DAMAGED = "restore it, or start the search again with --overwrite"


def read_json(path: Path, hint: str = DAMAGED) -> Any:
    """A JSON file of a run folder; anything unreadable (random bytes, cut short, a folder) is one
    UserError naming the file and ``hint`` (what to do)."""
    return io.read_json(path, hint)


LogScan = io.JsonlScan


def scan_log(path: Path, check: Any = None) -> LogScan:
    """Records of a JSON-lines log of the run folder, by ``io``'s rule: a torn last line is set
    apart (a kill mid-append leaves one, and it is no reason to refuse the file); a bad line
    anywhere else is damage, one UserError naming the file and line."""
    return io.scan_jsonl(path, check, hint=DAMAGED)


def repair_log(path: Path, scan: LogScan) -> None:
    """Cut a torn last line off (later appends start on a fresh line), or give a whole last record
    its missing newline."""
    io.repair_jsonl(path, scan)


def read_log(path: Path, repair: bool = False) -> list[dict[str, Any]]:
    """All records of a JSON-lines log; a torn last line is ignored (and cut off if ``repair``,
    so later appends start on a fresh line).  A bad line elsewhere is an error."""
    return io.read_jsonl(path, repair=repair, hint=DAMAGED)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and not isinstance(v, bool)


def _is_finite(v: Any) -> bool:
    try:
        return _is_number(v) and math.isfinite(v)
    except OverflowError:  # an integer too large for a float
        return False


def check_evaluation(r: dict[str, Any], where: str) -> None:
    """One evaluations.jsonl record has the fields and types the search wrote (module doc)."""
    from ..symbolic import MetricSyntaxError, parse

    problem = None
    if not (_is_int(r.get("generation")) and r["generation"] >= 0):
        problem = "'generation' is not an integer >= 0"
    elif not all(isinstance(r.get(k), str) for k in ("expression", "key", "fidelity")):
        problem = "'expression', 'key' and 'fidelity' must be strings"
    elif not (r.get("fitness") is None or _is_finite(r["fitness"])):
        problem = "'fitness' is neither a finite number nor null"
    elif not (r.get("reason") is None or isinstance(r["reason"], str)):
        problem = "'reason' is neither a string nor null"
    else:
        try:
            parse(r["expression"])
        except MetricSyntaxError:
            problem = "'expression' is not a metric formula"
    if problem:
        raise UserError(f"{where} is damaged ({problem}): {DAMAGED}")


def torn_fields(text: str) -> dict[str, Any]:
    """What a torn evaluations.jsonl line still tells: the fields written before the cut (records
    start with generation, expression, key, fidelity, in that order)."""
    out: dict[str, Any] = {}
    m = re.match(r'\s*\{"generation": (\d+),', text)
    if not m:
        return out
    out["generation"] = int(m.group(1))
    pos = m.end()
    for name in ("expression", "key", "fidelity"):
        m = re.compile(rf' "{name}": ("(?:[^"\\]|\\.)*"),').match(text, pos)
        if not m:
            break
        try:
            out[name] = json.loads(m.group(1))
        except ValueError:
            break
        pos = m.end()
    return out


CHECKPOINT_HINT = (f"delete it and resume: the search is replayed from {LOG} (nothing it holds is evaluated "
                   "again) and the checkpoint rebuilt; or start again with --overwrite")


def check_checkpoint(obj: Any, path: Path, full: bool = True) -> dict[str, Any]:
    """A checkpoint as the engine wrote it (module doc), or one UserError naming what is wrong.
    ``full=False`` (analysis) needs only the fields a reader uses: format, generation, finished,
    generations; population and hall_of_fame are checked when present."""
    from ..symbolic import MetricSyntaxError, parse

    def bad(problem: str) -> UserError:
        return UserError(f"{short(path)} is damaged ({problem}): {CHECKPOINT_HINT}")

    if not isinstance(obj, dict):
        raise bad("not a JSON object")
    needed = ("format", "generation", "finished", "rng_state", "population", "stats", "generations", "hall_of_fame")
    missing = [k for k in needed if k not in obj and (full or k in ("format", "generation", "finished", "generations"))]
    if missing:
        raise bad(f"no {', '.join(repr(k) for k in missing)}")
    if obj["format"] != 1:
        raise bad(f"format {short(obj['format'], 20)}, not 1")
    if not (_is_int(obj["generation"]) and obj["generation"] >= 0) or not isinstance(obj["finished"], bool):
        raise bad("'generation' must be an integer >= 0 and 'finished' true or false")
    if full:
        try:
            random.Random().setstate(rng_state_from_json(obj["rng_state"]))
        except (TypeError, ValueError, OverflowError):
            raise bad("'rng_state' is not a random generator state") from None
        stats = obj["stats"]
        if not isinstance(stats, dict) or not all(_is_int(stats.get(k)) for k in (
                "evaluations", "cache_hits", "duplicates_replaced", "invalid", "rescored")):
            raise bad("'stats' lacks its counters")
    if not isinstance(obj["generations"], list) or not all(
            isinstance(g, dict) and _is_int(g.get("generation")) for g in obj["generations"]):
        raise bad("'generations' is not a list of generation summaries")
    for part in ("population", "hall_of_fame"):
        rows = obj.get(part, [])
        if not isinstance(rows, list):
            raise bad(f"'{part}' is not a list")
        for row in rows:
            if not (isinstance(row, dict) and isinstance(row.get("expression"), str) and isinstance(row.get("key"), str)
                    and isinstance(row.get("fitness"), dict)
                    and all(v is None or _is_finite(v) for v in row["fitness"].values())):
                raise bad(f"an entry of '{part}' lacks its expression, key or fitness")
            try:
                parse(row["expression"])
            except MetricSyntaxError:
                raise bad(f"an expression in '{part}' is not a metric formula") from None
    if full and not obj["population"]:
        raise bad("empty population")
    return obj


def read_checkpoint(out: Path, full: bool = True) -> dict[str, Any] | None:
    """The checkpoint of run folder ``out`` (validated), or None when there is none."""
    path = out / CHECKPOINT
    if not path.exists():
        return None
    return check_checkpoint(read_json(path, CHECKPOINT_HINT), path, full)


@dataclass(frozen=True)
class LostRecord:
    """An evaluation of a completed generation that the log no longer holds (its torn last line)."""

    key: str
    fidelity: str
    expression: str
    generation: int


def find_lost(records: list[dict[str, Any]], torn: str | None, saved: dict[str, Any] | None,
              path: Path) -> list[LostRecord]:
    """Evaluations of completed generations missing from the log.

    The checkpoint counts each generation's evaluations (``generations[g]["new_evaluations"]``)
    and is written only after that generation's records are on disk, so a completed generation
    with fewer records than its count lost some (a torn last line of a finished run, or a file cut
    short). The lost candidates are named by the torn line itself or by the checkpoint's
    population and hall of fame, which hold the fitness of everything the last generation scored.
    Returns [] when nothing is lost; UserError when the lost records cannot all be named (then
    the run cannot be continued exactly)."""
    if saved is None:
        return []
    done = saved["generation"]
    logged: Counter[int] = Counter()
    present: set[tuple[str, str]] = set()
    for r in records:
        ck = (r["key"], r["fidelity"])
        if ck not in present:
            present.add(ck)
            logged[r["generation"]] += 1
    lost_in = {}
    for summary in saved["generations"]:
        g, n = summary["generation"], summary.get("new_evaluations")
        if g <= done and _is_int(n) and n > logged[g]:
            lost_in[g] = n - logged[g]
    lost = sum(lost_in.values())
    if not lost:
        return []
    named: dict[tuple[str, str], str] = {}
    fields = torn_fields(torn) if torn else {}
    if {"key", "fidelity", "expression"} <= set(fields) and (fields["key"], fields["fidelity"]) not in present:
        named[(fields["key"], fields["fidelity"])] = fields["expression"]
    for row in (*saved.get("population", []), *saved.get("hall_of_fame", [])):
        for fid in row["fitness"]:
            if (row["key"], fid) not in present:
                named.setdefault((row["key"], fid), row["expression"])
    gens = sorted(lost_in)
    if len(named) != lost or len(gens) != 1 or fields.get("generation", gens[0]) != gens[0]:
        raise UserError(
            f"{short(path)} lost {lost} evaluation record(s) of completed generation(s) {', '.join(map(str, gens))} "
            f"({CHECKPOINT} counts them): more than the last generation's records the checkpoint can name, so the "
            f"run cannot be continued exactly: {DAMAGED}")
    return [LostRecord(k, f, expr, gens[0]) for (k, f), expr in named.items()]


@dataclass
class RunState:
    """What a run folder holds, checked (``inspect_run``)."""

    records: list[dict[str, Any]]
    checkpoint: dict[str, Any] | None
    lost: list[LostRecord]
    scan: LogScan


def inspect_run(out: Path, full: bool = True) -> RunState:
    """Read and check a run folder's log and checkpoint without changing anything: a damaged file
    is one UserError naming it and what to do (module doc). ``full=False``: as much as analysis
    reads (see ``check_checkpoint``)."""
    saved = read_checkpoint(out, full)
    scan = scan_log(out / LOG, check_evaluation)
    lost = find_lost(scan.records, scan.torn, saved, out / LOG)
    return RunState(scan.records, saved, lost, scan)


def report_damage(out: Path, state: RunState) -> None:
    """One warning line per repair a resume is about to make (nothing changes silently)."""
    log = short(out / LOG)
    gens = sorted({r.generation for r in state.lost})
    if state.scan.torn is not None and state.lost:
        warn(f"{log} ended with a torn record of completed generation {gens[0]} (cut off while it was written): "
             f"it is removed and its candidate evaluated again")
        if len(state.lost) > 1:
            warn(f"{len(state.lost) - 1} more record(s) of that generation were missing from {log}: evaluated again")
    elif state.scan.torn is not None:
        warn(f"{log} ended with a torn record (the run was killed while writing it): it is removed, and its candidate "
             "is evaluated again when its generation is replayed")
    elif state.lost:
        warn(f"{log} lost {len(state.lost)} record(s) of completed generation {gens[0]}: their candidates are "
             "evaluated again")


class EvaluationLog(io.JsonlWriter):
    """Append-only writer of evaluations.jsonl: every record is on disk (fsync) before the search
    goes on; NaN is refused (an invalid candidate's fitness is null)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, strict=True)


def load_run(out_dir: Path | str) -> dict[str, Any]:
    """Everything a run left, for analysis: ``{"config", "evaluations" (log records),
    "checkpoint", "hall_of_fame", "best_metric" (formula str), "best_tree"}``; missing files
    are None (``evaluations`` is then []).  Record formats: see this module's docstring."""
    out = Path(out_dir)
    if not any((out / f).exists() for f in RUN_FILES):
        raise UserError(f"{out} holds no search run (no {CONFIG}, {LOG} or {CHECKPOINT})")
    rewrite = f"resume the search (prunerzero search --resume {short(out)}) to rewrite it from {LOG}"

    def opt(name: str, hint: str = DAMAGED) -> Any:
        return read_json(out / name, hint) if (out / name).exists() else None

    if not (out / CONFIG).exists() and (out / LOG).exists():  # written first: the run's settings
        raise UserError(f"{short(out / CONFIG)} is missing (the run's settings): {DAMAGED}")
    config = read_config(out) if (out / CONFIG).exists() else None
    state = inspect_run(out, full=False)
    if state.checkpoint is None and any(r["generation"] > 0 for r in state.records):
        # generation 0 was completed (and checkpointed) before any record of generation 1 was written
        raise UserError(f"{short(out / CHECKPOINT)} is missing: resume the search (prunerzero search --resume "
                        f"{short(out)}) to rebuild it from {LOG} (nothing is evaluated again)")
    if state.lost:
        raise UserError(f"{short(out / LOG)} lacks {len(state.lost)} record(s) of a completed generation (a torn last "
                        f"line): resume the search (prunerzero search --resume {short(out)}) to evaluate them again, "
                        "then analyze")
    if state.scan.torn is not None:
        warn(f"{short(out / LOG)} ends with a torn record (a run killed, or still writing, mid-line): left out")
    best = None
    if (out / BEST_METRIC).exists():
        from ..symbolic import MetricSyntaxError, parse

        try:
            best = (out / BEST_METRIC).read_bytes().decode("utf-8").strip()
            parse(best)
        except (OSError, UnicodeDecodeError, MetricSyntaxError):
            raise UserError(f"{short(out / BEST_METRIC)} is damaged (not a metric formula): {rewrite}") from None
    saved = state.checkpoint
    if best is None and saved is not None and saved["finished"] and saved.get("hall_of_fame"):
        best = saved["hall_of_fame"][0]["expression"]  # best_metric.txt was written from this very entry
    hof = opt(HALL_OF_FAME, rewrite)
    if hof is not None and not (isinstance(hof, list) and all(isinstance(r, dict) for r in hof)):
        raise UserError(f"{short(out / HALL_OF_FAME)} is damaged (not a list of entries): {rewrite}")
    return {"config": config, "evaluations": state.records, "checkpoint": state.checkpoint,
            "hall_of_fame": hof, "best_metric": best, "best_tree": opt(BEST_TREE, rewrite)}


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
    saved = read_checkpoint(out)
    done = saved["generation"] + 1 if saved else 0
    if generations < done:
        raise UserError(f"{out} has already run {done} generations; --generations {generations} cannot take them back")


def read_config(out: Path) -> dict[str, Any]:
    config = read_json(out / CONFIG)
    if not isinstance(config, dict):
        raise UserError(f"{short(out / CONFIG)} is damaged (not a JSON object): {DAMAGED}")
    return config


def _finished(out: Path) -> bool:
    """Whether the checkpoint says finished; a damaged one counts as unfinished (for a message)."""
    try:
        saved = read_checkpoint(out)
    except UserError:
        return False
    return bool(saved and saved["finished"])


def prepare_out_dir(out: Path, run_config: dict[str, Any], resume: bool,
                    overwrite: bool) -> tuple[list[dict[str, Any]], dict[str, Any] | None, list[LostRecord]]:
    """Check the out dir against the request; returns (log records, checkpoint or None, records a
    completed generation lost, to evaluate again).

    resume: continue the run there (same config but for the generation budget, or UserError); an
    empty dir starts a new run. Every check (and every refusal of a damaged file) comes before
    anything is written.
    Without resume, a dir holding a run is refused unless ``overwrite`` (its run files are removed).
    """
    out.mkdir(parents=True, exist_ok=True)
    present = [f for f in RUN_FILES if (out / f).exists()]
    if resume and present:
        if not (out / CONFIG).exists():
            raise UserError(f"cannot resume {out}: it has {', '.join(present)} but no {CONFIG} (the run's settings): "
                            f"{DAMAGED.replace('restore it', 'restore ' + CONFIG)}")
        # The generation budget may change (extend a search, or stop it sooner): generation g
        # does not depend on how many follow, so the run equals one started with the new budget.
        diffs = [d for d in _diff(read_config(out), run_config) if not d.startswith("search.generations:")]
        if diffs:
            raise UserError(f"cannot resume {out} with a different config than the saved one: {'; '.join(diffs)}")
        state = inspect_run(out)
        budget = run_config.get("search", {}).get("generations")
        if budget is not None:
            check_budget(out, budget)
        report_damage(out, state)
        atomic_write_json(out / CONFIG, run_config)  # records the budget now in force
        repair_log(out / LOG, state.scan)
        return state.records, state.checkpoint, state.lost
    if present and not overwrite:
        what = "a finished search run" if _finished(out) else "an unfinished search run (--resume continues it)"
        raise UserError(f"{out} already holds {what}; pass --overwrite (overwrite=True) to replace it, or use "
                        "another out dir")
    for f in present:
        (out / f).unlink()
    atomic_write_json(out / CONFIG, run_config)
    return [], None, []
