"""Gradient statistics G (GBLM-Pruner, Pruner-Zero): per-weight l1 / l2 norms of LM-loss gradients.

One job per module:
  compute.py  the math: backpropagate each calibration sample, fold |g| and g^2 into running sums,
              optionally for a chunk of decoder layers at a time (large models)
  cache.py    the disk cache keyed by model, data and seed, filled chunk by chunk and resumable
  files.py    reading files back: our safetensors (one linear at a time), GBLM-Pruner's torch.save dicts
"""
from .cache import cache_key, load_or_compute_gradients
from .compute import compute_gradient_stats, layer_chunks
from .files import LEGACY_SCALE, GradientFile, load_gradient_file, read_gradient_file

__all__ = ["LEGACY_SCALE", "GradientFile", "cache_key", "compute_gradient_stats", "layer_chunks",
           "load_gradient_file", "load_or_compute_gradients", "read_gradient_file"]
