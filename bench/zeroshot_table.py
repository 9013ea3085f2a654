"""The zero-shot benchmark's tables: accuracies with binomial standard errors, so the section says
which differences are real.  Pure functions (no model, no I/O), kept apart from
zeroshot_bench.py so tests/test_zeroshot_bench.py can check them without running anything.

Each result is the `zero_shot` record of `prunerzero prune/eval`: {task: {"acc", "acc_norm"?,
"n"}, ...}.  A column is one model: dense, a named method or a formula at one setting.
"""
from __future__ import annotations

import math
from typing import Any

Z = 2.0  # differences beyond Z standard errors are called real (about 95% two-sided)


def binomial_se(p: float, n: int) -> float:
    """sqrt(p (1 - p) / n): the standard error of an accuracy measured on n examples."""
    return math.sqrt(p * (1.0 - p) / n) if n > 0 else math.nan


def acc_with_se(result: dict[str, Any], task: str, metric: str = "acc") -> tuple[float, float] | None:
    """(accuracy, its standard error) of one task; None when the task has no such metric."""
    row = result.get(task) or {}
    p, n = row.get(metric), row.get("n")
    if p is None or not n:
        return None
    return float(p), binomial_se(float(p), int(n))


def mean_with_se(result: dict[str, Any], tasks: list[str]) -> tuple[float, float] | None:
    """Mean acc over the tasks and its standard error sqrt(sum se_t^2) / T (tasks are separate
    example sets, so their errors are independent); None when a task has no acc."""
    pairs = [acc_with_se(result, t) for t in tasks]
    if not pairs or any(p is None for p in pairs):
        return None
    return (sum(p for p, _ in pairs) / len(pairs),
            math.sqrt(sum(se * se for _, se in pairs)) / len(pairs))


def pct(value: tuple[float, float] | None, bold: bool = False) -> str:
    """'45.2 ± 2.2' in percent; '-' when missing."""
    if value is None:
        return "-"
    text = f"{100 * value[0]:.1f} ± {100 * value[1]:.1f}"
    return f"**{text}**" if bold else text


def difference(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    """a - b with the unpaired standard error sqrt(se_a^2 + se_b^2).  Both columns are scored on
    the same examples, whose errors correlate positively, so the true error of the difference is
    smaller: calling a difference real only beyond Z of these errors is conservative."""
    return a[0] - b[0], math.sqrt(a[1] ** 2 + b[1] ** 2)


def real_differences(means: dict[str, tuple[float, float] | None]) -> list[str]:
    """'wanda > magnitude (+2.9 ± 1.3)' for every pair of columns whose mean accuracies differ by
    more than Z standard errors of the difference, largest difference first."""
    names = [n for n, m in means.items() if m is not None]
    out = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            d, se = difference(means[a], means[b])  # type: ignore[arg-type]
            if abs(d) > Z * se:
                hi, lo = (a, b) if d > 0 else (b, a)
                out.append((abs(d), f"{hi} > {lo} ({100 * abs(d):+.1f} ± {100 * se:.1f})"))
    return [text for _, text in sorted(out, key=lambda t: -t[0])]


def setting_table(columns: dict[str, dict[str, Any]], tasks: list[str], seconds: dict[str, float],
                  dense: str | None = "dense") -> list[str]:
    """Markdown rows: one per task (acc ± se, then acc_norm ± se for tasks that have it), the
    mean acc ± se, the difference of each mean from the dense column's, and the wall seconds."""
    names = list(columns)
    lines = ["| task | n | " + " | ".join(names) + " |", "|---|---:|" + "---:|" * len(names)]
    for task in tasks:
        n = next((columns[c][task].get("n") for c in names if columns[c].get(task)), None)
        lines.append(f"| {task} | {n or '-'} | " + " | ".join(pct(acc_with_se(columns[c], task)) for c in names) + " |")
        if any((columns[c].get(task) or {}).get("acc_norm") is not None for c in names):
            lines.append(f"| {task} (acc_norm) | {n or '-'} | "
                         + " | ".join(pct(acc_with_se(columns[c], task, "acc_norm")) for c in names) + " |")
    means = {c: mean_with_se(columns[c], tasks) for c in names}
    lines.append("| **mean acc** | | " + " | ".join(pct(means[c], bold=True) for c in names) + " |")
    base = means.get(dense) if dense else None
    if base is not None:
        cells = ["-" if c == dense or means[c] is None else _signed(difference(means[c], base)) for c in names]
        lines.append(f"| mean acc - {dense} (* beyond {Z:g} se) | | " + " | ".join(cells) + " |")
    lines.append("| wall s | | " + " | ".join(f"{seconds[c]:.0f}" if c in seconds else "-" for c in names) + " |")
    return lines


def _signed(value: tuple[float, float]) -> str:
    """'-3.8 ± 1.3 *': the star when the difference is beyond Z standard errors."""
    star = " *" if abs(value[0]) > Z * value[1] else ""
    return f"{100 * value[0]:+.1f} ± {100 * value[1]:.1f}{star}"
