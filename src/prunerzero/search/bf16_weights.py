"""bfloat16 copies of the pruned weights for the fitness's bf16 forwards (CPU), so autocast does not
cast every weight again in every forward.

Under ``torch.autocast(bfloat16)`` a linear with a float32 weight first rounds the weight to bf16 (a
fresh copy: 22% of a SmolLM2 fitness forward, 134 M weights read and written per forward), then
multiplies bf16 by bf16. A search candidate's masked weights are written once per setting anyway, so
they are written straight in bf16 here (``masks.prune_weight``, rounded as torch rounds), and the
output head, never pruned, is rounded once per run. For the forward the bf16 tensors take the float32
weights' place in the modules; autocast finds them already in bf16 and multiplies the same operands,
so every value is the same to the bit (tests/test_fitness_rungs.py compares both ways on tiny models
of every architecture). The model's float32 weights are not written while these copies hold the
candidate: ``ProxyFitness.restore`` and everything that prunes from the model read those.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from .. import mask_kernels


class Bf16Weights:
    """One bf16 copy of each prunable linear's weight (written by the candidate) and of the output head."""

    def __init__(self, model: nn.Module, linears: dict[str, nn.Module]) -> None:
        self.linears = linears
        self.copies = {name: nn.Parameter(torch.empty_like(m.weight, dtype=torch.bfloat16), requires_grad=False)
                       for name, m in linears.items()}  # name -> (out, in) bf16
        head = model.get_output_embeddings()
        self.head = head if _plain_linear(head) and head.weight.dtype == torch.float32 else None
        self.head_copy = (nn.Parameter(self.head.weight.detach().bfloat16(), requires_grad=False)
                          if self.head is not None else None)
        self.holds_candidate = False  # whether the copies hold the weights the next forward should use

    @staticmethod
    def supported(model: nn.Module, linears: dict[str, nn.Module]) -> bool:
        """Plain nn.Linear modules with contiguous float32 CPU weights and no hooks (no device map)."""
        return mask_kernels.available() and all(
            _plain_linear(m) and m.weight.dtype == torch.float32 and m.weight.device.type == "cpu"
            and m.weight.is_contiguous() for m in linears.values()) and not hasattr(model, "hf_device_map")

    def target(self, name: str) -> torch.Tensor:
        """Where the candidate's pruned weight of linear `name` goes: (out, in) bf16."""
        self.holds_candidate = True
        return self.copies[name].data

    @contextlib.contextmanager
    def in_model(self) -> Iterator[None]:
        """The bf16 copies in the modules' place for the duration (nothing when they hold no candidate)."""
        if not self.holds_candidate:
            yield
            return
        pairs = [(m, self.copies[name]) for name, m in self.linears.items()]
        if self.head is not None:
            pairs.append((self.head, self.head_copy))
        kept = [m._parameters["weight"] for m, _ in pairs]
        try:
            for module, copy in pairs:
                module._parameters["weight"] = copy
            yield
        finally:
            for (module, _), weight in zip(pairs, kept):
                module._parameters["weight"] = weight


def _plain_linear(module: nn.Module | None) -> bool:
    return (type(module) is nn.Linear and not module._forward_hooks and not module._forward_pre_hooks
            and not hasattr(module, "_hf_hook"))
