"""``prunerzero sweep``: perplexity of several methods over many sparsities, one calibration pass in all.

  config.py  SweepConfig, the sparsity grid, the folder's file names
  run.py     statistics once, then every (method, sparsity) pruned from the dense snapshot and measured
  report.py  sweep.json, sweep.md and sweep.png from the measured points
"""
from __future__ import annotations

from typing import Any

from .config import LOG, SETTINGS, SweepConfig, parse_sparsities, sparsity_grid

__all__ = ["LOG", "SETTINGS", "SweepConfig", "parse_sparsities", "prepare_out_dir", "run_sweep", "sparsity_grid"]


def __getattr__(name: str) -> Any:
    """``run_sweep`` and ``prepare_out_dir`` load with torch on first use: the command line reads
    ``SweepConfig`` without them."""
    if name in ("prepare_out_dir", "run_sweep"):
        from . import run

        return getattr(run, name)
    raise AttributeError(name)
