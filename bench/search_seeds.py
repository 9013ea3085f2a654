"""Searches that show their spread: several search seeds, each resumable, then one table of what
each found next to the hand-made metrics, over calibration seeds and two reporting texts.

Every search is `prunerzero search` into runs/seeds/<name> (resumed when its folder exists, so the
set can be run over several sittings: rerun the same command). The leaderboard of each prunes
every entry with each of --calib-seeds and measures WikiText-2 test and QASPER; the baselines'
numbers are shared through the leaderboard cache, so they are measured once. `--write` writes
the `search-seeds` section of docs/BENCHMARKS.md from the run folders, without searching.

The run folders' small files (settings, evaluation log, checkpoint, hall of fame, leaderboard; not
the statistics, which a resume computes again exactly) are mirrored every minute into
bench/results/seeds/<name>/, which is kept in git: a machine that does not keep runs/ between
sittings restores the folder from there and resumes, and `--write` reads it when runs/ is gone.
Each start or resume adds a line to the folder's sittings.jsonl (when, on which machine): `--write`
names the machines that ran the searches, which may not be the one writing.

    .venv/bin/python bench/search_seeds.py                 # run (or resume) every search
    .venv/bin/python bench/search_seeds.py --write         # the section
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_bench import BIN, ROOT, WIKI, machine, replace_section, seed_list  # noqa: E402

from prunerzero.io import append_jsonl, read_jsonl  # noqa: E402

RUNS = ROOT / "runs" / "seeds"
ARCHIVE = ROOT / "bench" / "results" / "seeds"
# What a search needs to resume and a report needs to be written: everything but the statistics
# (stats*.safetensors, hundreds of MB, derived exactly from the model and the calibration windows).
# The checkpoint is copied before the log: the copied log then holds at least every record the copied
# checkpoint counts (a log ahead of its checkpoint is what a kill leaves, and resume expects it).
# One line per sitting of a search (when it started or resumed, on which machine): a search spread over
# sittings may run on different CPUs, and --write states the ones that ran it, not the one that writes.
SITTINGS = "sittings.jsonl"
KEPT = ("job.json", "config.json", "checkpoint.json", "hall_of_fame.json", "evaluations.jsonl", "leaderboard.jsonl",
        "best_metric.txt", "best_tree.json", "best_metric.json", "best_genes.json", "timing.json", "timing-1.json",
        SITTINGS)
COMMON = ["--model", "smollm2-135m", "--nsamples", "32", "--seqlen", "512", "--eval-dtype", "bfloat16",
          "--calib-seeds", "0,1,2", "--report-tokens", "8192", "--leaderboard-top", "2",
          "--baselines", "magnitude,wanda,gblm,ria,pruner-zero,sparsegpt"]
HAND_MADE = ("magnitude", "wanda", "gblm", "ria", "pruner-zero")
TWO_MODELS = ("smollm2-135m", "gemma3-270m")  # Llama and Gemma-3: a metric must suit both families
POPULATION, GENERATIONS = 40, 17  # each search's budget unless the command says otherwise
# The options naming the searches beyond the joint ones (their runs' names: see searches()).
SEED_FLAGS = ("gauge_seeds", "masks_seeds", "per_setting_seeds", "two_model_seeds", "obs_seeds", "units_seeds",
              "units_two_model_seeds", "sweep_mask_seeds", "layer_seeds")
GAUGE_OPS = ("sqr", "neg", "abs", "log", "exp", "sqrt", "tanh", "pow", "skp", "mms", "zsn", "rown", "coln",
             "add", "sub", "mul", "div")


def searches(args: argparse.Namespace) -> dict[str, list[str]]:
    """run name -> its own options (seed, settings)."""
    # The joint searches are the unconstrained search they were started as (the CLI's default is now gauge).
    out = {f"joint-seed{s}": ["--seed", str(s), "--settings", "0.5,2:4", "--invariance", "none"] for s in args.seeds}
    def gauge(seed: int, settings: str, dedup: str) -> list[str]:
        return ["--seed", str(seed), "--settings", settings, "--invariance", "gauge", "--dedup", dedup,
                "--ops", ",".join(GAUGE_OPS)]

    def units(seed: int, settings: str = "0.5,2:4") -> list[str]:  # gauge-masks with the units-invariant language
        return [a if a != "gauge" else "units" for a in gauge(seed, settings, "masks")]

    for s in args.gauge_seeds:  # only gauge-invariant formulas, with per-row / per-column normalisers to build sums
        out[f"gauge-seed{s}"] = gauge(s, "0.5,2:4", "formula")
    for s in args.masks_seeds:  # the same, formulas that prune alike evaluated once (the CLI's default)
        out[f"gauge-masks-seed{s}"] = gauge(s, "0.5,2:4", "masks")
    for s in args.per_setting_seeds:  # the gauge-masks search for one setting at a time: half a joint candidate's cost
        out[f"only24-seed{s}"] = gauge(s, "2:4", "masks")
        out[f"only50-seed{s}"] = gauge(s, "0.5", "masks")
    for s in args.two_model_seeds:  # the gauge-masks search scored on two model families at once (geometric mean)
        out[f"two-models-seed{s}"] = gauge(s, "0.5,2:4", "masks") + ["--model", ",".join(TWO_MODELS)]
    for s in args.obs_seeds:  # the gauge-masks search with SparseGPT's OBS update after every mask, in the
        # fitness and in the leaderboard (every entry, baselines too): the mask that is best *after* the update
        out[f"update-obs-seed{s}"] = gauge(s, "0.5,2:4", "masks") + ["--reconstruct", "obs"]
    for s in args.units_seeds:  # the gauge-masks search in the wider units-invariant language, the smallest of
        # the CLI's languages that holds RIA (the best hand-made 2:4 mask; seeded into generation 0, so a search
        # can improve on it)
        out[f"units-masks-seed{s}"] = units(s)
    for s in args.units_two_model_seeds:  # the units search scored on SmolLM2 and Gemma-3 at once: the language
        # whose winner travelled best (docs/METRICS.md), with a fitness that sees two families
        out[f"units-two-models-seed{s}"] = units(s) + ["--model", ",".join(TWO_MODELS)]
    for s in args.sweep_mask_seeds:  # the units search at 2:4 with each candidate's mask chosen inside the OBS
        # sweep and the update discarded (--mask-only), baselines too: the sequential mask choice that gives
        # SparseGPT its 2:4 mask, open to every formula (2:4 alone: at 50% SparseGPT's sweep mask lost to Wanda)
        out[f"sweep-mask24-seed{s}"] = units(s, "2:4") + ["--reconstruct", "obs", "--reconstruct-mode", "block",
                                                          "--mask-only"]
    for s in args.layer_seeds:  # the units search at 50% with the scores compared across each whole layer
        # ('0.5:layer'): the formula also decides how many weights each output row loses (per row, as
        # Wanda compares, every row loses half); its leaderboard measures every entry per row too
        out[f"layer50-seed{s}"] = units(s, "0.5:layer")
    return out


def run_dir(name: str) -> Path:
    """The run's folder: runs/seeds/<name> where this machine has it, else its archived copy."""
    return RUNS / name if (RUNS / name / "job.json").exists() else ARCHIVE / name


def mirror(src: Path, dst: Path) -> None:
    """Copy the run's kept files from src to dst, each atomically (a reader sees the old or the new file)."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in KEPT:
        if (src / name).is_file():
            tmp = dst / f".{name}.tmp"
            shutil.copyfile(src / name, tmp)
            tmp.replace(dst / name)


def run_search(cmd: list[str], out: Path, archive: Path, every: float = 60.0) -> None:
    """Run one search, mirroring its folder into the archive every `every` seconds and at the end.
    `kill -TERM` on this script stops the search and mirrors what it wrote (SIGINT is ignored when the
    script runs in the background of a non-interactive shell, as nohup ... & does)."""
    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    out.mkdir(parents=True, exist_ok=True)
    append_jsonl(out / SITTINGS, {"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                                  "machine": machine()})
    proc = subprocess.Popen(cmd)
    try:
        while proc.poll() is None:
            try:
                proc.wait(timeout=every)
            except subprocess.TimeoutExpired:
                pass
            if (out / "job.json").exists():
                mirror(out, archive)
    finally:
        if proc.poll() is None:  # interrupted here: stop the search, keep what it wrote
            proc.terminate()
            proc.wait()
        if (out / "job.json").exists():
            mirror(out, archive)
    if proc.returncode:
        raise SystemExit(f"search {out.name} stopped with exit status {proc.returncode}")


def run_all(args: argparse.Namespace) -> None:
    report = f"{WIKI.resolve()},qasper"
    for name, own in searches(args).items():
        out = RUNS / name
        if not (out / "job.json").exists() and (ARCHIVE / name / "job.json").exists():
            print(f"restoring {out} from {ARCHIVE / name} (resuming)", flush=True)
            mirror(ARCHIVE / name, out)
        if (out / "job.json").exists():
            cmd = [str(BIN / "prunerzero"), "--quiet", "search", "--resume", str(out)]
            if args.budget_given:  # a resumed search's budget changes only when the command says so
                cmd += ["--generations", str(args.generations)]
        else:
            cmd = [str(BIN / "prunerzero"), "--quiet", "search", *COMMON, *own, "--population", str(args.population),
                   "--generations", str(args.generations), "--report-data", report, "--out", str(out),
                   *args.extra]
        print(" ".join(cmd), flush=True)
        run_search(cmd, out, ARCHIVE / name)


def _rows(run: Path) -> list[dict]:
    path = run / "leaderboard.jsonl"
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return rows


def _mean_sd(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else 0.0)


def _distinct_masks(evaluations: list[dict], fids: tuple[str, ...], config: dict) -> str:
    """How many different masks (symbolic.invariance.mask_fingerprint, with the run's terminals) the valid
    candidates of each rung had: the exploration a run bought, which its count of formulas overstates
    when many prune alike. Exact: masks that differ only by rounding count twice (the search's dedup
    allows 0.2% of entries)."""
    from prunerzero.analysis.stats import run_spec
    from prunerzero.symbolic import Metric, parse
    from prunerzero.symbolic.invariance import mask_fingerprint

    spec = run_spec({"config": config})
    fingerprints: dict[str, str | None] = {}
    counts = []
    for fid in (fids[0], fids[-1]):
        valid = {e["expression"] for e in evaluations if e["fidelity"] == fid and e["fitness"] is not None}
        for expression in valid - set(fingerprints):
            fingerprints[expression] = mask_fingerprint(Metric(parse(expression), spec))
        counts.append(f"{len({fingerprints[x] for x in valid})} of {len(valid)}")
    return " / ".join(counts)


# Table columns, in this order when present; other settings follow as the runs name them.
COLUMN_ORDER = ("0.5", "0.5:layer", "2:4")
COLUMN_NAMES = {"0.5": "50%", "0.5:layer": "50% across the layer", "2:4": "2:4"}
EITHER = "0.5, either group"  # 50%, each entry in its better comparison group (a layer search's own view)


def _columns(settings: set[str]) -> list[str]:
    """The settings measured, as table columns: 50% and 2:4 always (older sections have both), the
    rest after them."""
    return [c for c in COLUMN_ORDER if c in settings or c in ("0.5", "2:4")] + sorted(settings - set(COLUMN_ORDER))


def _comparisons(columns: list[str], entries: dict[str, dict[str, dict[int, float]]]
                 ) -> list[tuple[str, dict[str, dict[str, dict[int, float]]]]]:
    """(setting, entries) pairs to compare the best searched with the best hand-made metric on: each
    column, and with a layer-compared 50% the two groups together, each entry taking the group with the
    lower mean (per row is how the hand-made metrics were made; across the layer is how a layer search
    scored its candidates: the goal is to beat either)."""
    out = [(c, entries) for c in columns]
    if "0.5:layer" in columns:
        either = {}
        for key, by_setting in entries.items():
            groups = [by_setting[c] for c in ("0.5", "0.5:layer") if c in by_setting]
            if groups:
                either[key] = {**by_setting, EITHER: min(groups, key=lambda v: _mean_sd(list(v.values()))[0])}
        out.append((EITHER, either))
    return out


def _robustness(cells: list[tuple[str, dict[str, float]]], searched: set[str]) -> list[str]:
    """Each entry's gap to dense divided by the best hand-made metric's gap *in the same cell* (text,
    model, setting: an oracle choice, since which hand-made metric is best changes from cell to cell),
    as a geometric mean over the cells and the worst cell. Only entries measured in every cell."""
    cells = [(name, gaps) for name, gaps in cells if any(k in HAND_MADE for k in gaps)]
    if len(cells) < 2:
        return []
    best = [min(v for k, v in gaps.items() if k in HAND_MADE) for _, gaps in cells]
    everywhere = [k for k in cells[0][1] if k != "sparsegpt" and all(k in gaps for _, gaps in cells)]
    table = []
    for key in everywhere:
        ratios = [gaps[key] / b for (_, gaps), b in zip(cells, best)]
        worst = max(range(len(cells)), key=lambda i: ratios[i])
        table.append((math.exp(statistics.fmean(map(math.log, ratios))), ratios[worst], cells[worst][0], key))
    lines = ["", f"### Over all {len(cells)} cells: gap to dense / the best hand-made metric's gap in that cell",
             "", "Below 1: better than the best hand-made metric of every cell (chosen per cell, with hindsight); "
             "ratios of the means above.", "", "| metric | geometric mean | worst cell |", "|---|---|---|"]
    for geo, worst, where, key in sorted(table):
        lines.append(f"| {f'`{key}`' if key in searched else key} | {geo:.3f} | {worst:.3f} ({where}) |")
    return lines


def machines_line(names: list[str]) -> str:
    """Which machines ran the searches, from their sittings.jsonl (runs started before it existed
    have none: then the line says so and names the machine writing the section, that is all it knows)."""
    seen: list[str] = []
    unrecorded = []
    for name in names:
        rows = read_jsonl(run_dir(name) / SITTINGS)  # none when the file is missing; a torn last line left out
        if not rows:
            unrecorded.append(name)
        seen += [m for m in dict.fromkeys(r["machine"] for r in rows) if m not in seen]  # each machine once
    line = (f"Machines (in the order their sittings began): {'; '.join(seen)}." if len(seen) > 1
            else f"Machine (every sitting): {seen[0]}." if seen else "")
    if unrecorded:
        line += (f" {'Searches' if seen else 'The searches'} {', '.join(unrecorded)} recorded no machine (they predate "
                 f"{SITTINGS}); this section was written on {machine()}.")
    return line.strip()


def write(args: argparse.Namespace) -> str:
    names = [n for n in searches(args) if (run_dir(n) / "checkpoint.json").exists()]
    if not names:
        raise SystemExit("none of these searches has finished a generation yet (no checkpoint.json in runs/seeds "
                         "or bench/results/seeds): nothing to write")
    title = "" if args.section == "search-seeds" else f" ({args.section})"
    lines = [f"## Searches over seeds: what they find, and whether it holds on other text{title}", ""]
    jobs = {n: json.loads((run_dir(n) / "job.json").read_text()) for n in names}  # each run's settings, read once
    first_job = jobs[names[0]]
    ladder = ",".join(first_job.get("ladder") or [f"{t}" for t in first_job["fidelity_tokens"]])
    models = sorted({job["model"] for job in jobs.values()})
    updates = sorted({job.get("reconstruct", "none") + (f" --reconstruct-mode {job.get('reconstruct_mode')}"
                                                         if job.get("reconstruct_mode", "fixed") != "fixed" else "")
                      for job in jobs.values()} - {"none"})
    mask_only = any(job.get("mask_only") for job in jobs.values())
    lines += [f"Model(s) scored by the fitness: {'; '.join(f'`{m}`' for m in models)}. Each search: population {first_job['search']['population']}, "
              f"{first_job['search']['generations']} generations, fitness ladder `{ladder}` on the general mix's "
              f"search split, 32x512 calibration on its calib split, parsimony {first_job['search'].get('parsimony', 0)}. "
              f"{machines_line(names)}"
              + (f" Every mask, in the fitness and in the tables below (the hand-made metrics' too), is followed by "
                 f"the `--reconstruct {'/'.join(updates)}` weight update"
                 + (" and, with `--mask-only`, the update is then discarded: every entry (sparsegpt's too) is the mask "
                    "the update chose, on the dense weights." if mask_only else ".") if updates else ""), "",
              "| search | settings | evaluated | invalid | distinct masks (cheap / top rung) | replaced as duplicates "
              "(same masks) | wall h (first to last evaluation, pauses included) | rung agreement (Spearman / Kendall) | winner | size |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    winners: dict[str, list[tuple[str, str]]] = {}  # formula -> [(search, label)]
    for name in names:
        run = run_dir(name)
        job = jobs[name]
        ck = json.loads((run / "checkpoint.json").read_text())
        evaluations = [json.loads(x) for x in (run / "evaluations.jsonl").read_text().splitlines() if x.strip()]
        times = [e["time"] for e in evaluations]
        wall = (max(times) - min(times)) / 3600 if times else float("nan")
        agreement = ck.get("rung_agreement") or {}
        from prunerzero.search.scores import FitnessCache, rung_agreement  # the run's own records

        config = json.loads((run / "config.json").read_text())
        fids = tuple(config["fidelities"])
        try:
            cache = FitnessCache(evaluations, ck["generation"])
            agreement = rung_agreement(cache, fids)
        except Exception:  # noqa: BLE001 - a report, not a check
            pass
        agree = "; ".join(f"{k}: {v['rho']:.2f} / {v['tau']:.2f} (n={v['n']})" for k, v in agreement.items()
                          if v.get("rho") is not None) or "-"
        hof = json.loads((run / "hall_of_fame.json").read_text())
        best = hof[0]
        stats = ck["stats"]
        dups = f"{stats['duplicates_replaced']} ({stats['mask_duplicates']})" if job["search"].get("dedup") == "masks" \
            else str(stats["duplicates_replaced"])
        lines.append(f"| {name} | {','.join(job['settings'])} | {stats['evaluations']} | "
                     f"{stats['invalid']} | {_distinct_masks(evaluations, fids, config)} | {dups} | {wall:.1f} | {agree} | `{best['expression']}` | {best.get('size', '')} |")
        for row in _rows(run):
            if row.get("label", "").startswith("searched") and row.get("formula"):
                winners.setdefault(row["formula"], [])
                if (name, row["label"]) not in winners[row["formula"]]:
                    winners[row["formula"]].append((name, row["label"]))
    # One table per reporting text: every searched winner and every baseline, mean ± sd over calibration seeds.
    all_rows = [r for n in names for r in _rows(run_dir(n))]
    cells: list[tuple[str, dict[str, float]]] = []  # (text, model and setting; mean gap to dense of each entry)
    for report in sorted({r["report"] for r in all_rows if r.get("report")}):
        source, _, model = report.partition(" @ ")  # a multi-model search reports each model's texts apart
        label = ("WikiText-2 test" if "wiki" in source else source) + (f" on {model}" if model else "")
        rows = [r for r in all_rows if r.get("report") == report]
        dense = next((r["ppl"] for r in rows if r["label"] == "dense"), None)
        entries: dict[str, dict[str, dict[int, float]]] = {}
        for r in rows:
            if r["label"] == "dense" or r.get("setting") is None:
                continue
            key = r["label"] if not r["label"].startswith("searched") else r["formula"]
            entries.setdefault(key, {}).setdefault(r["setting"], {})[r["seed"]] = r["ppl"]
        columns = _columns({r["setting"] for r in rows if r.get("setting")})
        lines += ["", f"### {label} ({rows[0]['tokens']} tokens), dense {dense:.2f}; mean ± sd over calibration seeds",
                  "", "| metric | found by | " + " | ".join(f"ppl {COLUMN_NAMES.get(c, c)}" for c in columns) + " |",
                  "|---|---|" + "---|" * len(columns)]

        def cell(values: dict[int, float] | None) -> str:
            if not values:
                return "-"
            m, sd = _mean_sd(list(values.values()))
            return f"{m:.2f} ± {sd:.2f} (n={len(values)})"

        # Searched formulas that prune alike (every value equal to the last bit: e.g. mms(X * W) and
        # mms(X * (W + W)), listed twice by searches older than the hall of fame's merge) get one row.
        found_by = {k: list(v) for k, v in winners.items()}  # per text: the merge below must not pile up
        for key in [k for k in entries if k in winners]:
            twin = next((k for k in entries if k in winners and k != key and entries[k] == entries[key]
                         and len(k) < len(key)), None)
            if twin is not None:
                found_by[twin] += [(n, f"{lab} `{key}`") for n, lab in winners[key]]
                del entries[key]
        # Entries measured at both settings first (a per-setting search's winners have one), each group
        # by the geometric mean over its settings.
        order = sorted(entries, key=lambda k: (-len(entries[k]), math.prod(_mean_sd(list(v.values()))[0]
                                                                          for v in entries[k].values()) ** (1 / len(entries[k]))))
        for key in order:
            found = ", ".join(f"{n} {lab}" for n, lab in found_by.get(key, [])) or "hand-made" \
                if key not in ("sparsegpt",) else "weight update"
            shown = f"`{key}`" if key in winners else key
            lines.append(f"| {shown} | {found} | " + " | ".join(cell(entries[key].get(c)) for c in columns) + " |")
        # Robustness cells: one per setting; with a layer-compared 50%, its "either group" view stands for 50%.
        cell_settings = ("2:4", EITHER) if "0.5:layer" in columns else ("0.5", "2:4")
        for setting, group in _comparisons(columns, entries):
            if dense and setting in cell_settings:
                cells.append((f"{label}, {setting}", {k: _mean_sd(list(v[setting].values()))[0] - dense
                                                       for k, v in group.items() if setting in v}))
            by_seed = {k: v[setting] for k, v in group.items() if k in HAND_MADE and setting in v}
            hand = [(k, _mean_sd(list(values.values()))[0]) for k, values in by_seed.items()]
            # Only entries measured on every calibration draw the hand-made ones were: a winner still being
            # measured (1-2 draws) must not be named best on a smaller, noisier sample.
            draws = max(map(len, by_seed.values()), default=0)
            found = [(k, _mean_sd(list(v[setting].values()))[0]) for k, v in group.items()
                     if k in winners and setting in v and len(v[setting]) >= draws]  # (a 2:4-only search: no 0.5)
            if hand and found and dense:
                (hk, hv), (fk, fv) = min(hand, key=lambda t: t[1]), min(found, key=lambda t: t[1])
                paired = sorted(set(group[fk][setting]) & set(group[hk][setting]))
                per_seed = ", ".join(f"seed {sd}: {100 * (1 - (group[fk][setting][sd] - dense) / (group[hk][setting][sd] - dense)):+.1f}%"
                                     for sd in paired)

                def named(k: str) -> str:  # the "either group" view says which group each side took
                    return next((f" ({c})" for c in ("0.5", "0.5:layer") if group[k].get(c) is group[k][setting]), "") \
                        if setting == EITHER else ""
                lines.append(f"\n{setting}: best searched `{fk}`{named(fk)} gap to dense {fv - dense:.2f} vs best "
                             f"hand-made {hk}{named(hk)} {hv - dense:.2f}: {100 * (1 - (fv - dense) / (hv - dense)):+.1f}% "
                             f"smaller (paired by calibration draw: {per_seed}).")
    lines += _robustness(cells, set(winners))
    # The command's search flags: every --*-seeds option given, in the order main() declares them.
    gauge = "".join(f" --{name.replace('_', '-')} {','.join(map(str, getattr(args, name)))}"
                    for name in SEED_FLAGS if getattr(args, name))
    seeds = ",".join(map(str, args.seeds)) or '""'  # '' (no joint search) must stay visible in the command
    # A budget other than the default is part of the command: the run that starts the search needs it.
    budget = f" --population {args.population}" if args.population != POPULATION else ""
    budget += f" --generations {args.generations}" if args.generations != GENERATIONS else ""
    lines += ["", f"Command: `.venv/bin/python bench/search_seeds.py --seeds {seeds}{gauge}{budget}` "
              "(each search resumable; rerun to continue), then the same with `--write"
              + ("" if args.section == "search-seeds" else f" --section {args.section}") + "`. Searches: `prunerzero search "
              + " ".join(COMMON) + " --seed S --settings 0.5,2:4 "
              f"--population {args.population} --generations {args.generations} --report-data "
              "../shared/data/wikitext-2-raw/wiki.test.raw,qasper " + " ".join(args.extra) + " --out runs/seeds/<name>`, "
              "with `--invariance none` for joint-seedS"
              + (f", `--invariance gauge --dedup formula --ops {','.join(GAUGE_OPS)}` for gauge-seedS, the same with "
                 "`--dedup masks` for gauge-masks-seedS and, with `--settings 2:4` or `0.5` alone, for only24-seedS / "
                 f"only50-seedS, with `--model {','.join(TWO_MODELS)}` for two-models-seedS, with `--reconstruct obs` for "
                 "update-obs-seedS, with `--invariance units` in place of gauge for units-masks-seedS and, with "
                 f"`--model {','.join(TWO_MODELS)}` too, for units-two-models-seedS, and with `--settings 2:4 "
                 "--reconstruct obs --reconstruct-mode block --mask-only` for sweep-mask24-seedS, and with `--settings "
                 "0.5:layer` for layer50-seedS (the later `--baselines` wins)."
                 if gauge else ".")]
    text = "\n".join(lines)
    replace_section(args.section, text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=seed_list, default=[0, 1, 2],
                    help="seeds of the unconstrained joint search (names joint-seedS); '' for none")
    ap.add_argument("--population", type=int, default=POPULATION)
    ap.add_argument("--generations", type=int, default=None,
                    help=f"generations of a new search (default {GENERATIONS}); given with a resumed one, its new "
                         "budget (more to extend it, or fewer, not below what it has run, to end it and write the "
                         "leaderboard now)")
    ap.add_argument("--gauge-seeds", type=seed_list, default=[],
                    help="also these seeds of the search with --invariance gauge (names gauge-seedS)")
    ap.add_argument("--masks-seeds", type=seed_list, default=[],
                    help="also these seeds of the gauge search with --dedup masks (names gauge-masks-seedS)")
    ap.add_argument("--per-setting-seeds", type=seed_list, default=[],
                    help="also these seeds of the gauge-masks search run once per setting (names only24-seedS, "
                         "only50-seedS)")
    ap.add_argument("--two-model-seeds", type=seed_list, default=[],
                    help="also these seeds of the gauge-masks search with the fitness over SmolLM2 and Gemma-3-270M "
                         "(names two-models-seedS)")
    ap.add_argument("--obs-seeds", type=seed_list, default=[],
                    help="also these seeds of the gauge-masks search with the OBS update after every mask, in the "
                         "fitness and the leaderboard (names update-obs-seedS)")
    ap.add_argument("--units-seeds", type=seed_list, default=[],
                    help="also these seeds of the gauge-masks search with --invariance units, the language that "
                         "holds RIA (names units-masks-seedS)")
    ap.add_argument("--units-two-model-seeds", type=seed_list, default=[],
                    help="also these seeds of the units search with the fitness over SmolLM2 and Gemma-3-270M "
                         "(names units-two-models-seedS; resumable)")
    ap.add_argument("--sweep-mask-seeds", type=seed_list, default=[],
                    help="also these seeds of the units search at 2:4 with every mask chosen inside the OBS sweep, the "
                         "update discarded (names sweep-mask24-seedS; resumable)")
    ap.add_argument("--layer-seeds", type=seed_list, default=[],
                    help="the units search at 50%% compared across each layer (0.5:layer) with these seeds")
    ap.add_argument("--section", default="search-seeds",
                    help="the docs/BENCHMARKS.md section --write replaces: another name keeps the runs written "
                         "before (search-seeds was written from run folders this machine no longer has), e.g. "
                         "search-two-models")
    ap.add_argument("--write", action="store_true")
    args, args.extra = ap.parse_known_args()
    args.budget_given = args.generations is not None
    args.generations = GENERATIONS if args.generations is None else args.generations
    if args.write:
        print(write(args))
    else:
        try:
            run_all(args)
        except KeyboardInterrupt:  # kill -TERM (or Ctrl-C): run_search has stopped the search and mirrored it
            raise SystemExit(f"stopped; what the search wrote is in {ARCHIVE} (rerun the same command to resume)")


if __name__ == "__main__":
    main()
