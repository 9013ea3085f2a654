"""Capture what every decoder layer receives, then run layers one at a time.

Capture runs the model once per batch with each decoder layer's `forward` temporarily replaced
by a recorder that stores its positional and keyword arguments and passes the hidden states
through untouched. So the model itself builds every kwarg a layer needs (attention masks,
position ids, `position_embeddings`, per-layer-type masks as in Gemma-3) and no layer compute
is spent. The last recorder stops the forward pass. Memory: the hidden states
(nsamples, seqlen, hidden), plus kwargs shared by reference between layers.

Models spread over devices by a `device_map`: the recorders stand in for accelerate's hooked
`forward` (put back afterwards), and `LayerCall.run` sends the hidden states and every tensor
kwarg to the layer's own device, so each layer computes where its weights are and its output
stays there for the next layer to fetch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ..placement import input_device, module_device, send_to


class _StopForward(Exception):
    """Raised by the last recorder: nothing after the decoder layers is needed."""


@dataclass
class LayerCall:
    """The arguments one decoder layer got for one batch, minus the hidden states."""

    args: tuple
    kwargs: dict
    hidden_as_kwarg: bool = False

    def run(self, layer: nn.Module, hidden: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
        """The layer's output for `hidden`, computed on `device` (default: where the layer computes)."""
        device = module_device(layer) if device is None else device
        hidden, args, kwargs = send_to((hidden, self.args, self.kwargs), device)  # no copies when already there
        if self.hidden_as_kwarg:
            out = layer(*args, hidden_states=hidden, **kwargs)
        else:
            out = layer(hidden, *args, **kwargs)
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
    device = input_device(model)

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

    # accelerate's hooks live in an instance attribute `forward` too: keep them to put back.
    hooked_forward = [layer.__dict__.get("forward") for layer in layers]
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
        for layer, forward in zip(layers, hooked_forward):
            if forward is None:
                del layer.forward
            else:
                layer.forward = forward
    return captured


def layer_tasks(layer: nn.Module, hidden: list[torch.Tensor],
                calls: list[LayerCall]) -> list[Callable[[], torch.Tensor]]:
    """One decoder layer's run per batch, not yet started: each (B, T, C) -> (B, T, C) on the layer's
    device. One-pass pruning starts them in lockstep (calib/lockstep.py); run_layer one after another."""
    device = module_device(layer)
    return [lambda h=h, call=call: call.run(layer, h, device) for h, call in zip(hidden, calls)]


@torch.no_grad()
def run_layer(layer: nn.Module, hidden: list[torch.Tensor], calls: list[LayerCall]) -> list[torch.Tensor]:
    """One decoder layer over every batch: list of (B, T, C) -> list of (B, T, C) on the layer's device."""
    return [task() for task in layer_tasks(layer, hidden, calls)]
