"""Frozen settings of a ``prunerzero prune`` run, saved with its results (results.json's "config").

``PruneConfig`` composes the shared groups of ``settings`` (model and placement, calibration,
evaluation, target shape, pruning numbers, levers) with what only pruning has: the method or
formula, the sparsity, the output head, zero-shot tasks and where results go. Unknown keys are
rejected, not ignored; ``validate`` in ``api`` checks everything before anything loads.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from .settings import (CalibSettings, EvalSettings, LeverSettings, OffloadSettings, PruningSettings, TargetSettings,
                       check_types, option, read_settings_file)

__all__ = ["PruneConfig", "check_types", "read_config_file"]


@dataclass(frozen=True, kw_only=True)
class PruneConfig(OffloadSettings, CalibSettings, EvalSettings, TargetSettings, PruningSettings, LeverSettings):
    method: str = option("wanda", "magnitude, wanda, sparsegpt, gblm, ria, pruner-zero")
    metric: str | None = option(None, 'a formula such as "abs(W*W) * mms(G)", a named metric, or a metric file '
                                '(.json / .txt); overrides --method')
    sparsity: float = option(0.5, "share of the weights to prune, in [0, 1)")
    within_layer: str = option("auto", "sequential (each linear pruned as its input arrives, one forward per layer), "
                               "parallel (the reference code's order) or auto")
    calib_dtype: str = option("float32", "float32 or bfloat16 (autocast for the calibration forwards)")
    grad_chunk_layers: int | None = option(None, "compute G for N decoder layers at a time on their GPUs (default: "
                                           "all at once, sums on the CPU)")
    admm_iters: int = option(10, "--reconstruct admm: ADMM iterations, then...")
    cg_iters: int = option(20, "...conjugate-gradient steps on the fixed mask")
    prune_head: bool = option(False, "also prune the output head (lm_head); with tied embeddings that prunes the "
                              "input embeddings too")
    zero_shot: tuple[str, ...] = option((), "zero-shot tasks, a comma list: boolq,rte,hellaswag,winogrande,...",
                                        items=str, empty_ok=True)
    zero_shot_limit: int | None = option(None, "examples per zero-shot task")
    save: str | None = option(None, "folder for results.json (and the model with --save-model)")
    save_model: bool = option(False, "also save a Hugging Face checkpoint")
    overwrite: bool = option(False, "replace the results of an earlier run in --save")
    skip_dense: bool = option(False, "do not measure the dense model")

    # results.json's "config" as it has always been written
    KEY_ORDER: ClassVar[tuple[str, ...]] = (
        "model", "method", "metric", "sparsity", "pattern", "group", "calib_data", "nsamples", "seqlen", "seed", "bos",
        "eval_data", "eval_seqlen", "eval_tokens", "batch_size", "within_layer", "device", "dtype", "device_map",
        "max_memory", "offload_folder", "calib_dtype", "percdamp", "blocksize", "gradients", "grad_chunk_layers",
        "reconstruct", "reconstruct_mode", "admm_iters", "cg_iters", "mask_only", "allocation", "owl_m", "owl_lambda",
        "prune_head", "zero_shot", "zero_shot_limit", "save", "save_model", "overwrite", "skip_dense")

    @classmethod
    def from_dict(cls, data: Any, what: str = "prune config") -> "PruneConfig":
        return super().from_dict(data, what)

    def reconstruct_options(self) -> dict[str, Any]:
        return {"admm_iters": self.admm_iters, "cg_iters": self.cg_iters}

    def reads_calibration(self, needs: frozenset[str]) -> bool:
        """Whether the run reads calibration text: for a method's X, H or G, or OWL's outlier ratios."""
        return bool(needs & {"X", "H", "G"}) or self.allocation == "owl"


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The settings of a `--config FILE.json`: PruneConfig fields only, each of its declared type."""
    return read_settings_file(path, PruneConfig)
