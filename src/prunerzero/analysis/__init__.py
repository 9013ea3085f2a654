"""What search runs found, read back from their folders (nothing here runs a model).

  search_run.py  one run: fitness by generation, which metric properties go with fitness, how well the
                 cheap fidelity ranks like the expensive one (analysis.md + figures)
  cross_runs.py  several runs: properties against within-run fitness rank, pooled (cross_runs.md)
  stats.py       what both read and compute: candidates and their properties, rank correlations
  report.py      the markdown; plots.py the figures
"""
from .cross_runs import analyze_runs
from .search_run import analyze_run

__all__ = ["analyze_run", "analyze_runs"]
