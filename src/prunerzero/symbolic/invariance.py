"""Does a metric's mask depend on how the model happens to be parameterised?

Two models can compute the same function with differently scaled weights, and model families do:
a norm's per-channel gain can sit in the norm or be folded into the next linear's columns, a
linear's output rows can be scaled up if the next linear's matching columns are scaled down, and
weights, activations and gradients differ in overall size from one family (and loss) to the next.
For one linear with weight w (out, in) these changes act on its statistics as

    units:     w -> a w,                  X -> b X,          G -> c G          (a, b, c > 0 per layer)
    channels:  w[i, j] -> w[i, j] s[j],   X[j] -> X[j] / s[j]^2,  G[i, j] -> G[i, j] / s[j]
    rows:      w[i, j] -> r[i] w[i, j],   X unchanged,       G[i, j] -> G[i, j] / r[i]

(X is the mean of x^2 per input channel, G the norm over samples of each weight's gradient; the
gradient of y = w x scales inversely to w.) ``channels`` and ``rows`` leave the model's function
unchanged; ``units`` is what differs between models and losses. A metric whose mask changes under
one of them responds to the parameterisation, not to the function, so it may rank the next model's
weights by something other than what it ranked on the model it was found on. Wanda
(|w| sqrt(X)) is unchanged by all three; magnitude changes with ``channels``, GBLM's sum
(W sqrt(X) + W G) with ``units`` and ``rows``.

The check is numerical, on a random layer (so it covers every primitive, eps guards included):
the masks of a 50% row-wise and a 2:4 target before and after random transforms, with scales
spread over two orders of magnitude. Float32 rounding moves a score by ~1e-7 relative, far below
the gaps between a random row's scores, so an invariant metric's masks agree to the last entry;
``TOLERANCE`` allows a handful of flips.
"""
from __future__ import annotations

import hashlib
import math
from typing import TYPE_CHECKING

import torch

from .primitives import InvalidMetricError

if TYPE_CHECKING:
    from .named import Metric

GAUGES: tuple[str, ...] = ("units", "channels", "rows")
# --invariance levels of the search: which gauges a candidate must be invariant to.
LEVELS: dict[str, tuple[str, ...]] = {"none": (), "units": ("units",), "gauge": GAUGES}
TOLERANCE = 0.002  # share of mask entries allowed to differ (rounding at near-equal scores)
_OUT, _IN = 32, 128  # the random layer: 2:4 groups and 64-wide row halves
_DRAWS = 2  # independent transforms per gauge: one lucky draw must not pass a metric


def _log_uniform(gen: torch.Generator, shape: tuple[int, ...], spread: float) -> torch.Tensor:
    """Positive factors with |log| uniform on [log(spread) / 4, log(spread)] and a random sign, so
    that no draw is close to 1 (a factor near 1 would hide a dependence)."""
    size = (torch.rand(shape, generator=gen, dtype=torch.float64) * 0.75 + 0.25) * math.log(spread)
    sign = torch.randint(0, 2, shape, generator=gen, dtype=torch.int64) * 2 - 1
    return torch.exp(size * sign).float()


def _transform(gauge: str, gen: torch.Generator, w: torch.Tensor, x: torch.Tensor,
               g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """w, g (out, in), x (in,) -> the same statistics after one random change of ``gauge``."""
    if gauge == "units":  # each terminal's overall size changes independently
        a, b, c = _log_uniform(gen, (3,), 100.0)
        return w * a, x * b, g * c
    if gauge == "channels":  # a per-input-channel gain moved from the previous norm into w's columns
        s = _log_uniform(gen, (1, w.shape[1]), 10.0)  # (1, in)
        return w * s, x / s.reshape(-1) ** 2, g / s
    if gauge == "rows":  # w's output rows scaled, the next linear's matching columns scaled back
        r = _log_uniform(gen, (w.shape[0], 1), 10.0)  # (out, 1)
        return w * r, x, g / r
    raise ValueError(f"unknown gauge {gauge!r} (choose from {', '.join(GAUGES)})")


def _settings(layer_group: bool) -> tuple[str, ...]:
    """The masks that stand for a formula: 50% per row and 2:4, and with ``layer_group`` 50% across the
    layer (a search with a '0.5:layer' setting, where a factor constant per row changes the mask)."""
    return ("0.5", "2:4", "0.5:layer") if layer_group else ("0.5", "2:4")


def _masks(metric: "Metric", w: torch.Tensor, x: torch.Tensor, g: torch.Tensor,
           settings: tuple[str, ...]) -> torch.Tensor:
    """(len(settings), out, in): ``metric``'s masks on this layer for ``settings`` (``_settings``)."""
    from ..masks import make_mask, parse_setting

    score = metric.scores(w, x, g, g)  # (out, in)
    return torch.stack([make_mask(score, parse_setting(s)) for s in settings])


def _random_layer(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """w, g (out, in), x (in,): statistics of a random layer at the scales of SmolLM2's."""
    w = torch.randn(_OUT, _IN, generator=gen) * 0.05  # (out, in), LLM-sized and signed: the spec decides |w| or w
    x = torch.rand(_IN, generator=gen) * 2 + 0.05  # (in,) mean squares, none near zero
    g = torch.rand(_OUT, _IN, generator=gen) * 1e-3 + 1e-5  # (out, in) gradient norms, SmolLM2-sized
    return w, x, g


def broken_gauges(metric: "Metric", gauges: tuple[str, ...] = GAUGES, seed: int = 0,
                  layer_group: bool = False) -> tuple[str, ...]:
    """The gauges (of ``gauges``) under which ``metric``'s masks change, in ``GAUGES`` order.

    A metric that cannot be scored on the random layer (invalid there, e.g. exp(exp(W)) overflows)
    counts as breaking every gauge asked about: nothing shows it invariant, and on a real layer of
    another size it may well be valid. ``layer_group``: the masks include a 50% one across the layer."""
    gen = torch.Generator().manual_seed(seed)
    w, x, g = _random_layer(gen)
    settings = _settings(layer_group)
    try:
        base = _masks(metric, w, x, g, settings)
    except InvalidMetricError:
        return tuple(gauge for gauge in GAUGES if gauge in gauges)
    broken = []
    for gauge in GAUGES:
        if gauge not in gauges:
            continue
        for _ in range(_DRAWS):
            try:
                changed = (_masks(metric, *_transform(gauge, gen, w, x, g), settings) != base).float().mean().item()
            except InvalidMetricError:  # valid before, invalid after: the scale decided it
                changed = 1.0
            if changed > TOLERANCE:
                broken.append(gauge)
                break
    return tuple(broken)


def is_invariant(metric: "Metric", level: str, layer_group: bool = False) -> bool:
    """Whether ``metric`` keeps its masks under every gauge that ``level`` (a key of LEVELS) names."""
    if level not in LEVELS:
        raise ValueError(f"unknown invariance level {level!r} (choose from {', '.join(LEVELS)})")
    return not LEVELS[level] or not broken_gauges(metric, LEVELS[level], layer_group=layer_group)


def _wide_layer(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """w, g (out, in), x (in,) spread over orders of magnitude, as real layers are (outlier weights and
    channels, gradients from 1e-6 to 1e-2): where log's eps, exp's clamp or float range matter, a formula
    can stop ranking like its small-value form (on gauge-seed0's candidates this layer split 17 mask
    classes into 20). tanh's saturation is not caught: it ties only the largest scores of a row, which
    a 50% or 2:4 mask keeps anyway (tanh(sqr(W) * X) still matches W * sqrt(X))."""
    w = torch.randn(_OUT, _IN, generator=gen) * 0.05 * torch.exp(torch.randn(_OUT, _IN, generator=gen) * 1.5)
    x = 10.0 ** (torch.rand(_IN, generator=gen) * 5 - 3)  # (in,) 1e-3 .. 1e2
    g = 10.0 ** (torch.rand(_OUT, _IN, generator=gen) * 4 - 6)  # (out, in) 1e-6 .. 1e-2
    return w, x, g


FINGERPRINT_ENTRIES = 2 * 2 * _OUT * _IN  # two layers, two masks each


def mask_signature(metric: "Metric", layer_group: bool = False) -> torch.Tensor | None:
    """(FINGERPRINT_ENTRIES,) bool: ``metric``'s 50% row-wise and 2:4 masks on two fixed random layers, one
    at SmolLM2's scales (as ``broken_gauges``), one spread over orders of magnitude, so that a formula
    that ranks alike only where its values are small (log's eps, overflow) differs there; None if the
    formula is invalid on them. ``layer_group``: a 50% mask compared across the whole layer too
    (FINGERPRINT_ENTRIES * 3 // 2 entries), for searches with a '0.5:layer' setting, where a factor
    constant per row changes the mask.

    Formulas with (nearly) the same signature prune alike: monotone transforms of one another within
    every row (W * sqrt(X), sqr(W) * X, rown(sqr(W) * X)), or differing only by a factor constant per
    row (div divides by a Frobenius norm, a scalar, so div(W, anything) ranks like W). Their fitness
    differs only by float rounding (see ``search.known_masks`` for how the search uses it).
    """
    gen = torch.Generator().manual_seed(12345)  # fixed: the signature is a pure function of the formula
    settings = _settings(layer_group)
    try:
        return torch.cat([_masks(metric, *layer, settings).reshape(-1)
                          for layer in (_random_layer(gen), _wide_layer(gen))])
    except InvalidMetricError:
        return None


def mask_fingerprint(metric: "Metric") -> str | None:
    """A digest of ``mask_signature``: equal exactly when every mask entry is equal; None if invalid."""
    signature = mask_signature(metric)
    return None if signature is None else hashlib.blake2b(signature.numpy().tobytes(), digest_size=12).hexdigest()
