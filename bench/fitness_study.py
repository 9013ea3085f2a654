"""What is a search fitness worth? Rank agreement of candidate fitnesses with the truth, and their cost.

Truth for a metric: the full sequential pipeline (32x512 calibration on the general mix's calib
split, seed 0) measured on 8192 tokens of the general mix's *validation* split in float32: text that
is neither calibration, search fitness nor a reporting set. Candidates, all measured after the same
candidate's pruning:

  all-at-once proxy (the search's fast path: every linear pruned from the dense statistics)
    ppl on the general search split: 1k / 4k / 16k tokens (8 x 512 = 4k ...), bf16 forwards
    ppl on one domain alone: LAMBADA's search split (fiction), SQuAD's (Wikipedia), 4k tokens
    window shapes on the general search split, 4k tokens: 32 x 128, 8 x 512, 2 x 2048
    KL divergence from the dense model on the general search split: 1k / 4k tokens
    err: the mean relative layer output error tr(dW H dW^T) / tr(W H W^T), no forward pass
  sequential pipeline (what `prunerzero prune` does) on the general search split, 4k tokens, bf16

Metrics: the five named ones, the winners of earlier searches (docs/BENCHMARKS.md), and random
valid formulas from the search's own generator. Every (metric, setting) is one line of
`<run>/study.jsonl`, appended as measured, so a killed study resumes. `--write` writes the
`fitness` section of docs/BENCHMARKS.md from the file.

    .venv/bin/python bench/fitness_study.py --run runs/fitness-study            # measure (resumable)
    .venv/bin/python bench/fitness_study.py --run runs/fitness-study --write    # report
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_bench import machine, replace_section  # noqa: E402

SETTINGS = ("0.5", "2:4")
EARLIER_WINNERS = (  # hall-of-fame entries of the searches in docs/BENCHMARKS.md (and make demo)
    "W * (exp(div(G, G)) * sqrt(X) * G + W * G)",
    "W * (W * G + W * G) + W * G",
    "sqr(mms(W)) * sqrt(X + sqrt(G)) + W * sqrt(X)",
    "W * (W * X + W * sqrt(sqrt(X)) * G)",
    "W * sqrt(X) * (W * sqrt(X) + W * G)",
    "(coln(W) + rown(W)) * sqrt(X)",
    "abs(W) * mms(G)",
)
NAMED = ("magnitude", "wanda", "gblm", "ria", "pruner-zero")
N_RANDOM = 16
CANDIDATES = {  # name -> (what it is, which measurements' seconds make it up)
    "ppl general 1k": "perplexity, general search split, 2 x 512 tokens",
    "ppl general 4k": "perplexity, general search split, 8 x 512 tokens",
    "ppl general 16k": "perplexity, general search split, 32 x 512 tokens",
    "ppl lambada 4k": "perplexity, LAMBADA search split (fiction only), 8 x 512",
    "ppl squad 4k": "perplexity, SQuAD search split (Wikipedia only), 8 x 512",
    "ppl general 4k as 32x128": "perplexity, general search split, 32 windows of 128",
    "ppl general 4k as 2x2048": "perplexity, general search split, 2 windows of 2048",
    "kl general 1k": "KL from the dense model, general search split, 2 x 512",
    "kl general 4k": "KL from the dense model, general search split, 8 x 512",
    "err": "relative layer output error from the dense Hessians, no forward pass",
    "sequential ppl general 4k": "full sequential pipeline, then perplexity on 8 x 512 of the search split",
}
SEQ_PASSES = (8, 32)  # pass 2 / 3: the sequential pipeline on the first N calibration windows, bf16
for _n in SEQ_PASSES:
    CANDIDATES.update({
        f"seq{_n} ppl general 1k": f"sequential pipeline on {_n} calibration windows (bf16), perplexity on 2 x 512",
        f"seq{_n} ppl general 4k": f"sequential pipeline on {_n} calibration windows (bf16), perplexity on 8 x 512",
        f"seq{_n} kl general 4k": f"sequential pipeline on {_n} calibration windows (bf16), KL from dense on 8 x 512",
    })


def random_formulas(lm, stats, n: int, seed: int) -> list[str]:
    """`n` distinct random valid formulas from the search's own generator (ramped half-and-half),
    valid meaning finite, non-constant scores on a real layer."""
    import torch

    from prunerzero.search.operators import Language, ramped_half_and_half
    from prunerzero.symbolic import PRUNER_ZERO_OPS, Metric, canonical_key, format_expr, simplify
    from prunerzero.models import weight_matrix

    rng, lang = random.Random(seed), Language(PRUNER_ZERO_OPS)
    name = next(k for k in stats if k.endswith("mlp.down_proj") and ".3." in k)
    module = dict(lm.model.named_modules())[name]
    w, s = weight_matrix(module).float(), stats[name]
    out, keys, index = [], set(), 0
    while len(out) < n:
        e = simplify(ramped_half_and_half(rng, lang, index, 2, 4))
        index += 1
        key = canonical_key(e)
        if key in keys:
            continue
        try:
            score = Metric(e).scores(w, s.x_mean_sq, s.grad_l1, s.grad_l2)
        except Exception:
            continue
        if not torch.isfinite(score).all() or float(score.std()) == 0 or "W" not in format_expr(e):
            continue
        keys.add(key)
        out.append(format_expr(e))
    return out


def measure(run: Path, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    from prunerzero.calib.gradients import load_or_compute_gradients
    from prunerzero.data import load_text
    from prunerzero.eval.perplexity import logits_chunks, window_nll
    from prunerzero.methods.symbolic import symbolic_method
    from prunerzero.models import load_model
    from prunerzero.pipeline import collect_dense_stats, prune_model
    from prunerzero.masks import parse_setting
    from prunerzero.search.fitness import FitnessSettings, ProxyFitness
    from prunerzero.search.proxies import dense_top_k, kl_top_k
    from prunerzero.symbolic import load_metric, named_metric
    from prunerzero.windows import calibration_windows, eval_windows, tokenize

    run.mkdir(parents=True, exist_ok=True)
    log = run / "study.jsonl"
    done = set()
    if log.exists():
        for line in log.read_text().splitlines():
            try:
                r = json.loads(line)
                done.add((r["formula"], r["setting"]))
            except json.JSONDecodeError:
                pass  # a torn last line: measured again
    lm = load_model("smollm2-135m")
    model, tok = lm.model, lm.tokenizer
    t0 = time.perf_counter()
    calib_ids = calibration_windows(tokenize(tok, load_text("general", "calib")), 32, 512, 0)
    stats = collect_dense_stats(model, calib_ids, frozenset({"X", "H"}), batch_size=32, progress=True)
    grads, ginfo = load_or_compute_gradients(model, calib_ids, model_id=lm.path, data_id="general", seed=0)
    for name, (g1, g2) in grads.items():
        stats[name].grad_l1, stats[name].grad_l2 = g1, g2
    print(f"statistics {time.perf_counter() - t0:.0f} s (gradients {ginfo['seconds']:.0f} s)", flush=True)

    general = tokenize(tok, load_text("general", "search"))
    fit = ProxyFitness(model, general, stats, FitnessSettings(SETTINGS, (16384,), 512, "bfloat16"))
    windows = {
        "gen512": eval_windows(general, 512, 16384), "gen128": eval_windows(general, 128, 4096),
        "gen2048": eval_windows(general, 2048, 4096),
        "lambada": eval_windows(tokenize(tok, load_text("lambada", "search")), 512, 4096),
        "squad": eval_windows(tokenize(tok, load_text("squad", "search")), 512, 4096),
    }
    validation = eval_windows(tokenize(tok, load_text("general", "validation")), 512, 8192)
    bf16 = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    ref_ids, ref_logp = [], []  # the dense model's top-k on the 4k KL windows
    with bf16(), torch.no_grad():
        for batch in windows["gen512"][:8].split(4):
            for _, logits in logits_chunks(model, batch):
                i, lp = dense_top_k(logits)
                ref_ids.append(i)
                ref_logp.append(lp)
    ref_ids, ref_logp = torch.cat(ref_ids), torch.cat(ref_logp)

    formulas = [(n, named_metric(n)) for n in NAMED] + [(f, load_metric(f)) for f in EARLIER_WINNERS]
    picked = run / "random_formulas.json"
    if not picked.exists():
        picked.write_text(json.dumps(random_formulas(lm, stats, N_RANDOM, seed=1), indent=1))
    formulas += [(f, load_metric(f)) for f in json.loads(picked.read_text())]
    grads_map = {n: (s.grad_l1, s.grad_l2) for n, s in stats.items()}

    def timed(fn):
        start = time.perf_counter()
        value = fn()
        return value, time.perf_counter() - start

    def nll_per_window(w):
        with bf16():
            return window_nll(model, w).tolist()

    def kl_per_window(w):
        out, offset = [], 0
        with bf16(), torch.no_grad():
            for window in w:
                total, count = 0.0, 0
                for rows, logits in logits_chunks(model, window[None]):
                    n = rows.stop - rows.start
                    total += float(kl_top_k(logits, ref_ids[offset: offset + n], ref_logp[offset: offset + n]).sum())
                    count += n
                    offset += n
                out.append(total / count)
        return out

    for label, metric in formulas:
        for setting in SETTINGS:
            formula = label
            if (formula, setting) in done:
                continue
            target = parse_setting(setting)
            rec = {"formula": formula, "expression": str(metric), "setting": setting, "seconds": {}}
            try:
                _, rec["seconds"]["masks"] = timed(lambda: fit.apply(metric, target))
                for key, w in windows.items():
                    rec[key], rec["seconds"][key] = timed(lambda w=w: nll_per_window(w))
                rec["kl"], rec["seconds"]["kl"] = timed(lambda: kl_per_window(windows["gen512"][:8]))
                fit.restore()
                rec["err"], rec["seconds"]["err"] = timed(lambda: fit.output_error(metric, target))
                _, rec["seconds"]["sequential_prune"] = timed(lambda: prune_model(
                    model, symbolic_method(metric), target, calib_ids, grads=grads_map, progress=False))
                rec["seq_gen512"], rec["seconds"]["seq_gen512"] = timed(lambda: nll_per_window(windows["gen512"][:8]))
                truth, rec["seconds"]["truth"] = timed(lambda: window_nll(model, validation).tolist())
                rec["truth"] = truth
            except Exception as exc:  # noqa: BLE001 - a metric that breaks is recorded, not fatal
                rec["error"] = f"{type(exc).__name__}: {exc}"
            finally:
                fit.restore()
            with open(log, "a") as fh:
                fh.write(json.dumps(rec) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            truth_ppl = math.exp(sum(rec["truth"]) / len(rec["truth"])) if "truth" in rec else float("nan")
            print(f"{formula[:50]:50s} {setting:4s} truth {truth_ppl:9.2f}  "
                  f"{sum(rec['seconds'].values()):.0f} s", flush=True)


def measure_cheap_sequential(run: Path, threads: int, nsamples: int = 8) -> None:
    """Pass 2: the sequential pipeline on the first `nsamples` calibration windows with bf16
    calibration forwards (what the seq rung does), then perplexity and KL on 4k tokens of the
    search split; one line per (metric, setting) in <run>/study_seq.jsonl (resumable)."""
    import torch

    torch.set_num_threads(threads)
    from prunerzero.calib.gradients import load_or_compute_gradients
    from prunerzero.data import load_text
    from prunerzero.eval.perplexity import logits_chunks, window_nll
    from prunerzero.methods.symbolic import symbolic_method
    from prunerzero.models import find_decoder_layers, find_linears, load_model, weight_matrix
    from prunerzero.pipeline import prune_model
    from prunerzero.search.fitness import parse_setting
    from prunerzero.search.proxies import dense_top_k, kl_top_k
    from prunerzero.symbolic import load_metric, named_metric
    from prunerzero.windows import calibration_windows, eval_windows, tokenize

    log = run / f"study_seq{nsamples}.jsonl"
    done = {(r["formula"], r["setting"]) for r in map(json.loads, log.read_text().splitlines())} if log.exists() else set()
    lm = load_model("smollm2-135m")
    model, tok = lm.model, lm.tokenizer
    calib_ids = calibration_windows(tokenize(tok, load_text("general", "calib")), 32, 512, 0)
    grads, _ = load_or_compute_gradients(model, calib_ids, model_id=lm.path, data_id="general", seed=0)
    grads = grads.materialize() if hasattr(grads, "materialize") else grads
    windows = eval_windows(tokenize(tok, load_text("general", "search")), 512, 4096)
    layers_name, layers = find_decoder_layers(model)
    linears = {f"{layers_name}.{i}.{n}": m for i, layer in enumerate(layers) for n, m in find_linears(layer).items()}
    dense = {n: weight_matrix(m).detach().clone() for n, m in linears.items()}
    bf16 = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    ref_ids, ref_logp = [], []
    with bf16(), torch.no_grad():
        for batch in windows.split(4):
            for _, logits in logits_chunks(model, batch):
                i, lp = dense_top_k(logits)
                ref_ids.append(i)
                ref_logp.append(lp)
    ref_ids, ref_logp = torch.cat(ref_ids), torch.cat(ref_logp)
    labels = [json.loads(line)["formula"] for line in (run / "study.jsonl").read_text().splitlines()]
    for label in dict.fromkeys(labels):
        metric = named_metric(label) if label in NAMED else load_metric(label)
        for setting in SETTINGS:
            if (label, setting) in done:
                continue
            rec = {"formula": label, "setting": setting, "nsamples": nsamples, "seconds": {}}
            start = time.perf_counter()
            try:
                with bf16():
                    prune_model(model, symbolic_method(metric), parse_setting(setting), calib_ids[:nsamples],
                                grads=grads, progress=False)
                rec["seconds"]["prune"] = time.perf_counter() - start
                start = time.perf_counter()
                with bf16():
                    rec["ppl"] = window_nll(model, windows).tolist()
                rec["seconds"]["ppl"] = time.perf_counter() - start
                start, kls, offset = time.perf_counter(), [], 0
                with bf16(), torch.no_grad():
                    for window in windows:
                        total, count = 0.0, 0
                        for rows, logits in logits_chunks(model, window[None]):
                            n = rows.stop - rows.start
                            total += float(kl_top_k(logits, ref_ids[offset: offset + n], ref_logp[offset: offset + n]).sum())
                            count, offset = count + n, offset + n
                        kls.append(total / count)
                rec["kl"], rec["seconds"]["kl"] = kls, time.perf_counter() - start
            except Exception as exc:  # noqa: BLE001
                rec["error"] = f"{type(exc).__name__}: {exc}"
            finally:
                with torch.no_grad():
                    for n, m in linears.items():
                        weight_matrix(m).copy_(dense[n])
            with open(log, "a") as fh:
                fh.write(json.dumps(rec) + "\n")
            print(label[:50], setting, {k: round(v, 1) for k, v in rec["seconds"].items()}, flush=True)


# ---------------------------------------------------------------- report
def candidate_values(rec: dict, seqs: dict[int, dict] | None = None) -> dict[str, tuple[float, float]]:
    """candidate -> (value for this (metric, setting): log-scale, seconds of one candidate at one setting);
    `seqs` maps N to the same (metric, setting)'s record of the sequential pass on N windows, if measured."""
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    s = rec["seconds"]
    extra = {}
    for n, seq in (seqs or {}).items():
        t = seq["seconds"]
        extra.update({f"seq{n} ppl general 1k": (mean(seq["ppl"][:2]), t["prune"] + t["ppl"] / 4),
                      f"seq{n} ppl general 4k": (mean(seq["ppl"]), t["prune"] + t["ppl"]),
                      f"seq{n} kl general 4k": (math.log(max(mean(seq["kl"]), 1e-12)), t["prune"] + t["kl"])})
    per_window = s["gen512"] / len(rec["gen512"])
    masks = s["masks"]
    return {
        "ppl general 1k": (mean(rec["gen512"][:2]), masks + 2 * per_window),
        "ppl general 4k": (mean(rec["gen512"][:8]), masks + 8 * per_window),
        "ppl general 16k": (mean(rec["gen512"]), masks + s["gen512"]),
        "ppl lambada 4k": (mean(rec["lambada"]), masks + s["lambada"]),
        "ppl squad 4k": (mean(rec["squad"]), masks + s["squad"]),
        "ppl general 4k as 32x128": (mean(rec["gen128"]), masks + s["gen128"]),
        "ppl general 4k as 2x2048": (mean(rec["gen2048"]), masks + s["gen2048"]),
        "kl general 1k": (math.log(max(mean(rec["kl"][:2]), 1e-12)), masks + s["kl"] / 4),
        "kl general 4k": (math.log(max(mean(rec["kl"]), 1e-12)), masks + s["kl"]),
        "err": (math.log(max(rec["err"], 1e-12)), s["err"]),
        "sequential ppl general 4k": (mean(rec["seq_gen512"]), s["sequential_prune"] + s["seq_gen512"]),
        **extra,
    }


def report(run: Path) -> str:
    from scipy.stats import kendalltau, spearmanr

    recs = [json.loads(line) for line in (run / "study.jsonl").read_text().splitlines() if line.strip()]
    recs = [r for r in recs if "truth" in r and all(math.isfinite(x) for x in r["truth"])]
    by_formula: dict[str, dict[str, dict]] = {}
    for r in recs:
        by_formula.setdefault(r["formula"], {})[r["setting"]] = r
    seqs: dict[int, dict] = {}
    for n in SEQ_PASSES:
        path = run / f"study_seq{n}.jsonl"
        if path.exists():
            seqs[n] = {(r["formula"], r["setting"]): r for r in map(json.loads, path.read_text().splitlines())
                       if "ppl" in r}
    complete = {f: v for f, v in by_formula.items() if set(v) == set(SETTINGS)}
    for seq in seqs.values():  # compare every candidate on the same metrics: those every pass has measured
        complete = {f: v for f, v in complete.items() if all((f, t) in seq for t in SETTINGS)}
    formulas = sorted(complete)
    truth = {f: {s: sum(complete[f][s]["truth"]) / len(complete[f][s]["truth"]) for s in SETTINGS} for f in formulas}
    truth["both"] = None
    for f in formulas:
        truth[f]["both"] = sum(truth[f][s] for s in SETTINGS) / len(SETTINGS)
    values = {f: {s: candidate_values(complete[f][s], {n: seq[(f, s)] for n, seq in seqs.items()})
                  for s in SETTINGS} for f in formulas}
    ranked = sorted(formulas, key=lambda f: truth[f]["both"])
    rows, quarter_rows = [], []
    quarter = len(ranked) // 4

    def value(f: str, s: str, cand: str) -> float:
        return values[f][s][cand][0] if s != "both" else sum(values[f][t][cand][0] for t in SETTINGS)

    for cand in CANDIDATES:
        if cand not in values[formulas[0]][SETTINGS[0]]:
            continue
        cells, qcells = [], []
        for s in (*SETTINGS, "both"):
            top = sorted(formulas, key=lambda f: truth[f][s])
            for group, out in ((formulas, cells), (top[: len(top) // 2], cells)):
                xs, ys = [value(f, s, cand) for f in group], [truth[f][s] for f in group]
                out.append((spearmanr(xs, ys).statistic, kendalltau(xs, ys).statistic))
            best = top[:quarter]
            xs, ys = [value(f, s, cand) for f in best], [truth[f][s] for f in best]
            pick = min(best, key=lambda f: value(f, s, cand))
            qcells.append((spearmanr(xs, ys).statistic, best.index(pick) + 1))
        cells = cells[0::2] + cells[1::2]  # all settings over all metrics, then over the better half
        seconds = sorted(sum(values[f][s][cand][1] for s in SETTINGS) for f in formulas)[len(formulas) // 2]
        rows.append((cand, cells, seconds))
        quarter_rows.append((cand, qcells))
    lines = [
        "## Fitness: which cheap score ranks metrics like the truth?", "",
        f"SmolLM2-135M, {len(formulas)} metrics ({len(NAMED)} named, {len(EARLIER_WINNERS)} winners of earlier "
        f"searches, {len(formulas) - len(NAMED) - len(EARLIER_WINNERS)} random valid formulas from the search's "
        "generator), settings 50% and 2:4. **Truth**: the full sequential pipeline (32x512 calibration on the "
        "general mix's calib split, seed 0), perplexity on 8192 tokens of the general mix's *validation* split "
        "(float32), text used neither for calibration, nor for fitness, nor for reporting. Each candidate fitness is "
        "measured on the same pruned weights (all-at-once from the dense statistics unless it says sequential), "
        "forwards in bf16. Spearman / Kendall of each candidate's value (log scale; `both` = sum over the two "
        "settings, i.e. the geometric mean the search uses) against the truth, over all metrics and over the better "
        "half by truth (where a search spends its later generations). Seconds: median over the metrics of one "
        f"candidate at both settings (masks included; 1k and 4k general are prefixes of the 16k run, their seconds "
        f"pro rata). Machine: {machine()}.", "",
        "| fitness | s / candidate | 50% all | 2:4 all | both all | 50% top half | 2:4 top half | both top half |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for cand, cells, seconds in rows:
        shown = " | ".join(f"{rho:.2f} / {tau:.2f}" for rho, tau in cells)
        lines.append(f"| {cand} | {seconds:.1f} | {shown} |")
    lines += ["", f"Among the best quarter by truth ({quarter} metrics per setting: where the search picks its "
              "winner): Spearman against the truth, and the truth rank (1 = best) of the metric this fitness "
              "would pick.", "",
              "| fitness | 50%: Spearman, pick | 2:4: Spearman, pick | both: Spearman, pick |", "|---|---|---|---|"]
    for cand, qcells in quarter_rows:
        lines.append(f"| {cand} | " + " | ".join(f"{rho:.2f}, #{pick}" for rho, pick in qcells) + " |")
    lines += ["", "Truth (perplexity on the validation split) per metric:", "",
              "| metric | 50% | 2:4 |", "|---|---|---|"]
    for f in ranked:
        lines.append(f"| `{f}` | {math.exp(truth[f]['0.5']):.2f} | {math.exp(truth[f]['2:4']):.2f} |")
    lines += ["", "Command: `.venv/bin/python bench/fitness_study.py --run runs/fitness-study` "
              "(measures, resumable), then `--write` for this section."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="runs/fitness-study")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--write", action="store_true", help="write the fitness section from the run's study.jsonl")
    ap.add_argument("--cheap-sequential", type=int, default=0, metavar="N",
                    help="pass 2: the sequential pipeline on the first N calibration windows, bf16 (the seq rung)")
    args = ap.parse_args()
    run = Path(args.run)
    if args.cheap_sequential:
        measure_cheap_sequential(run, args.threads, args.cheap_sequential)
    elif args.write:
        replace_section("fitness", report(run))
        print(report(run))
    else:
        measure(run, args.threads)


if __name__ == "__main__":
    main()
