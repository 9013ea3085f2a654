"""A sweep's settings (``SweepConfig``), its grid of sparsities, and the files it writes."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import UserError, clip
from ..settings import CalibSettings, EvalSettings, ModelSettings, PruningSettings, TargetSettings, option

SETTINGS, LOG, JSON, MD, PNG = "sweep_settings.json", "sweep.jsonl", "sweep.json", "sweep.md", "sweep.png"
DEFAULT_SPARSITIES = "0.1:0.8:0.1"
REDO = "pass --overwrite to measure the sweep again, or choose another --out"
VARIANT = ("one-shot: statistics of the dense model collected once and reused for every (method, sparsity); "
           "not re-collected after each layer is pruned")



@dataclass(frozen=True, kw_only=True)
class SweepConfig(ModelSettings, CalibSettings, EvalSettings, TargetSettings, PruningSettings):
    """The shared groups of ``settings`` plus the grid: which methods, which sparsities."""

    methods: tuple[str, ...] = option(("magnitude", "wanda", "sparsegpt", "pruner-zero"),
                                      "methods, a comma list (magnitude, wanda, sparsegpt, gblm, ria, pruner-zero)",
                                      items=str)
    sparsities: str | None = option(None, "start:stop:step (stop included) or a comma list; default 0.1:0.8:0.1, or "
                                    "N/M for N:M")

    KEY_ORDER: ClassVar[tuple[str, ...]] = (
        "model", "methods", "sparsities", "pattern", "group", "calib_data", "nsamples", "seqlen", "seed", "bos",
        "batch_size", "percdamp", "blocksize", "gradients", "eval_data", "eval_seqlen", "eval_tokens", "device",
        "dtype")

    def settings(self) -> dict[str, Any]:
        """What the measured numbers depend on (sweep_settings.json; a rerun must match it). Methods
        and sparsities are left out: they only choose grid points, so a rerun may add some and reuse
        every point already measured."""
        d = self.to_dict()
        for k in ("methods", "sparsities", "batch_size", "device"):  # they change speed, not results
            d.pop(k)
        d["eval_seqlen"] = self.effective_eval_seqlen
        return {"format": 1, "variant": "one-shot-dense-stats", **d}


# ----------------------------------------------------------------------------- parsing
MAX_POINTS = 200  # sparsities per sweep: each costs a perplexity evaluation per method


def parse_sparsities(text: str) -> list[float]:
    """'0.1:0.8:0.1' (start:stop:step, stop included) or '0.2,0.5,0.7' -> sorted distinct values.
    Rounded to 6 decimals so 0.1 + 2 * 0.1 is 0.3, and each must lie in [0, 1). At most
    MAX_POINTS values, counted before any list is built (0.1:0.9:1e-9 would be 8e8 of them)."""
    text = text.strip()
    shown = clip(text, 60)
    if not text:
        raise UserError("--sparsities is empty")
    try:
        if ":" in text:
            parts = [float(v) for v in text.split(":")]
            if len(parts) != 3:
                raise ValueError
            if not all(math.isfinite(v) for v in parts):
                raise UserError(f"--sparsities {shown}: start, stop and step must be finite numbers")
            start, stop, step = parts
            if step <= 0 or stop < start:
                raise UserError(f"--sparsities {shown}: need start <= stop and a positive step")
            for v in (start, stop):
                if not 0.0 <= v < 1.0:
                    raise UserError(f"--sparsities: {v:g} is outside [0, 1)")
            count = int(math.floor((stop - start) / step + 1e-9)) + 1
            if count > MAX_POINTS:
                raise UserError(f"--sparsities {shown} is {count} points; at most {MAX_POINTS} (use a larger step)")
            values = [round(start + i * step, 6) for i in range(count)]
        else:
            values = [round(float(v), 6) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--sparsities {shown}: use start:stop:step such as 0.1:0.8:0.1, or a comma list") from None
    if not values:
        raise UserError("--sparsities is empty")
    bad = [v for v in values if not 0.0 <= v < 1.0]  # also nan and inf
    if bad:
        raise UserError(f"--sparsities: {bad[0]:g} is outside [0, 1)")
    values = sorted(set(values))
    if len(values) > MAX_POINTS:
        raise UserError(f"--sparsities lists {len(values)} values; at most {MAX_POINTS}")
    return values


def sparsity_grid(cfg: SweepConfig) -> list[float]:
    """The sweep's sparsities; an N:M pattern has exactly one (N/M), so it is the default and the
    only value allowed."""
    from ..masks import parse_pattern, parse_target

    if cfg.pattern == "unstructured":
        values = parse_sparsities(DEFAULT_SPARSITIES if cfg.sparsities is None else cfg.sparsities)
        for v in values:
            parse_target(v, cfg.pattern, cfg.group)
        return values
    parse_target(0.0, "unstructured", cfg.group)  # checks the group
    n, m = parse_pattern(cfg.pattern)
    own = round(n / m, 6)
    values = parse_sparsities(cfg.sparsities) if cfg.sparsities is not None else [own]
    for v in values:
        parse_target(v, cfg.pattern, cfg.group)  # raises "pattern 2:4 means sparsity 0.5, ..." (and N < M)
    return [own]


def point_key(method: str, sparsity: float) -> tuple[str, float]:
    return method, round(float(sparsity), 6)
