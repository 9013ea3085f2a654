"""bf16 autocast that stays fast on CPUs without bf16 hardware.

Torch's CPU autocast computes matrix products on bf16 operands with float32 accumulation: oneDNN
does that at float32 speed or better where the CPU has AVX512 (AVX512-BF16, AMX), but on an
AVX2-only CPU (e.g. AMD EPYC before Zen 4) the fallback kernel is 5-40x slower than float32
(SmolLM2's gate projection of 2x512 tokens: 20 ms float32, 110 ms bf16 under autocast, 2 threads),
which made a search's bf16 fitness forwards 10x slower there. On such CPUs ``bf16_autocast`` keeps
autocast, so every op's dtype policy is torch's own (which ops run in bf16, which in float32, what
they return), and computes only the bf16 matrix products below it as float32 products of the same
bf16 values, rounded to bf16: the arithmetic autocast asks for (float32 accumulation of exact bf16
products) in another order of summation, so results agree with the native bf16 kernels but for the
last bit of a few outputs in ten thousand.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

aten = torch.ops.aten

# The bf16 kernels autocast reaches from linear and matmul on CPU. Attention is left to torch: its
# CPU flash kernel runs bf16 about as fast as float32 on AVX2 (17 vs 20 ms at SmolLM2's shapes).
_PRODUCTS = {aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default, aten.addbmm.default}


@functools.lru_cache(maxsize=None)
def cpu_has_fast_bf16() -> bool:
    """Whether oneDNN runs bf16 matrix products on this CPU (it needs AVX512; AVX2-only CPUs do not)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch built without oneDNN: leave autocast as torch has it
        return True


def _is_bf16(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.dtype == torch.bfloat16


class Bf16ProductsInFloat32(TorchDispatchMode):
    """Under it, bf16 matrix products run as float32 products of the same bf16 values, their outputs
    rounded to bf16 (float32 accumulation, as the bf16 kernels do). Other ops pass through."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in _PRODUCTS or not any(_is_bf16(a) for a in args):
            return func(*args, **kwargs)
        up = (lambda v: v.float() if _is_bf16(v) else v)  # noqa: E731  exact: bf16 -> float32
        return func(*tree_map(up, args), **tree_map(up, kwargs)).bfloat16()


class bf16_autocast:  # noqa: N801  named like the torch.autocast it stands for
    """``torch.autocast(device_type, torch.bfloat16)`` (a no-op when not `enabled`), with the matrix
    products computed in float32 on CPUs without fast bf16 kernels (module docstring). Reusable and
    re-entrant, as torch.autocast: one object serves several ``with`` blocks of a run."""

    def __init__(self, device_type: str, enabled: bool = True) -> None:
        self.device_type, self.enabled = device_type, enabled
        self._entered: list[contextlib.ExitStack] = []

    def __enter__(self) -> None:
        stack = contextlib.ExitStack()
        if self.enabled:
            stack.enter_context(torch.autocast(self.device_type, dtype=torch.bfloat16))
            if self.device_type == "cpu" and not cpu_has_fast_bf16():
                stack.enter_context(Bf16ProductsInFloat32())
        self._entered.append(stack)

    def __exit__(self, *exc: object) -> None:
        self._entered.pop().close()
