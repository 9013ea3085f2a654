"""What W, X and G mean: a :class:`TerminalSpec` saved with every metric.

The same formula ranks weights differently if W is signed or X is an RMS instead of a
mean square, so the meaning of each terminal is part of the metric, not of the run.
Defaults reproduce Pruner-Zero: W = |w|, X = mean over tokens of x^2 per input channel,
G = 100 * l2 norm (over calibration samples) of each weight's gradient.

``scale="layer"`` makes the terminals scale-free: each is divided by its mean over the layer, so
W, X and G are all around 1 in every layer of every model. A product ranks a layer's weights the
same either way; a sum such as ``W * sqrt(X) + W * G`` does not: with raw terminals the balance of
its terms depends on the model's and the loss's scales (G of a larger model is smaller), with
scale-free ones it does not, so a searched formula means the same on the next model.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable

import torch
from torch import Tensor

from ..errors import UserError, known_keys_only

TERMINALS: tuple[str, ...] = ("W", "X", "G")

_CHOICES = {"w": ("abs", "signed"), "x": ("mean_sq", "rms"), "g": ("l2", "l1"), "scale": ("raw", "layer")}


@dataclass(frozen=True)
class TerminalSpec:
    """How the terminal tensors are built from a layer's weight and statistics."""

    w: str = "abs"  # "abs": W = |w|;  "signed": W = w
    x: str = "mean_sq"  # "mean_sq": X = mean x^2 per channel;  "rms": X = sqrt of that
    g: str = "l2"  # which per-weight gradient norm over calibration samples
    g_scale: float = 100.0  # G = g_scale * norm (GBLM-Pruner / Pruner-Zero use 100)
    scale: str = "raw"  # "layer": each terminal divided by its mean over the layer (scale-free)

    def __post_init__(self) -> None:
        for key, allowed in _CHOICES.items():
            if getattr(self, key) not in allowed:
                raise UserError(f"terminal spec {key}={getattr(self, key)!r}: choose one of {', '.join(allowed)}")
        if isinstance(self.g_scale, bool) or not isinstance(self.g_scale, (int, float)):
            raise UserError(f"terminal spec g_scale={self.g_scale!r}: must be a number")
        try:
            finite = math.isfinite(self.g_scale)
        except OverflowError:  # an integer too large for a float (from a hostile JSON file)
            finite = False
        if not (finite and self.g_scale > 0):
            raise UserError(f"terminal spec g_scale={self.g_scale!r}: must be a finite number > 0")
        object.__setattr__(self, "g_scale", float(self.g_scale))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.scale == "raw":  # metrics saved before scale existed read back equal
            del d["scale"]
        return d

    @classmethod
    def from_dict(cls, obj: Any) -> "TerminalSpec":
        return cls(**known_keys_only(obj, ("w", "x", "g", "g_scale", "scale"), "terminal spec"))

    def nonneg_terminals(self) -> frozenset[str]:
        """Terminals that are >= 0 under this spec (X and G always are; W only if |w|)."""
        return frozenset({"X", "G"} | ({"W"} if self.w == "abs" else set()))


def prepare_terminals(
    spec: TerminalSpec,
    weight: Tensor,
    x_mean_sq: Tensor | None = None,
    grad_l1: Tensor | None = None,
    grad_l2: Tensor | None = None,
    needed: Iterable[str] = (),
) -> dict[str, Tensor]:
    """Build the float32 tensors a formula sees, on ``weight``'s device.

    ``weight`` (out, in); ``x_mean_sq`` (in,) mean of x^2 per input channel; ``grad_l1`` /
    ``grad_l2`` (out, in) unscaled per-weight gradient norms over calibration samples.
    W is always returned (it fixes the score shape); X and G when their inputs are given.
    ``needed`` (e.g. ``terminals_used(expr)``) names terminals whose absence is an error.
    """
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (out, in), got shape {tuple(weight.shape)}")
    dev, f32 = weight.device, torch.float32
    w = weight.detach().to(dev, f32)
    out: dict[str, Tensor] = {"W": w.abs() if spec.w == "abs" else w}  # (out, in)
    if x_mean_sq is not None:
        x = x_mean_sq.detach().to(dev, f32).reshape(-1)
        if x.numel() != w.shape[1]:
            raise ValueError(f"x_mean_sq has {x.numel()} channels, weight has {w.shape[1]} inputs")
        x = x.sqrt() if spec.x == "rms" else x
        out["X"] = x.reshape(1, -1)  # (1, in): broadcasts across rows
    grad = grad_l2 if spec.g == "l2" else grad_l1
    if grad is not None:
        g = grad.detach().to(dev, f32)
        if g.shape != w.shape:
            raise ValueError(f"grad_{spec.g} has shape {tuple(g.shape)}, weight has {tuple(w.shape)}")
        out["G"] = g * spec.g_scale  # (out, in)
    if spec.scale == "layer":  # scale-free: every terminal about 1 on average in every layer
        out = {name: t / t.abs().mean().clamp_min(1e-30) for name, t in out.items()}
    missing = [t for t in TERMINALS if t in set(needed) and t not in out]
    if missing:
        what = {"X": "activation statistics (x_mean_sq)", "G": f"gradient statistics (grad_{spec.g})"}
        raise UserError("the metric uses " + " and ".join(f"{t} but no {what[t]} were given" for t in missing))
    return out
