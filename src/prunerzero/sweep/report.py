"""sweep.json, sweep.md and sweep.png from the measured points of ``sweep.jsonl``.

Rewritten (atomically) after every point, so the reports of a killed sweep show what it had.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .. import io
from ..figures import pyplot, save_figure
from .config import JSON, MD, PNG, VARIANT, SweepConfig, point_key

WHY = ("This is the **one-shot variant**: the dense model's statistics (X, H for SparseGPT, G when a metric uses "
       "it) are collected once, in one calibration pass for the whole sweep, and every (method, sparsity) is pruned "
       "from a kept copy of the dense weights with them. `prunerzero prune` instead re-collects each layer's "
       "statistics after the earlier layers are pruned (the papers' sequential pipeline). Why one-shot: speed -- one "
       "calibration pass instead of one per point. The numbers can therefore differ from `prunerzero prune`'s, most "
       "at high sparsity, where pruning early layers changes later layers' inputs the most; magnitude pruning uses "
       "no statistics and is identical either way.")


def _table(cfg: SweepConfig, grid: list[float], by_method: dict[str, dict[float, Any]], dense: float | None) -> str:
    cols = sorted({s for row in by_method.values() for s in row} | set(grid))
    head = "| method | " + " | ".join(f"{100 * s:g}%" for s in cols) + " |"
    lines = [head, "|---|" + "---|" * len(cols)]
    if dense is not None:
        lines.append("| dense | " + " | ".join(f"{dense:.2f}" for _ in cols) + " |")
    for method, row in by_method.items():
        cells = []
        for s in cols:
            rec = row.get(s)
            cells.append("-" if rec is None else "invalid" if rec.get("ppl") is None else f"{rec['ppl']:.2f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_sweep(rows: dict[str, dict[float, float]], dense: float | None, path: Path, title: str) -> Path | None:
    """Perplexity vs sparsity, one line per method, dense as a horizontal line, log y."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = False
    for method, by_sparsity in rows.items():
        pts = sorted((s, p) for s, p in by_sparsity.items() if p is not None and math.isfinite(p))
        if pts:
            ax.plot([100 * s for s, _ in pts], [p for _, p in pts], marker="o", label=method)
            drawn = True
    if dense is not None:
        ax.axhline(dense, color="k", linestyle="--", linewidth=1, label=f"dense ({dense:.2f})")
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_yscale("log")
    ax.set_xlabel("sparsity (%)")
    ax.set_ylabel("perplexity")
    ax.set_title(title)
    ax.legend()
    return save_figure(fig, path)


def write_reports(out: Path, cfg: SweepConfig, grid: list[float], records: list[dict[str, Any]],
                  info: dict[str, Any], figure: bool = True) -> dict[str, Any]:
    """Write the reports from every point measured in ``out``; returns sweep.json's object.
    ``figure=False`` skips sweep.png (rendering costs more than a tiny model's point)."""
    dense_rec = next((r for r in records if r["method"] == "dense"), None)
    dense = dense_rec["ppl"] if dense_rec else None
    by_method: dict[str, dict[float, Any]] = {}
    for name in cfg.methods:  # requested order first, then any earlier method in the folder
        by_method.setdefault(name, {})
    for r in records:
        if r["method"] != "dense":
            by_method.setdefault(r["method"], {})[point_key(r["method"], r["sparsity"])[1]] = r
    by_method = {k: v for k, v in by_method.items() if v}
    if not info and (out / JSON).exists():  # a rerun with nothing to do keeps the statistics' record
        try:
            saved = json.loads((out / JSON).read_text(encoding="utf-8"))
            info = (saved.get("statistics") if isinstance(saved, dict) else None) or {}
        except (OSError, ValueError, RecursionError):  # damaged: the report is rewritten without it
            info = {}
    obj = {"settings": cfg.settings(), "methods": list(cfg.methods), "sparsities": grid, "variant": VARIANT,
           "dense": dense_rec, "statistics": info,
           "results": [r for row in by_method.values() for _, r in sorted(row.items())]}
    io.write_json(out / JSON, obj)

    title = f"{Path(cfg.model).name}, {cfg.pattern}, {Path(cfg.eval_data).name}"  # names: paths can be long
    curves = {m: {s: r.get("ppl") for s, r in row.items()} for m, row in by_method.items()}
    png = None if not figure else plot_sweep(curves, dense, out / PNG, title)
    tokens = dense_rec["tokens"] if dense_rec else "-"
    lines = [
        "# Perplexity vs sparsity", "",
        f"Model `{cfg.model}`, pattern {cfg.pattern}, perplexity on {cfg.eval_data} ({tokens} tokens, windows of "
        f"{cfg.effective_eval_seqlen}); calibration {cfg.calib_data}, {cfg.nsamples} x {cfg.seqlen} tokens, "
        f"seed {cfg.seed}.", "",
        WHY, "",
        _table(cfg, grid, by_method, dense), "",
    ]
    if png is not None or (out / PNG).exists():
        lines += [f"![perplexity vs sparsity]({PNG})", ""]
    io.write_text(out / MD, "\n".join(lines))
    return obj
