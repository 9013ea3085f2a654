"""Does the search's own ranking pick the metric that holds up? The top of a finished search's hall
of fame, each pruned by the full pipeline over several calibration seeds, measured on the general
mix's held-out *validation* split (neither calibration, fitness nor reporting text) and on the two
reporting texts (WikiText-2 test, QASPER test): the `hof-truth` section of docs/BENCHMARKS.md.

The question it answers: with hundreds of candidates scored on one calibration draw and 4096
search tokens, is the hall of fame's #1 the best of its top entries on held-out text, and would
re-ranking the top entries on the validation split over 3 calibration draws (a selection stage
after the search) have picked a winner that does better on the reporting texts?

One process: the model loads once, every (entry, setting, seed) is pruned from the dense weights
(float32 calibration forwards, 32x512 windows of the general mix, as `prunerzero prune` and the
leaderboard do) and measured on the three texts (float32, seqlen 512, --tokens each). Rows are
appended to runs/hof-truth/rows.jsonl as measured; a killed run started again measures only what
is missing.

    .venv/bin/python bench/hof_truth.py --run runs/seeds/joint-seed0 [--top 6] [--write]
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_bench import ROOT, WIKI, machine, replace_section, shown_path  # noqa: E402

from prunerzero import io  # noqa: E402

OUT = ROOT / "runs" / "hof-truth"
TEXTS = {"validation": ("general", "validation"), "wikitext2": (str(WIKI.resolve()), "file"), "qasper": ("qasper", "test")}
REFERENCES = {"wanda": "abs(W) * sqrt(X)", "ria": "(coln(W) + rown(W)) * sqrt(sqrt(X))"}


def entries(run: Path, top: int) -> list[tuple[str, str]]:
    """(label, formula): the hall of fame's top distinct entries, then the hand-made references.
    Rows that score alike at every rung are merged as the search itself merges them (runs older than
    that merge list both), so the ranks are those a search would write today."""
    from prunerzero.search.scores import merge_equal_scores
    from prunerzero.symbolic import load_metric, named_match

    hof = merge_equal_scores(json.loads((run / "hall_of_fame.json").read_text()))[:top]
    out = []
    for rank, row in enumerate(hof, start=1):
        seeded = named_match(load_metric(row["expression"]))  # a named metric seeded into generation 0
        out.append((f"hof #{rank}" + (f" ({seeded})" if seeded else ""), row["expression"]))
    formulas = {f for _, f in out}
    return out + [(name, f) for name, f in REFERENCES.items() if f not in formulas]


def done_rows(repair: bool = False) -> list[dict]:
    """Rows measured so far (io's rule: a torn last line from a kill is left out, and with ``repair``
    cut off, so the next append starts on a fresh line)."""
    return io.read_jsonl(OUT / "rows.jsonl", repair=repair)


def measure(args: argparse.Namespace) -> None:
    from prunerzero.config import PruneConfig
    from prunerzero.data import load_text
    from prunerzero.eval.perplexity import perplexity
    from prunerzero.masks import parse_setting
    from prunerzero.methods.symbolic import symbolic_method
    from prunerzero.pipeline import prune_model
    from prunerzero.snapshot import DenseSnapshot
    from prunerzero.symbolic import load_metric
    from prunerzero.windows import tokenize

    OUT.mkdir(parents=True, exist_ok=True)
    have = {(r["formula"], r["setting"], r["seed"]) for r in done_rows(repair=True)}
    todo = [(label, formula, setting, seed) for seed in args.seeds for label, formula in entries(args.run, args.top)
            for setting in args.settings if (formula, setting, seed) not in have]
    if not todo:
        return
    base = PruneConfig(model="smollm2-135m", calib_data="general", nsamples=32, seqlen=512, seed=0)
    lm, windowing = base.open_model()
    calib_tokens = base.calibration_tokens(lm, windowing)
    texts = {name: tokenize(lm.tokenizer, load_text(src, split), windowing) for name, (src, split) in TEXTS.items()}
    snapshot = DenseSnapshot(lm.model)
    calib: dict[int, tuple] = {}
    for label, formula, setting, seed in todo:
        snapshot.restore()
        if seed not in calib:
            cfg = PruneConfig(model="smollm2-135m", calib_data="general", nsamples=32, seqlen=512, seed=seed)
            ids = cfg.calibration_windows(calib_tokens, windowing)
            grads, _ = cfg.dense_gradients(lm, ids, progress=False)  # the disk cache when there
            calib[seed] = (ids, grads)
        ids, grads = calib[seed]
        method = symbolic_method(load_metric(formula))
        start = time.perf_counter()
        prune_model(lm.model, method, parse_setting(setting), ids, grads=grads if "G" in method.needs else None,
                    progress=False)
        seconds = time.perf_counter() - start
        ppl = {name: perplexity(lm.model, tokens, 512, args.tokens, progress=False, windowing=windowing)["ppl"]
               for name, tokens in texts.items()}
        row = {"label": label, "formula": formula, "setting": setting, "seed": seed, "ppl": ppl,
               "prune_seconds": seconds, "tokens": args.tokens, "run": str(args.run)}
        io.append_jsonl(OUT / "rows.jsonl", row)
        print(label, setting, seed, {k: round(v, 2) for k, v in ppl.items()}, f"{seconds:.0f} s", flush=True)
    snapshot.restore()


def spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def write(args: argparse.Namespace) -> str:
    rows = done_rows()
    order = entries(args.run, args.top)
    hof = {r["expression"]: r for r in json.loads((args.run / "hall_of_fame.json").read_text())}
    title = "" if args.section == "hof-truth" else f" ({args.run.name})"
    lines = [f"## Does the hall of fame's #1 hold up? Its top entries on held-out and reporting text{title}", "",
             f"The top {args.top} distinct entries of `{shown_path(args.run)}`'s hall of fame "
             "(ranked by the search's top rung, one calibration draw) and two hand-made references, each pruned by the "
             f"full pipeline (32x512 general-mix calibration, seeds {', '.join(map(str, args.seeds))}) and measured on "
             f"{args.tokens} tokens (seqlen 512, float32) of the general mix's held-out validation split, WikiText-2 test "
             f"and QASPER test. Mean ± sd over the calibration seeds. Machine: {machine()}.", ""]
    table = {}
    for label, formula in order:
        for setting in args.settings:
            vals = [r for r in rows if r["formula"] == formula and r["setting"] == setting]
            if vals:
                table[(label, setting)] = {t: [r["ppl"][t] for r in vals] for t in TEXTS}
    for setting in args.settings:
        lines += [f"### {setting if ':' in setting else f'{float(setting):.0%}'}", "",
                  "| entry | formula | search fitness (top rung) | validation | WikiText-2 | QASPER | n |",
                  "|---|---|---|---|---|---|---|"]
        for label, formula in order:
            cell = table.get((label, setting))
            if not cell:
                continue
            fit = hof.get(formula, {}).get("fitness", {})
            top = list(fit.values())[-1] if fit else None

            def ms(v: list[float]) -> str:
                return f"{statistics.fmean(v):.2f} ± {statistics.stdev(v) if len(v) > 1 else 0:.2f}"

            lines.append(f"| {label} | `{formula}` | {'-' if top is None else f'{top:.2f}'} | {ms(cell['validation'])} | "
                         f"{ms(cell['wikitext2'])} | {ms(cell['qasper'])} | {len(cell['validation'])} |")
        lines.append("")
    # Would a validation stage have chosen better? Rank the searched entries by mean validation ppl
    # (geometric mean over settings) and compare with the reporting texts.
    searched = [(lab, f) for lab, f in order if lab.startswith("hof")]

    def gmean(label: str, text: str) -> float | None:
        cells = [table.get((label, s)) for s in args.settings]
        if any(c is None for c in cells):
            return None
        return math.exp(statistics.fmean(math.log(statistics.fmean(c[text])) for c in cells))

    scored = [(lab, f, {t: gmean(lab, t) for t in TEXTS}) for lab, f in searched]
    scored = [s for s in scored if all(v is not None for v in s[2].values())]
    if len(scored) >= 3:
        val = [s[2]["validation"] for s in scored]
        lines.append("Rank agreement over the searched entries (geometric mean over settings of the mean over "
                     "seeds): validation vs WikiText-2 Spearman "
                     f"{spearman(val, [s[2]['wikitext2'] for s in scored]):.2f}, validation vs QASPER "
                     f"{spearman(val, [s[2]['qasper'] for s in scored]):.2f}, hall-of-fame rank vs validation "
                     f"{spearman(list(range(len(scored))), val):.2f}.")
        best_val = min(scored, key=lambda s: s[2]["validation"])
        first = scored[0]
        lines.append(f"\nThe hall of fame's #1 `{first[1]}`: validation {first[2]['validation']:.2f}, WikiText-2 "
                     f"{first[2]['wikitext2']:.2f}, QASPER {first[2]['qasper']:.2f}. A validation stage would pick "
                     f"{best_val[0]} `{best_val[1]}`: validation {best_val[2]['validation']:.2f}, WikiText-2 "
                     f"{best_val[2]['wikitext2']:.2f}, QASPER {best_val[2]['qasper']:.2f}.")
    options = f"--run {shown_path(args.run)} --top {args.top}"
    options += "" if args.settings == ["0.5", "2:4"] else f" --settings {','.join(args.settings)}"
    options += "" if args.section == "hof-truth" else f" --section {args.section}"
    lines += ["", f"Command: `.venv/bin/python bench/hof_truth.py {options}` then the same with `--write`."]
    text = "\n".join(lines)
    replace_section(args.section, text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "seeds" / "joint-seed0")
    ap.add_argument("--top", type=int, default=6)
    ap.add_argument("--seeds", type=lambda t: [int(x) for x in t.split(",")], default=[0, 1, 2])
    ap.add_argument("--settings", type=lambda t: t.split(","), default=["0.5", "2:4"])
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--section", default="hof-truth",
                    help="the docs/BENCHMARKS.md section to write (another run's: e.g. hof-truth-only24)")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    if args.write:
        print(write(args))
    else:
        measure(args)


if __name__ == "__main__":
    main()
