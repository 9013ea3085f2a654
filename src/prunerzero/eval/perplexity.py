"""Perplexity as the pruning papers compute it, with memory that does not grow with the vocabulary.

The test text is joined and tokenised once, cut into non-overlapping windows of `seqlen` tokens
(`windows.eval_windows`, under the run's BOS rule; a trailing partial window is dropped), and
perplexity is exp of the mean next-token NLL over all windows.

Memory: a model's forward returns (B, T, V) logits, 2.1 GB in float32 for 4 x 512 tokens of a
262k vocabulary. Here the decoder runs once, the output head's input (B, T, C) is caught by a
pre-hook that stops the forward, and the head is applied to at most `HEAD_CHUNK_BYTES` worth of
logits at a time; each chunk's NLL is kept, its logits freed. The model-specific steps after the
head (Gemma-2's final soft-capping, Granite's and Cohere's logit scales) are applied here too, and
the first call on a model checks the chunked numbers against the model's own logits on a short
input: a model with an after-head step we do not know falls back to full logits, with a warning.
"""
from __future__ import annotations

import logging
import math
import time
import weakref
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..placement import input_device
from ..windows import NO_BOS, Windowing, eval_windows

log = logging.getLogger(__name__)

HEAD_CHUNK_BYTES = 64 * 2**20  # float32 logits alive at once per chunk (the vocabulary sets the tokens)
CHECK_TOKENS = 8  # length of the input the chunked path is checked on, once per model
_chunk_ok: "weakref.WeakKeyDictionary[nn.Module, bool]" = weakref.WeakKeyDictionary()


class _HeadInput(Exception):
    """Raised by the head's pre-hook: the decoder's output is caught, the logits are not computed."""

    def __init__(self, hidden: torch.Tensor) -> None:
        super().__init__()
        self.hidden = hidden


def _after_head(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """What the model's forward does to the head's output before returning it (known cases)."""
    cfg = getattr(model, "config", None)
    cfg = getattr(cfg, "get_text_config", lambda: cfg)() if cfg is not None else None
    cap = getattr(cfg, "final_logit_softcapping", None)
    divide = getattr(cfg, "logits_scaling", None)
    multiply = getattr(model, "logit_scale", None) if isinstance(getattr(model, "logit_scale", None), float) else None

    def apply(logits: torch.Tensor) -> torch.Tensor:
        if divide:
            logits = logits / divide
        if multiply:
            logits = logits * multiply
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    return apply


def _head_hidden(model: nn.Module, batch: torch.Tensor) -> tuple[torch.Tensor, nn.Module]:
    """The output head's input (B, T, C) for `batch` (B, T), without computing any logits."""
    head = model.get_output_embeddings()

    def stop(_module: nn.Module, args: tuple) -> None:
        raise _HeadInput(args[0])

    handle = head.register_forward_pre_hook(stop)
    try:
        model(input_ids=batch, use_cache=False)
    except _HeadInput as caught:
        return caught.hidden, head
    finally:
        handle.remove()
    raise RuntimeError(f"{type(model).__name__}'s forward never called its output head")


def chunked_logits(model: nn.Module, batch: torch.Tensor,
                   chunk_bytes: int = HEAD_CHUNK_BYTES) -> Iterator[tuple[slice, torch.Tensor]]:
    """Next-token logits of `batch` (B, T) for positions 0..T-2, a slice of the flattened
    (B * (T-1),) positions at a time: yields (positions, float32 logits (n, V))."""
    hidden, head = _head_hidden(model, batch)
    hidden = hidden[:, :-1].reshape(-1, hidden.shape[-1])  # (B*(T-1), C): the last position predicts nothing
    after = _after_head(model)
    vocab = head.weight.shape[0] if isinstance(head, nn.Linear) else head.weight.shape[-1]
    step = max(1, chunk_bytes // (4 * vocab))
    for lo in range(0, hidden.shape[0], step):
        rows = slice(lo, min(lo + step, hidden.shape[0]))
        yield rows, after(head(hidden[rows])).float()  # (n, V)


def _full_nll(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=batch, use_cache=False).logits  # (B, T, V)
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                           batch[:, 1:].reshape(-1).to(logits.device), reduction="none")  # (B*(T-1),)


def _chunked_nll(model: nn.Module, batch: torch.Tensor, chunk_bytes: int) -> torch.Tensor:
    targets = batch[:, 1:].reshape(-1)
    parts = []
    for rows, logits in chunked_logits(model, batch, chunk_bytes):
        parts.append(F.cross_entropy(logits, targets[rows].to(logits.device), reduction="none"))
    return torch.cat(parts)  # (B*(T-1),)


def head_chunking_ok(model: nn.Module) -> bool:
    """Whether the chunked path gives the model's own NLL (checked once per model on a short input)."""
    if model not in _chunk_ok:
        ok = model.get_output_embeddings() is not None
        if ok:
            probe = torch.arange(CHECK_TOKENS, device=input_device(model)).view(1, -1) % 2 + 2  # (1, CHECK_TOKENS)
            try:
                want, got = _full_nll(model, probe), _chunked_nll(model, probe, HEAD_CHUNK_BYTES)
                ok = bool(torch.allclose(got, want, rtol=1e-4, atol=1e-5))
            except RuntimeError:
                ok = False
        if not ok:
            log.warning("%s: the output head cannot be applied in chunks; perplexity uses full logits "
                        "(memory grows with the vocabulary)", type(model).__name__)
        _chunk_ok[model] = ok
    return _chunk_ok[model]


def logits_chunks(model: nn.Module, batch: torch.Tensor,
                  chunk_bytes: int = HEAD_CHUNK_BYTES) -> Iterator[tuple[slice, torch.Tensor]]:
    """Like :func:`chunked_logits`, falling back to the model's own full logits (one chunk) for a
    model whose head cannot be applied in chunks."""
    if head_chunking_ok(model):
        yield from chunked_logits(model, batch, chunk_bytes)
        return
    logits = model(input_ids=batch, use_cache=False).logits[:, :-1]  # (B, T-1, V)
    yield slice(0, logits.shape[0] * logits.shape[1]), logits.reshape(-1, logits.shape[-1]).float()


@torch.no_grad()
def token_nll(model: nn.Module, batch: torch.Tensor, chunk_bytes: int = HEAD_CHUNK_BYTES) -> torch.Tensor:
    """Next-token NLL of every predicted position of `batch` (B, T): (B, T-1) float32."""
    nll = _chunked_nll(model, batch, chunk_bytes) if head_chunking_ok(model) else _full_nll(model, batch)
    return nll.view(batch.shape[0], -1)


@torch.no_grad()
def window_nll(model: nn.Module, windows: torch.Tensor, batch_size: int = 4, progress: bool = False) -> torch.Tensor:
    """Mean next-token NLL of each window: windows (n, seqlen) -> (n,) float64."""
    device = input_device(model)  # a device_map may put the embeddings and the head on different GPUs
    out = []
    for start in tqdm(range(0, windows.shape[0], batch_size), desc="perplexity", disable=not progress, leave=False):
        batch = windows[start : start + batch_size].to(device)  # (B, T)
        out.append(token_nll(model, batch).double().mean(1).cpu())
    return torch.cat(out)


def perplexity(
    model: nn.Module,
    tokens: torch.Tensor,
    seqlen: int,
    max_tokens: int | None = None,
    batch_size: int = 4,
    progress: bool = True,
    windowing: Windowing = NO_BOS,
) -> dict:
    """exp(mean NLL) over non-overlapping windows; returns the number and the settings used."""
    start = time.perf_counter()
    windows = eval_windows(tokens, seqlen, max_tokens, windowing)
    nll = window_nll(model, windows, batch_size, progress)
    mean_nll = float(nll.mean())
    return {
        "ppl": math.exp(mean_nll),
        "nll": mean_nll,
        "seqlen": seqlen,
        "windows": windows.shape[0],
        "tokens": windows.numel(),
        "bos": windowing.bos,
        "seconds": time.perf_counter() - start,
    }
