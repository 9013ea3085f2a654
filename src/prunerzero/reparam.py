"""The same model, parameterised differently: a stand-in for "another model" that needs no download.

Rescalings that leave a Llama-style decoder's function unchanged (exactly, up to float rounding):

- a norm's per-channel gain moved into the linears it feeds: gamma -> gamma / s, and the columns of
  q/k/v (after input_layernorm) or gate/up (after post_attention_layernorm) times s;
- v_proj's output rows times r, o_proj's matching input columns divided by r (attention mixes
  value rows linearly across tokens; with grouped-query attention one v row feeds one column per
  query head of its group);
- up_proj's output rows times r, down_proj's matching columns divided by r (act(gate) * up is linear
  in up).

A pruning metric that ranks the weights of the regauged model differently from the original's
responds to how the weights happen to be scaled, not to what the model computes
(``symbolic.invariance`` says which metrics do, on a random layer; the `gauge-transfer` benchmark
measures what it costs them on SmolLM2). The gradient statistics of the regauged model follow
exactly from the original's (``regauge_gradients``): the gradient of y = w x scales inversely to w,
so no second gradient pass is needed.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .calib.stats import GradientStats
from .errors import UserError
from .models import find_decoder_layers


@dataclass(frozen=True)
class LinearGauge:
    """How one linear's weight was rescaled: w[i, j] -> rows[i] * w[i, j] * cols[j]."""

    rows: torch.Tensor  # (out,) float32
    cols: torch.Tensor  # (in,) float32


def _factors(gen: torch.Generator, n: int, spread: float) -> torch.Tensor:
    """(n,) positive factors, log-uniform on [1 / spread, spread]."""
    return torch.exp((torch.rand(n, generator=gen, dtype=torch.float64) * 2 - 1) * torch.log(
        torch.tensor(float(spread), dtype=torch.float64))).float()


def _scale(linear: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> None:
    w = linear.weight.data  # (out, in)
    if rows is not None:
        w.mul_(rows.to(w).unsqueeze(1))
        if linear.bias is not None:
            linear.bias.data.mul_(rows.to(w))
    if cols is not None:
        w.mul_(cols.to(w).unsqueeze(0))


@torch.no_grad()
def regauge(model: nn.Module, spread: float = 4.0, seed: int = 0, fold_norms: bool = False,
            uniform: float | None = None) -> dict[str, LinearGauge]:
    """Rescale ``model`` in place without changing its function; return every changed linear's factors
    by full module name. Per-channel norm gains and v/o and up/down row factors are drawn log-uniform
    on [1/spread, spread]; ``uniform`` makes every factor that one number instead (a change of the
    weights' and activations' overall size only); ``fold_norms`` moves each norm's own gain into the
    linears (the norms become all ones: the parameterisation several quantisation tools produce).
    Needs Llama-style layers (input_layernorm / post_attention_layernorm with a weight, self_attn
    q/k/v/o_proj and mlp gate/up/down_proj as nn.Linear): Llama, Mistral, Qwen2, SmolLM."""
    if not (spread >= 1.0):
        raise UserError(f"regauge: spread must be >= 1, got {spread}")
    layers_name, layers = find_decoder_layers(model)
    if uniform is not None and not uniform > 0:
        raise UserError(f"regauge: uniform must be > 0, got {uniform}")
    gen = torch.Generator().manual_seed(seed)
    draw = (lambda n: torch.full((n,), float(uniform))) if uniform is not None else (  # noqa: E731
        lambda n: _factors(gen, n, spread))
    gauges: dict[str, LinearGauge] = {}
    for i, layer in enumerate(layers):
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        parts = [getattr(attn, n, None) for n in ("q_proj", "k_proj", "v_proj", "o_proj")] + \
                [getattr(mlp, n, None) for n in ("gate_proj", "up_proj", "down_proj")]
        norms = [getattr(layer, n, None) for n in ("input_layernorm", "post_attention_layernorm")]
        if not all(isinstance(p, nn.Linear) for p in parts) or not all(
                getattr(n, "weight", None) is not None for n in norms):
            raise UserError(f"regauge needs Llama-style decoder layers; {type(layer).__name__} is not one")
        q, k, v, o, gate, up, down = parts
        prefix = f"{layers_name}.{i}"
        ones = lambda n: torch.ones(n)  # noqa: E731
        hidden = q.in_features
        col_attn, col_mlp = [n.weight.data.float().clone() if fold_norms else draw(hidden)
                             for n in norms]  # (hidden,) each
        if fold_norms and not all(bool((c != 0).all()) for c in (col_attn, col_mlp)):
            raise UserError(f"regauge: a norm of {prefix} has a zero gain, which cannot be folded into its linears")
        kv_width = v.out_features
        row_v = ones(kv_width) if fold_norms else draw(kv_width)  # (kv_heads * head_dim,)
        row_up = ones(up.out_features) if fold_norms else draw(up.out_features)  # (inter,)
        groups = o.in_features // kv_width  # query heads per kv head
        head_dim = getattr(attn, "head_dim", None) or kv_width // max(1, getattr(attn, "num_key_value_heads", 1))
        # o_proj column (h, d) reads value row (h // groups, d)
        o_cols = row_v.reshape(-1, head_dim).repeat_interleave(groups, dim=0).reshape(-1)  # (heads * head_dim,)
        for norm, cols in zip(norms, (col_attn, col_mlp)):
            norm.weight.data.div_(cols.to(norm.weight.data))
        changes = (("self_attn.q_proj", q, None, col_attn), ("self_attn.k_proj", k, None, col_attn),
                   ("self_attn.v_proj", v, row_v, col_attn), ("self_attn.o_proj", o, None, 1 / o_cols),
                   ("mlp.gate_proj", gate, None, col_mlp), ("mlp.up_proj", up, row_up, col_mlp),
                   ("mlp.down_proj", down, None, 1 / row_up))
        for name, lin, rows, cols in changes:
            _scale(lin, rows, cols)
            gauges[f"{prefix}.{name}"] = LinearGauge(rows if rows is not None else ones(lin.out_features), cols)
    return gauges


def regauge_gradients(grads: GradientStats, gauges: dict[str, LinearGauge]) -> dict[str, tuple[torch.Tensor, ...]]:
    """The gradient statistics of the regauged model from the original's: each per-weight norm over
    samples divided by rows[i] * cols[j] (the gradient of y = w x scales inversely to w)."""
    out = {}
    for name, pair in grads.items():
        g = gauges.get(name)
        if g is None:
            out[name] = tuple(pair)
            continue
        factor = g.rows.unsqueeze(1) * g.cols.unsqueeze(0)  # (out, in)
        out[name] = tuple(t / factor.to(t) for t in pair)
    return out
