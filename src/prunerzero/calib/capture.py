"""Capture what every decoder layer receives, then run layers one at a time.

Capture runs the model once per batch with each decoder layer's `forward` temporarily replaced
by a recorder that stores its positional and keyword arguments and passes the hidden states
through untouched. So the model itself builds every kwarg a layer needs (attention masks,
position ids, `position_embeddings`, per-layer-type masks as in Gemma-3) and no layer compute
is spent. The last recorder stops the forward pass. Memory: the hidden states
(nsamples, seqlen, hidden), plus kwargs shared by reference between layers.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


class _StopForward(Exception):
    """Raised by the last recorder: nothing after the decoder layers is needed."""


@dataclass
class LayerCall:
    """The arguments one decoder layer got for one batch, minus the hidden states."""

    args: tuple
    kwargs: dict
    hidden_as_kwarg: bool = False

    def run(self, layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        if self.hidden_as_kwarg:
            out = layer(*self.args, hidden_states=hidden, **self.kwargs)
        else:
            out = layer(hidden, *self.args, **self.kwargs)
        return out[0] if isinstance(out, (tuple, list)) else out


@dataclass
class CapturedInputs:
    hidden: list[torch.Tensor]  # per batch: (B, T, C), the first layer's input
    calls: list[list[LayerCall]] = field(default_factory=list)  # [layer][batch]


def _split_hidden(args: tuple, kwargs: dict) -> tuple[torch.Tensor, LayerCall]:
    kwargs = dict(kwargs)
    kwargs.pop("past_key_values", None)
    kwargs.pop("past_key_value", None)
    if "use_cache" in kwargs:
        kwargs["use_cache"] = False
    if args:
        return args[0], LayerCall(tuple(args[1:]), kwargs)
    return kwargs.pop("hidden_states"), LayerCall((), kwargs, hidden_as_kwarg=True)


@torch.no_grad()
def capture_layer_inputs(
    model: nn.Module, layers: nn.ModuleList, input_ids: torch.Tensor, batch_size: int
) -> CapturedInputs:
    """input_ids (nsamples, seqlen) -> first-layer hidden states and every layer's call arguments."""
    captured = CapturedInputs(hidden=[], calls=[[] for _ in layers])
    device = next(model.parameters()).device

    def recorder(index: int):
        def forward(*args, **kwargs):
            hidden, call = _split_hidden(args, kwargs)
            if index == 0:
                captured.hidden.append(hidden.detach())
            captured.calls[index].append(call)
            if index == len(layers) - 1:
                raise _StopForward
            return hidden

        return forward

    for index, layer in enumerate(layers):
        layer.forward = recorder(index)  # instance attribute shadows the class method
    try:
        for start in range(0, input_ids.shape[0], batch_size):
            batch = input_ids[start : start + batch_size].to(device)
            try:
                model(input_ids=batch, use_cache=False)
            except _StopForward:
                pass
    finally:
        for layer in layers:
            del layer.forward
    return captured


@torch.no_grad()
def run_layer(layer: nn.Module, hidden: list[torch.Tensor], calls: list[LayerCall]) -> list[torch.Tensor]:
    """One decoder layer over every batch: list of (B, T, C) -> list of (B, T, C)."""
    return [call.run(layer, h) for h, call in zip(hidden, calls)]
