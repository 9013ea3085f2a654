"""The dense weights of a model, kept once: prune from them as often as needed, then put them back.

The one-shot paths -- ``prunerzero sweep`` (every method x sparsity) and the search fitness (every
candidate) -- prune every prunable decoder linear from the *dense* weights again and again, never
from an already pruned model. ``DenseSnapshot`` keeps an (out, in) copy of each linear's weight in
the model's own dtype, on the linear's own device (a device map spreads them; a bf16 7B model holds
13 GiB of copies, not 26), hands a float32 copy of one linear at a time to the pruning, writes the
result into the model, and restores the dense weights.
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch import nn

from .models import find_decoder_layers, layer_index, prunable_linears, set_weight_matrix, weight_matrix

# (full linear name, its dense weight (out, in) float32) -> the pruned weight (out, in)
PruneOne = Callable[[str, torch.Tensor], torch.Tensor]


class DenseSnapshot:
    def __init__(self, model: nn.Module) -> None:
        self.model = model
        layers_name, _ = find_decoder_layers(model)
        self.linears: dict[str, nn.Module] = prunable_linears(model)  # full name -> module, model order
        self.dense = {name: weight_matrix(m).detach().clone() for name, m in self.linears.items()}  # (out, in)
        self.layer_of = {name: layer_index(name, layers_name) for name in self.linears}  # decoder layer index

    def pruned(self, prune: PruneOne) -> Iterator[tuple[str, nn.Module, torch.Tensor]]:
        """(name, module, prune(name, dense weight as float32)) for every linear, one at a time;
        the model is not touched."""
        for name, module in self.linears.items():
            yield name, module, prune(name, self.dense[name].float())

    @torch.no_grad()
    def apply(self, prune: PruneOne, count_zeros: bool = False) -> float | None:
        """Write every linear's pruned weight into the model (in the model's dtype); with
        ``count_zeros``, returns the share of zeros among the pruned weights."""
        zeros = total = 0
        for _, module, new in self.pruned(prune):
            set_weight_matrix(module, new)
            if count_zeros:
                zeros += int((new == 0).sum())
                total += new.numel()
        return zeros / max(total, 1) if count_zeros else None

    @torch.no_grad()
    def restore(self) -> None:
        """The dense weights back into the model."""
        for name, module in self.linears.items():
            set_weight_matrix(module, self.dense[name])
