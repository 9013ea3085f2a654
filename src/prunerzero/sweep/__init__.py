"""``prunerzero sweep``: perplexity of several methods over many sparsities, one calibration pass in all.

  config.py  SweepConfig, the sparsity grid, the folder's file names
  run.py     statistics once, then every (method, sparsity) pruned from the dense snapshot and measured
  report.py  sweep.json, sweep.md and sweep.png from the measured points
"""
from .config import LOG, SETTINGS, SweepConfig, parse_sparsities, sparsity_grid
from .run import prepare_out_dir, run_sweep

__all__ = ["LOG", "SETTINGS", "SweepConfig", "parse_sparsities", "prepare_out_dir", "run_sweep", "sparsity_grid"]
