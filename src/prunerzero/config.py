"""Frozen settings of a run, saved with its results. Unknown keys are rejected, not ignored."""
from __future__ import annotations

import json
import types
import typing
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from .errors import UserError, known_keys_only, one_line, short


@dataclass(frozen=True)
class PruneConfig:
    model: str = "smollm2-135m"
    method: str = "wanda"
    metric: str | None = None  # a formula, or a path to a .json/.txt metric file (overrides method)
    sparsity: float = 0.5
    pattern: str = "unstructured"  # or N:M such as 2:4
    group: str = "row"  # comparison group for unstructured sparsity: row or layer
    calib_data: str = "general"
    nsamples: int = 32
    seqlen: int = 512  # calibration window; also the evaluation window unless eval_seqlen is set
    seed: int = 0
    bos: str = "auto"  # window rule: auto, window (BOS + seqlen-1 tokens), stream (one BOS at the start), none
    eval_data: str | None = "wikitext2"
    eval_seqlen: int | None = None
    eval_tokens: int | None = None  # None = the whole test set, as the papers report
    batch_size: int = 8
    within_layer: str = "auto"  # sequential (one pass per layer) / parallel (reference order) / auto
    device: str = "auto"  # auto = cuda when available, else cpu
    dtype: str = "float32"  # weights as loaded: float32, bfloat16 or float16 (pruning math stays float32)
    device_map: str = "none"  # none (one --device), or auto / balanced / sequential: accelerate spreads layers
    max_memory: str | None = None  # with a device map: "0=70GiB,1=70GiB,cpu=200GiB"
    offload_folder: str | None = None  # with a device map: where layers that fit nowhere else wait on disk
    calib_dtype: str = "float32"  # float32 or bfloat16 (autocast for the calibration forwards)
    percdamp: float = 0.01
    blocksize: int = 128
    gradients: str | None = None  # a precomputed gradient file instead of computing G
    grad_chunk_layers: int | None = None  # G for this many decoder layers at a time (None: all at once)
    reconstruct: str = "none"  # none, obs (OBS update after the mask) or admm (best weights for the mask)
    reconstruct_mode: str = "fixed"  # fixed (whole mask first) or block (mask chosen per column block)
    admm_iters: int = 10  # --reconstruct admm: ADMM iterations, then...
    cg_iters: int = 20  # ...conjugate-gradient steps on the fixed mask
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
    def from_dict(cls, data: dict[str, Any], what: str = "prune config") -> "PruneConfig":
        data = check_types(cls, known_keys_only(data, [f.name for f in fields(cls)], what), what)
        if "zero_shot" in data and data["zero_shot"] is not None:
            data["zero_shot"] = tuple(data["zero_shot"])
        return cls(**data)


def _allowed(hint: Any) -> tuple[type, ...]:
    """The JSON value types a field's annotation accepts (int is accepted for float; bool never for int)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return tuple(t for arg in typing.get_args(hint) for t in _allowed(arg))
    if hint is type(None):
        return (type(None),)
    if typing.get_origin(hint) is tuple or hint is tuple:
        return (list, tuple)
    return (int, float) if hint is float else (hint,)


def check_types(cls: type, data: dict[str, Any], what: str) -> dict[str, Any]:
    """`data` (e.g. read from JSON) with each value of the type its field declares, or one clear error."""
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        allowed = _allowed(hints[key])
        ok = isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)
        if ok and isinstance(value, (list, tuple)):
            ok = all(isinstance(v, str) for v in value)
        if ok and isinstance(value, str) and not value.strip():  # "" must not quietly mean "not given"
            raise UserError(f"{what}: {key} is empty")
        if not ok:
            names = sorted({"a list of strings" if t in (list, tuple) else "null" if t is type(None)
                            else {"int": "an integer", "float": "a number", "str": "a string", "bool": "true/false"}
                            .get(t.__name__, t.__name__) for t in allowed})
            raise UserError(f"{what}: {key} must be {' or '.join(names)}, not {short(json.dumps(value), 60)}")
    return data


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The settings of a `--config FILE.json`: PruneConfig fields only, each of its declared type."""
    path = Path(path)
    what = f"config {short(path)}"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"config file not found: {short(path)}") from None
    except IsADirectoryError:
        raise UserError(f"config file {short(path)} is a folder, not a JSON file") from None
    except UnicodeDecodeError as exc:  # random bytes
        raise UserError(f"{what} is not UTF-8 text (byte {exc.start}): not a JSON config file") from None
    except (OSError, ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError; deep nesting recurses
        raise UserError(f"{what} is not readable JSON: {one_line(exc, 200)}") from None
    data = check_types(PruneConfig, known_keys_only(data, [f.name for f in fields(PruneConfig)], what), what)
    return data
