"""Figures of the analyses (``figures``: the Agg backend, every PNG written atomically)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..figures import pyplot as _pyplot
from ..figures import save_figure
from .stats import Correlation


def _integer_x(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # generations are whole numbers


def plot_fitness(records: list[dict], cheap: str, gens: list[dict], path: Path, word: str) -> Path | None:
    """Every valid cheapest-fidelity score by generation (log y, jittered x) and the best so far."""
    import random

    pts = [(int(r["generation"]), float(r["fitness"])) for r in records
           if r["fidelity"] == cheap and r.get("fitness") is not None and math.isfinite(r["fitness"])]
    if not pts:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    jitter = random.Random(0)  # fixed: the same run gives the same figure
    positive = all(f > 0 for _, f in pts)
    ax.scatter([g + jitter.uniform(-0.2, 0.2) for g, _ in pts], [f for _, f in pts], s=10, alpha=0.5,
               label=f"candidates ({cheap})")
    best = [(row["generation"], row["best_so_far"]) for row in gens if row["best_so_far"] is not None]
    ax.step([g for g, _ in best], [b for _, b in best], where="post", color="C3", label="best so far")
    if positive:
        ax.set_yscale("log")
    _integer_x(ax)
    ax.set_xlabel("generation")
    ax.set_ylabel(f"{word} ({cheap}, lower is better)")
    ax.legend()
    ax.set_title("Fitness of every evaluated candidate")
    return save_figure(fig, path)


def plot_shares(gens: list[dict], path: Path) -> Path | None:
    """Invalid share (log: new evaluations; checkpoint: population) and duplicate share per generation."""
    series = {
        "invalid, new evaluations (log)": "log_invalid_share",
        "invalid, population (checkpoint)": "pop_invalid_share",
        "duplicates replaced (checkpoint)": "duplicate_share",
    }
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    drawn = False
    for label, key in series.items():
        pts = [(row["generation"], row[key]) for row in gens if row.get(key) is not None]
        if pts:
            ax.plot([g for g, _ in pts], [100 * v for _, v in pts], marker="o", label=label)
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    _integer_x(ax)
    ax.set_xlabel("generation")
    ax.set_ylabel("share of candidates (%)")
    ax.set_ylim(-2, 102)
    ax.legend()
    ax.set_title("Invalid and duplicate candidates")
    return save_figure(fig, path)


def plot_correlations(corrs: list, path: Path) -> Path | None:
    """Spearman rho of each property with log fitness; filled bars have p < 0.05."""
    rows = [c for c in corrs if c.rho is not None]
    if not rows:
        return None
    rows = rows[:25][::-1]  # strongest on top
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(rows) + 1.2))
    colors = ["C3" if c.rho > 0 else "C2" for c in rows]
    bars = ax.barh([c.feature for c in rows], [c.rho for c in rows], color=colors)
    for bar, c in zip(bars, rows):
        if c.rho_p is None or c.rho_p >= 0.05:
            bar.set_alpha(0.35)
    ax.axvline(0, color="k", linewidth=0.8)
    ax.set_xlim(-1, 1)
    ax.set_xlabel("Spearman rho with log fitness (< 0: goes with better metrics; faded: p >= 0.05)")
    return save_figure(fig, path)


def plot_fidelity(agreements: list[dict], path: Path) -> Path:
    """Cheap vs expensive score of every candidate scored at both (log-log)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(agreements), figsize=(4.2 * len(agreements), 4), squeeze=False)
    for ax, a in zip(axes[0], agreements):
        ax.scatter(a["x"], a["y"], s=12)
        if min(a["x"] + a["y"]) > 0:
            ax.set_xscale("log")
            ax.set_yscale("log")
        ax.set_xlabel(a["cheap"])
        ax.set_ylabel(a["expensive"])
        rho = "-" if a["rho"] is None else f"{a['rho']:+.2f}"
        ax.set_title(f"Spearman {rho} (n={a['n']})")
    return save_figure(fig, path)


def plot_cross_correlations(corrs: list, labels: list[str], path: Path) -> Path | None:
    """Pooled Spearman rho of each property (bars; faded: pooled p >= 0.05) with each run's own rho
    as a dot, so a pooled effect carried by one run stands out."""

    rows = [c for c in corrs if c.rho is not None][:25][::-1]  # strongest on top
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(rows) + 1.6))
    ys = range(len(rows))
    bars = ax.barh(list(ys), [c.rho for c in rows], color=["C3" if c.rho > 0 else "C2" for c in rows], alpha=0.8)
    for bar, c in zip(bars, rows):
        if c.rho_p is None or c.rho_p >= 0.05:
            bar.set_alpha(0.3)
    markers = "ovs^D<>pPX*h"
    for k, label in enumerate(labels):
        pts = [(y, c.per_run[label].rho) for y, c in zip(ys, rows)
               if isinstance(c.per_run.get(label), Correlation) and c.per_run[label].rho is not None]
        if pts:
            offset = (k - (len(labels) - 1) / 2) * 0.5 / max(1, len(labels))  # runs side by side in the bar
            ax.scatter([r for _, r in pts], [y + offset for y, _ in pts], s=18, marker=markers[k % len(markers)],
                       edgecolors="k", facecolors="none" if k % 2 else "k", zorder=3, label=label)
    ax.set_yticks(list(ys), [c.feature for c in rows])
    ax.axvline(0, color="k", linewidth=0.8)
    ax.set_xlim(-1, 1)
    ax.set_xlabel("Spearman rho with within-run fitness rank (< 0: goes with better metrics)\n"
                  "bars: pooled (faded: p >= 0.05); markers: each run")
    ax.legend(fontsize=7, loc="best")
    return save_figure(fig, path)
