"""Frozen settings of a run, saved with its results. Unknown keys are rejected, not ignored."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from .errors import known_keys_only


@dataclass(frozen=True)
class PruneConfig:
    model: str = "smollm2-135m"
    method: str = "wanda"
    metric: str | None = None  # a formula, or a path to a .json/.txt metric file (overrides method)
    sparsity: float = 0.5
    pattern: str = "unstructured"  # or N:M such as 2:4
    group: str = "row"  # comparison group for unstructured sparsity: row or layer
    calib_data: str = "lambada"
    nsamples: int = 32
    seqlen: int = 512  # calibration window; also the evaluation window unless eval_seqlen is set
    seed: int = 0
    eval_data: str | None = "wikitext2"
    eval_seqlen: int | None = None
    eval_tokens: int | None = None  # None = the whole test set, as the papers report
    batch_size: int = 8
    within_layer: str = "auto"  # sequential (one pass per layer) / parallel (reference order) / auto
    device: str = "auto"  # auto = cuda when available, else cpu
    calib_dtype: str = "float32"  # float32 or bfloat16 (autocast for the calibration forwards)
    percdamp: float = 0.01
    blocksize: int = 128
    gradients: str | None = None  # a precomputed gradient file instead of computing G
    reconstruct: str = "none"  # none, or obs: OBS update of the surviving weights after the mask
    reconstruct_mode: str = "fixed"  # fixed (whole mask first) or block (mask chosen per column block)
    allocation: str = "uniform"  # uniform, or owl: outlier-weighted layer-wise sparsity
    owl_m: float = 5.0  # OWL's outlier threshold M (scores above M x mean)
    owl_lambda: float = 0.08  # OWL's spread: layer sparsities within target +- lambda
    prune_head: bool = False  # also prune the output head (lm_head; tied embeddings with it)
    zero_shot: tuple[str, ...] = ()
    zero_shot_limit: int | None = None
    save: str | None = None
    save_model: bool = False
    overwrite: bool = False
    skip_dense: bool = False

    @property
    def effective_eval_seqlen(self) -> int:
        return self.eval_seqlen or self.seqlen

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["zero_shot"] = list(self.zero_shot)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PruneConfig":
        data = known_keys_only(data, [f.name for f in fields(cls)], "prune config")
        if "zero_shot" in data and data["zero_shot"] is not None:
            data["zero_shot"] = tuple(data["zero_shot"])
        return cls(**data)
