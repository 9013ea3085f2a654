"""Perplexity as the pruning papers compute it.

The test text is joined and tokenised once, cut into non-overlapping windows of `seqlen` tokens
(a trailing partial window is dropped), and perplexity is exp of the mean next-token NLL over
all windows.
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..placement import input_device


@torch.no_grad()
def window_nll(model: nn.Module, windows: torch.Tensor, batch_size: int = 4, progress: bool = False) -> torch.Tensor:
    """Mean next-token NLL of each window: windows (n, seqlen) -> (n,) float64."""
    device = input_device(model)  # a device_map may put the embeddings and the head on different GPUs
    out = []
    for start in tqdm(range(0, windows.shape[0], batch_size), desc="perplexity", disable=not progress, leave=False):
        batch = windows[start : start + batch_size].to(device)  # (B, T)
        logits = model(input_ids=batch, use_cache=False).logits  # (B, T, V)
        nll = F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).float(), batch[:, 1:].reshape(-1).to(logits.device),
            reduction="none",
        )  # (B * (T-1),)
        out.append(nll.view(batch.shape[0], -1).double().mean(1).cpu())
    return torch.cat(out)


def test_windows(tokens: torch.Tensor, seqlen: int, max_tokens: int | None = None) -> torch.Tensor:
    """(1, N) token ids -> (n, seqlen) non-overlapping windows, at most max_tokens tokens in all."""
    flat = tokens.reshape(-1)
    if max_tokens is not None:
        flat = flat[:max_tokens]
    n = flat.numel() // seqlen
    if n == 0:
        raise ValueError(f"need at least {seqlen} test tokens, have {flat.numel()}")
    return flat[: n * seqlen].view(n, seqlen)


def perplexity(
    model: nn.Module,
    tokens: torch.Tensor,
    seqlen: int,
    max_tokens: int | None = None,
    batch_size: int = 4,
    progress: bool = True,
) -> dict:
    """exp(mean NLL) over non-overlapping windows; returns the number and the settings used."""
    start = time.perf_counter()
    windows = test_windows(tokens, seqlen, max_tokens)
    nll = window_nll(model, windows, batch_size, progress)
    mean_nll = float(nll.mean())
    return {
        "ppl": math.exp(mean_nll),
        "nll": mean_nll,
        "seqlen": seqlen,
        "windows": windows.shape[0],
        "tokens": windows.numel(),
        "seconds": time.perf_counter() - start,
    }
