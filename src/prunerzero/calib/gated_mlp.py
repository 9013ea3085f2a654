"""Gated MLPs (Llama, Mistral, Qwen2/3, Gemma 1-3, OLMo-2, Granite) run in token chunks during
one-pass pruning, so the layer's largest activations never exist for all calibration tokens at once.

In one-pass pruning every calibration batch goes through a layer before its linears are pruned,
the batches in lockstep, so all of their activations are alive at once (pipeline.py). The
MLP is where that costs memory: `down(act(gate(x)) * up(x))` holds gate(x), act(gate(x)), up(x)
and their product, each (tokens, intermediate): four 100 MB float32 tensors at 16k tokens on
SmolLM2, while the papers' code, one sample at a time, holds 3 MB. Here gate and up are pruned
from the whole input first, the product is built a chunk of tokens at a time into one
(tokens, intermediate) buffer (the input down_proj's statistics need in full), down is pruned,
and its output is computed in one call. The MLP is token-wise, so the result is the same;
only matrix products over fewer rows at once, which may round differently in the last bit.

Only modules whose forward is exactly that one line are chunked (checked on the source, so a
model whose MLP does anything more keeps its own forward).
"""
from __future__ import annotations

import inspect
from contextlib import contextmanager
from functools import lru_cache
from typing import Callable, Iterator

import torch
from torch import nn

# The forward of transformers' gated MLPs, whitespace removed.
GATED_FORWARD = "down_proj=self.down_proj(self.act_fn(self.gate_proj(x))*self.up_proj(x))returndown_proj"
CHUNK_TOKENS = 2048  # (2048, intermediate) temporaries: 12 MB per tensor at SmolLM2's width

FirstSight = Callable[[str, nn.Module, torch.Tensor], None]  # (linear name, linear, its whole input)


@lru_cache(maxsize=None)
def is_gated_mlp(cls: type) -> bool:
    try:
        source = inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return False
    body = "".join(source.split(":", 1)[1].split()) if ":" in source else ""
    return body.endswith(GATED_FORWARD) and body.count("=") == 1


def _chunked_forward(mlp: nn.Module, names: dict[str, str], first_sight: FirstSight, chunk: int):
    def forward(x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])  # (tokens, hidden)
        tokens = flat.shape[0]
        if tokens <= chunk:
            return type(mlp).forward(mlp, x)
        first_sight(names["gate_proj"], mlp.gate_proj, flat)
        first_sight(names["up_proj"], mlp.up_proj, flat)  # the same tensor: one accumulator for both
        inner: torch.Tensor | None = None  # (tokens, intermediate): down_proj's whole input
        for start in range(0, tokens, chunk):
            part = flat[start : start + chunk]
            gate, up = mlp.act_fn(mlp.gate_proj(part)), mlp.up_proj(part)
            if inner is None:
                inner = gate.new_empty(tokens, gate.shape[-1], dtype=torch.result_type(gate, up))
            torch.mul(gate, up, out=inner[start : start + chunk])  # straight into place: no copy
        # The last chunk's temporaries go before down's first sight: one-pass pruning pauses every
        # calibration batch there (calib/lockstep.py), and each paused frame would keep its own.
        del gate, up, part
        first_sight(names["down_proj"], mlp.down_proj, inner)
        # down_proj in one call: its output, (tokens, hidden), is as large as any buffer it would be
        # assembled in, and a chunked call only added a copy (the same bits on CPU at SmolLM2's shapes).
        out = mlp.down_proj(inner)
        return out.reshape(*x.shape[:-1], out.shape[-1])

    return forward


@contextmanager
def chunked_gated_mlps(layer: nn.Module, linear_names: set[str], first_sight: FirstSight,
                       chunk: int | None = None) -> Iterator[int]:
    """Inside, the layer's gated MLPs run in chunks of `chunk` tokens; yields how many were patched.

    `first_sight(name, linear, x)` is what one-pass pruning does on a linear's first input
    (statistics, then pruning); the linears' own pre-hooks must ignore calls after that one.
    A module with a forward of its own already (accelerate's device hooks) is left alone."""
    chunk = CHUNK_TOKENS if chunk is None else chunk
    patched = []
    for prefix, mlp in layer.named_modules():
        if not is_gated_mlp(type(mlp)) or "forward" in mlp.__dict__:
            continue
        names = {k: f"{prefix}.{k}" if prefix else k for k in ("gate_proj", "up_proj", "down_proj")}
        if not set(names.values()) <= linear_names:
            continue
        mlp.forward = _chunked_forward(mlp, names, first_sight, chunk)
        patched.append(mlp)
    try:
        yield len(patched)
    finally:
        for mlp in patched:
            del mlp.forward
