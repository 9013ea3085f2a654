"""Re-evaluate the best searched metrics next to the baselines with the full sequential pipeline
on every reporting text, for every calibration seed, and write the side-by-side table (mean and
standard deviation over the seeds, so a win can be told from the noise of the calibration draw).

Each (metric, setting, seed, text) result is appended to leaderboard.jsonl as soon as it is
measured, so a killed leaderboard resumes where it stopped, and cached under the cache folder by
everything it depends on, so the baselines measured for one search are reused by the next.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from pathlib import Path

from tqdm.auto import tqdm

from .. import io
from ..errors import UserError, short, warn
from ..eval.perplexity import perplexity
from ..methods import get_method
from ..methods.symbolic import symbolic_method
from ..masks import parse_setting, per_row_twin
from ..settings import ROW_BAND
from ..pipeline import prune_model
from ..symbolic import Metric, TerminalSpec, canonical_key, format_expr, load_metric, named_match, named_metric
from .engine import genes_of
from .context import JobContext
from .job import SearchJob

LEADERBOARD_LOG = "leaderboard.jsonl"
LEADERBOARD_MD = "leaderboard.md"
# Bump when a pipeline change changes leaderboard numbers. 2: SparseGPT per row, f32 factor;
# 3: one-pass batches in lockstep (SparseGPT's H summed batch by batch: its last bits move).
CACHE_VERSION = 3


def _check_row(row: dict, where: str) -> None:
    """A leaderboard.jsonl row as run_leaderboard writes it."""
    if not (isinstance(row.get("label"), str) and (row.get("setting") is None or isinstance(row["setting"], str))
            and isinstance(row.get("ppl"), (int, float)) and isinstance(row.get("tokens"), int)):
        raise UserError(f"{where} is not a leaderboard row")


def _read_log(path: Path) -> list[dict]:
    """Rows measured so far, by ``io``'s rule for JSON lines. Rows are results that can be measured
    again, so damage does not refuse the run: a torn last line (a kill mid-write) is measured again,
    and so is everything from a damaged line on (random bytes, a row without its fields); the file
    is cut back to the good rows first, so later appends do not land behind the damage."""
    scan = io.scan_jsonl(path, _check_row, after_damage="drop")
    if scan.torn is not None:
        warn(f"{short(path)} ends with a torn row (a kill while it was written): it is measured again")
    elif scan.damaged is not None:
        warn(f"{short(path)} line {scan.damaged} is damaged: it and the rows after it are measured again")
    io.repair_jsonl(path, scan)
    return scan.records


def baseline_ranks(job: SearchJob, hall_of_fame: list[dict]) -> dict[int, str]:
    """Hall-of-fame rank -> baseline name, for the baselines the search itself ranks there (the
    named metrics are seeded into generation 0): they are measured once, under their own name.
    With scale-free terminals a seeded formula is another metric than the baseline: none match."""
    if job.terminal_scale != "raw":
        return {}
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
        spec = TerminalSpec(scale=job.terminal_scale)  # the run's meaning of W, X, G
        metric = replace(load_metric(row["expression"]), genes=genes, spec=spec)
        same = named_match(replace(metric, genes=()))
        if same is not None:  # a named metric seeded into generation 0 that is not a listed baseline
            label += f" (= {same}, seeded)"
        entries.append((label, metric, "metric"))
    for name in job.baselines:
        if name in ("magnitude", "wanda", "sparsegpt"):
            entries.append((name, None, name))  # direct implementations
        else:
            entries.append((name, named_metric(name), name))
    return entries


def _cache_file(ctx: JobContext, job: SearchJob, ident: dict) -> Path:
    """Where one (entry, setting, calibration seed, reporting text) perplexity is cached across runs:
    baselines measured for one search are reused by the next with the same settings."""
    import hashlib
    import importlib.metadata

    from ..models import cache_dir

    path = Path(ctx.lm.path)
    stamp = [str(f.stat().st_mtime_ns) for f in sorted(path.glob("*.safetensors"))] if path.exists() else []
    try:
        version = importlib.metadata.version("prunerzero")
    except importlib.metadata.PackageNotFoundError:
        version = "?"
    parts = {"v": CACHE_VERSION, "prunerzero": version, "model": ctx.lm.path, "stamp": stamp, "dtype": job.dtype,
             "windowing": ctx.windowing.to_dict(), "calib": [job.calib_data, job.nsamples, job.seqlen],
             "levers": [job.reconstruct, job.reconstruct_mode, job.allocation, job.owl_m, job.owl_lambda]
             + (["mask-only"] if job.mask_only else []), **ident}  # (earlier runs' keys unchanged)
    setting = ident.get("setting")
    if job.reconstruct == "obs" and job.reconstruct_mode == "block" and setting is not None \
            and not parse_setting(setting).structured:
        # Since 2026-12-07 an unstructured sweep takes each block's count from the metric's mask: not the
        # numbers cached before.
        parts["block_counts"] = "metric"
    key = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]
    return cache_dir() / "leaderboard" / f"{key}.json"


def run_leaderboard(ctx: JobContext, job: SearchJob, hall_of_fame: list[dict], out: Path,
                    progress: bool = True, all_report_info: dict[str, dict] | None = None) -> list[dict]:
    """Every entry x setting x calibration seed, pruned by the full pipeline, measured on every
    reporting text; one line of leaderboard.jsonl per (entry, setting, seed, text)."""
    log_path = out / LEADERBOARD_LOG
    rows = _read_log(log_path)
    model = ctx.lm.model
    fitness_of = {row["expression"]: row["fitness"] for row in hall_of_fame}
    size_of = {row["expression"]: row.get("size") for row in hall_of_fame}
    seeded = baseline_ranks(job, hall_of_fame)
    reports = list(ctx.report_tokens)
    entries = leaderboard_entries(job, hall_of_fame, seeded)

    def ident(label: str, metric: Metric | None, setting: str | None, seed: int | None, report: str) -> tuple:
        # The formula is part of a row's identity: after a search is extended, "searched #1" may be another metric.
        return label, setting, canonical_key(metric.expr, metric.spec) if metric is not None else None, seed, report

    wanted = [("dense", None, "dense", None, None)] + [
        (label, metric, method, setting, seed) for label, metric, method in entries
        for setting in job.leaderboard_settings
        for seed in job.leaderboard_seeds]
    want = {ident(lab, met, st, sd, r) for lab, met, _, st, sd in wanted for r in reports}
    mine = [r for r in rows if r.get("report") in reports]  # a multi-model job: other models' rows stay
    others = [r for r in rows if r.get("report") not in reports and r.get("report") in (all_report_info or {})]
    rows = [r for r in mine if (r["label"], r["setting"], r.get("key"), r.get("seed"), r.get("report")) in want]
    done = {(r["label"], r["setting"], r.get("key"), r.get("seed"), r.get("report")) for r in rows}
    todo = [t for t in wanted if any(ident(t[0], t[1], t[3], t[4], r) not in done for r in reports)]
    for label, metric, method_name, setting, seed in tqdm(todo, desc="leaderboard", disable=not progress):
        ctx.fitness.restore()
        base: dict = {"label": label, "setting": setting, "seed": seed}
        if setting is not None:
            formula = format_expr(metric.expr) if metric is not None else method_name
            base.update(formula=formula, key=canonical_key(metric.expr, metric.spec) if metric else None,
                        search_fitness=fitness_of.get(formula), size=size_of.get(formula))
        pending = [r for r in reports if ident(label, metric, setting, seed, r) not in done]
        cached = {}
        for r in pending:
            genes = list(metric.genes) if metric is not None else []
            cache = _cache_file(ctx, job, {"entry": [method_name, base.get("key"), genes], "setting": setting,
                                           "seed": seed, "report": ctx.report_info[r], "tokens": job.report_tokens})
            cached[r] = (cache, json.loads(cache.read_text()) if cache.exists() else None)
        pruned_seconds = 0.0
        if setting is not None and any(c is None for _, c in cached.values()):
            start = time.perf_counter()
            method = symbolic_method(metric) if metric is not None else get_method(method_name)
            method = ctx.fitness.config.wrap(method)  # the run's reconstruction, if any
            target = parse_setting(setting)
            lam = dict(metric.genes).get("owl_lambda") if metric is not None else None
            layer_sparsity = ctx.fitness.layer_sparsities(target, lam)  # the run's allocation, if any
            target_for = target if layer_sparsity is None else (
                lambda i, t=target, s=layer_sparsity: t.with_sparsity(s[i]))
            calib_ids, grads = ctx.calibration(seed, "G" in method.needs)
            prune_model(model, method, target_for, calib_ids, grads=grads, progress=False)
            pruned_seconds = time.perf_counter() - start
        for r in pending:
            cache, result = cached[r]
            from_cache = result is not None
            if result is None:
                result = perplexity(model, ctx.report_tokens[r], job.seqlen, job.report_tokens, progress=False,
                                    windowing=ctx.windowing)
                result = {"ppl": result["ppl"], "tokens": result["tokens"], "seqlen": result["seqlen"],
                          "prune_seconds": pruned_seconds}
                io.write_json(cache, result)
            record = {**base, "report": r, **result, "cached": from_cache}
            io.append_jsonl(log_path, record)
            rows.append(record)
    ctx.fitness.restore()
    rows = others + rows
    merged = {row["expression"]: row["same_scores"] for row in hall_of_fame if row.get("same_scores")}
    write_markdown(out / LEADERBOARD_MD, rows, job, all_report_info or ctx.report_info, seeded, merged)
    return rows


def _stats(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, sd


def summarize(rows: list[dict], job: SearchJob, report: str) -> tuple[list[dict], dict | None]:
    """Per entry on one reporting text: {label, formula, size, ppl: {setting: (mean, sd, n)}}, ranked by
    the geometric mean over the settings of the mean perplexity; and the dense row."""
    by_label: dict[str, dict] = {}
    dense = None
    for r in rows:
        if r.get("report") != report:
            continue
        if r["label"] == "dense":
            dense = r
            continue
        entry = by_label.setdefault(r["label"], {"label": r["label"], "formula": r.get("formula", ""),
                                                  "size": r.get("size"), "runs": {}})
        entry["runs"].setdefault(r["setting"], []).append(r["ppl"])
    for entry in by_label.values():
        entry["ppl"] = {s: (*_stats(v), len(v)) for s, v in entry["runs"].items()}

    def score(entry: dict) -> float:  # geometric mean over the settings, as the search's fitness
        values = [entry["ppl"].get(s, (None,))[0] for s in job.settings]
        return math.exp(sum(math.log(v) for v in values) / len(values)) if all(values) else math.inf

    return sorted(by_label.values(), key=score), dense


def format_table(rows: list[dict], job: SearchJob, report: str) -> str:
    ranked, dense = summarize(rows, job, report)
    settings = list(job.leaderboard_settings)
    head = "| rank | metric | formula | size | " + " | ".join(f"ppl {s}" for s in settings) + " |"
    lines = [head, "|" + "---|" * (4 + len(settings))]
    for i, entry in enumerate(ranked, start=1):
        cells = []
        for s in settings:
            if s not in entry["ppl"]:
                cells.append("-")
                continue
            mean, sd, n = entry["ppl"][s]
            cells.append(f"{mean:.2f} ± {sd:.2f}" if n > 1 else f"{mean:.2f}")
        size = entry["size"] if entry["size"] is not None else ""
        lines.append(f"| {i} | {entry['label']} | `{entry['formula']}` | {size} | {' | '.join(cells)} |")
    if dense:
        lines.append("| - | dense | | | " + " | ".join(f"{dense['ppl']:.2f}" for _ in settings) + " |")
    return "\n".join(lines)


def gap_summary(rows: list[dict], job: SearchJob, report: str) -> str:
    """Gap to dense of the best searched entry vs the best hand-made metric, per setting (means over
    seeds): how much of the damage the discovered metric removes."""
    ranked, dense = summarize(rows, job, report)
    if dense is None:
        return ""
    hand = [e for e in ranked if not e["label"].startswith("searched") and e["label"] != "sparsegpt"]
    searched = [e for e in ranked if e["label"].startswith("searched")]
    if not hand or not searched:
        return ""
    parts = []
    for s in job.settings:
        # A setting compared across the layer also counts its per-row twin: each side's best group.
        cells = [c for c in job.leaderboard_settings if c in (s, per_row_twin(s))]
        best_hand = min(((e, c) for e in hand for c in cells if c in e["ppl"]), key=lambda p: p[0]["ppl"][p[1]][0],
                        default=None)
        best_found = min(((e, c) for e in searched for c in cells if c in e["ppl"]),
                         key=lambda p: p[0]["ppl"][p[1]][0], default=None)
        if best_hand is None or best_found is None:
            continue
        (hand_e, hand_c), (found_e, found_c) = best_hand, best_found
        g_hand, g_found = hand_e["ppl"][hand_c][0] - dense["ppl"], found_e["ppl"][found_c][0] - dense["ppl"]
        where = (lambda c: f" ({c})") if len(cells) > 1 else (lambda c: "")
        parts.append(f"{s}: {found_e['label']}{where(found_c)} {g_found:.2f} vs {hand_e['label']}{where(hand_c)} "
                     f"{g_hand:.2f} ({100 * (1 - g_found / g_hand):+.1f}% smaller)")
    return "Gap to dense, best searched vs best hand-made: " + "; ".join(parts) + "." if parts else ""


def _levers(job: SearchJob) -> str:
    parts = []
    if job.reconstruct == "obs":
        parts.append(f"every metric's mask is followed by the OBS weight update ({job.reconstruct_mode} mask; "
                     "sparsegpt reconstructs by itself)")
    elif job.reconstruct == "admm":
        moving = "the mask chosen again from the updated weights as the sparsity grows; "
        parts.append("every metric's mask is followed by the ADMM weight update for that mask ("
                     + (moving if job.reconstruct_mode == "gradual" else "") + "sparsegpt reconstructs by itself)")
    if job.mask_only:
        parts.append("then the update is discarded: every entry keeps the mask the update chose (sparsegpt's "
                     "too) on the dense weights")
    if job.allocation == "owl":
        parts.append(f"unstructured settings use OWL layer-wise sparsity (M={job.owl_m:g}, lambda={job.owl_lambda:g})")
    return (" Levers: " + "; ".join(parts) + ".") if parts else ""


def _where(info: dict | None) -> str:
    where = (info.get("path") or info.get("source")) if info else "-"
    if info and info.get("path"):  # folder/file: readable and machine-neutral (job.json has it whole)
        where = "/".join(Path(where).parts[-2:])
    elif info and info.get("split"):
        where = f"{where} ({info['split']})"
    if info and info.get("model"):
        where = f"{where}, model `{info['model']}`"
    return where


def write_markdown(path: Path, rows: list[dict], job: SearchJob, report_info: dict[str, dict],
                   seeded: dict[int, str] | None = None, merged: dict[str, list[str]] | None = None) -> None:
    seeds = job.leaderboard_seeds
    text = (
        f"# Leaderboard\n\nModel `{job.model}`; each metric pruned with the full sequential pipeline "
        f"({job.nsamples}x{job.seqlen} {job.calib_data} calibration, "
        + (f"seed {seeds[0]}" if len(seeds) == 1 else f"mean ± sd over calibration seeds {', '.join(map(str, seeds))}")
        + f"), seqlen {job.seqlen}. Settings: {', '.join(job.leaderboard_settings)} (a bare number is unstructured "
        "sparsity compared per output row; ':layer' across the whole layer; ':band' across the layer with each "
        f"row's share within {ROW_BAND:g} of the target)."
        + _levers(job) + "\n"
    )
    for report, info in report_info.items():
        tokens = next((r["tokens"] for r in rows if r.get("report") == report), 0)
        text += f"\n## {_where(info)}, {tokens} tokens\n\n" + format_table(rows, job, report) + "\n"
        gap = gap_summary(rows, job, report)
        if gap:
            text += "\n" + gap + "\n"
    if seeded:  # "searched #k" keeps the hall-of-fame rank, so the gaps are explained
        text += ("\nIn the search's hall of fame (search fitness), " + ", ".join(
            f"#{rank} is {name}" for rank, name in sorted(seeded.items()))
            + " (seeded into generation 0), listed under its own name.\n")
    shown = {r.get("formula") for r in rows}
    for formula, same in (merged or {}).items():
        if formula in shown:  # equal fitness at every rung = the same masks: one row, not several
            text += (f"\n`{formula}` stands also for " + ", ".join(f"`{e}`" for e in same)
                     + " (the same search fitness to the last bit at every rung: they prune alike).\n")
    io.write_text(path, text)
