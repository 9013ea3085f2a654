"""Re-evaluate the best searched metrics next to the baselines with the full sequential pipeline
on the reporting data, and write the side-by-side table.

Each (metric, setting) result is appended to leaderboard.jsonl as soon as it is measured, so a
killed leaderboard resumes where it stopped.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import replace
from pathlib import Path

from tqdm.auto import tqdm

from .. import atomic
from ..errors import short, warn
from ..eval.perplexity import perplexity
from ..methods import get_method
from ..methods.symbolic import symbolic_method
from ..pipeline import prune_model
from ..symbolic import Metric, canonical_key, format_expr, load_metric, named_metric
from .engine import genes_of
from .fitness import parse_setting
from .job import JobContext, SearchJob

LEADERBOARD_LOG = "leaderboard.jsonl"
LEADERBOARD_MD = "leaderboard.md"


def _read_log(path: Path) -> list[dict]:
    """Rows measured so far. A torn last line (a kill mid-write) is measured again; so is everything
    from a damaged line on (random bytes, a row without its fields): the file is rewritten with the
    good rows first, so later appends do not land behind the damage."""
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    rows = []
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            row = None
        if not (isinstance(row, dict) and isinstance(row.get("label"), str)
                and (row.get("setting") is None or isinstance(row["setting"], str))
                and isinstance(row.get("ppl"), (int, float)) and isinstance(row.get("tokens"), int)):
            if any(rest.strip() for rest in lines[i + 1:]):
                warn(f"{short(path)} line {i + 1} is damaged: it and the rows after it are measured again")
            else:  # a torn last line (a kill mid-write), or a damaged one
                warn(f"{short(path)} ends with a torn or damaged row: it is measured again")
            atomic.write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
            break
        rows.append(row)
    return rows


def _append(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def baseline_ranks(job: SearchJob, hall_of_fame: list[dict]) -> dict[int, str]:
    """Hall-of-fame rank -> baseline name, for the baselines the search itself ranks there (the
    named metrics are seeded into generation 0): they are measured once, under their own name."""
    keys = {}
    for name in job.baselines:
        if name != "sparsegpt":  # no formula: it never appears in a search
            metric = named_metric(name)
            keys[canonical_key(metric.expr, metric.spec)] = name
    return {rank: keys[row["key"]] for rank, row in enumerate(hall_of_fame, start=1) if row["key"] in keys}


def leaderboard_entries(job: SearchJob, hall_of_fame: list[dict],
                        skip: dict[int, str]) -> list[tuple[str, Metric | None, str]]:
    """(label, metric, method name) for the top searched metrics that are not baselines (``skip``:
    baseline_ranks; the others labelled by their hall-of-fame rank), then the baselines."""
    entries: list[tuple[str, Metric | None, str]] = []
    ranked = [(rank, row) for rank, row in enumerate(hall_of_fame, start=1) if rank not in skip]
    for rank, row in ranked[: job.leaderboard_top]:
        genes = genes_of(row["key"])  # an evolved OWL lambda travels with its formula
        label = f"searched #{rank}" + "".join(f" ({name} {value:g})" for name, value in genes)
        entries.append((label, replace(load_metric(row["expression"]), genes=genes), "metric"))
    for name in job.baselines:
        if name in ("magnitude", "wanda", "sparsegpt"):
            entries.append((name, None, name))  # direct implementations
        else:
            entries.append((name, named_metric(name), name))
    return entries


def run_leaderboard(ctx: JobContext, job: SearchJob, hall_of_fame: list[dict], out: Path,
                    progress: bool = True) -> list[dict]:
    log_path = out / LEADERBOARD_LOG
    rows = _read_log(log_path)
    model, stats = ctx.lm.model, ctx.fitness.stats
    grads = {n: (s.grad_l1, s.grad_l2) for n, s in stats.items() if s.grad_l1 is not None}
    fitness_of = {row["expression"]: row["fitness"] for row in hall_of_fame}
    seeded = baseline_ranks(job, hall_of_fame)
    wanted = [("dense", None, "dense", None)] + [
        (label, metric, method, setting) for label, metric, method in leaderboard_entries(job, hall_of_fame, seeded)
        for setting in job.settings
    ]

    def ident(label: str, metric: Metric | None, setting: str | None) -> tuple:
        # The formula is part of a row's identity: after a search is extended, "searched #1" may be another metric.
        return label, setting, canonical_key(metric.expr, metric.spec) if metric is not None else None

    want = {ident(label, metric, setting) for label, metric, _, setting in wanted}
    rows = [r for r in rows if (r["label"], r["setting"], r.get("key")) in want]  # stale rows left out
    done = {(r["label"], r["setting"], r.get("key")) for r in rows}
    todo = [t for t in wanted if ident(t[0], t[1], t[3]) not in done]
    for label, metric, method_name, setting in tqdm(todo, desc="leaderboard", disable=not progress):
        ctx.fitness.restore()
        start = time.perf_counter()
        record: dict = {"label": label, "setting": setting}
        if setting is not None:
            method = symbolic_method(metric) if metric is not None else get_method(method_name)
            method = ctx.fitness.config.wrap(method)  # the run's reconstruction, if any
            target = parse_setting(setting)
            lam = dict(metric.genes).get("owl_lambda") if metric is not None else None
            layer_sparsity = ctx.fitness.layer_sparsities(target, lam)  # the run's allocation, if any
            target_for = target if layer_sparsity is None else (lambda i, t=target, s=layer_sparsity: t.with_sparsity(s[i]))
            prune_model(model, method, target_for, ctx.calib_ids, grads=grads, progress=False)
            formula = format_expr(metric.expr) if metric is not None else method.describe.get("formula", method_name)
            record.update(formula=formula, key=canonical_key(metric.expr, metric.spec) if metric else None,
                          search_fitness=fitness_of.get(formula))
        record["prune_seconds"] = time.perf_counter() - start
        result = perplexity(model, ctx.report_tokens, job.seqlen, job.report_tokens, progress=False)
        record.update(ppl=result["ppl"], tokens=result["tokens"], seqlen=result["seqlen"])
        _append(log_path, record)
        rows.append(record)
    ctx.fitness.restore()
    write_markdown(out / LEADERBOARD_MD, rows, job, ctx.report_info, seeded)
    return rows


def format_table(rows: list[dict], job: SearchJob) -> str:
    settings = list(job.settings)
    by_label: dict[str, dict] = {}
    for r in rows:
        entry = by_label.setdefault(r["label"], {"label": r["label"], "formula": r.get("formula", ""), "ppl": {}})
        entry["ppl"][r["setting"]] = r["ppl"]
    dense = by_label.pop("dense", None)

    def score(entry: dict) -> float:  # geometric mean over the settings, as the search's fitness
        values = [entry["ppl"].get(s) for s in settings]
        return math.exp(sum(math.log(v) for v in values) / len(values)) if all(values) else math.inf

    ranked = sorted(by_label.values(), key=score)
    head = "| rank | metric | formula | " + " | ".join(f"ppl {s}" for s in settings) + " |"
    lines = [head, "|" + "---|" * (3 + len(settings))]
    for i, entry in enumerate(ranked, start=1):
        cells = " | ".join(f"{entry['ppl'][s]:.2f}" if s in entry["ppl"] else "-" for s in settings)
        lines.append(f"| {i} | {entry['label']} | `{entry['formula']}` | {cells} |")
    if dense:
        lines.append("| - | dense | | " + " | ".join(f"{dense['ppl'][None]:.2f}" for _ in settings) + " |")
    return "\n".join(lines)


def _levers(job: SearchJob) -> str:
    parts = []
    if job.reconstruct == "obs":
        parts.append(f"every metric's mask is followed by the OBS weight update ({job.reconstruct_mode} mask; "
                     "sparsegpt reconstructs by itself)")
    if job.allocation == "owl":
        parts.append(f"unstructured settings use OWL layer-wise sparsity (M={job.owl_m:g}, lambda={job.owl_lambda:g})")
    return (" Levers: " + "; ".join(parts) + ".") if parts else ""


def write_markdown(path: Path, rows: list[dict], job: SearchJob, report_info: dict | None,
                   seeded: dict[int, str] | None = None) -> None:
    tokens = rows[0]["tokens"] if rows else 0
    where = report_info.get("path") or report_info.get("source") if report_info else "-"
    if report_info and report_info.get("path"):  # folder/file: readable and machine-neutral (job.json has it whole)
        where = "/".join(Path(where).parts[-2:])
    text = (
        f"# Leaderboard\n\nModel `{job.model}`; each metric pruned with the full sequential pipeline "
        f"({job.nsamples}x{job.seqlen} {job.calib_data} calibration, seed {job.seed}) and measured on "
        f"{where} ({tokens} tokens, seqlen {job.seqlen}). Settings: {', '.join(job.settings)} "
        "(a bare number is unstructured sparsity)." + _levers(job) + "\n\n" + format_table(rows, job) + "\n"
    )
    if seeded:  # "searched #k" keeps the hall-of-fame rank, so the gaps are explained
        text += ("\nIn the search's hall of fame (search fitness), " + ", ".join(
            f"#{rank} is {name}" for rank, name in sorted(seeded.items()))
            + " (seeded into generation 0), listed under its own name.\n")
    atomic.write_text(path, text)
