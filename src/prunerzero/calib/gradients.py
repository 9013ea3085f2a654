"""Gradient statistics G for GBLM-Pruner and Pruner-Zero: per-weight norms of LM-loss gradients.

What is computed (GBLM-Pruner's ``gradient_computation.py``, also used by Pruner-Zero): each
calibration sample is run on its own (batch size 1), its mean next-token cross-entropy is
backpropagated, and for every weight w of every prunable decoder-layer linear we accumulate

    l1 = sum_n |g_n|            l2 = sqrt(sum_n g_n^2)          g_n = dLoss_n / dw

What is stored: exactly these two norms, UNSCALED, float32, as (out, in) matrices (GPT-2's Conv1D
gradients are transposed to match ``weight_matrix``). The reference code multiplies g by 100
before accumulating and saves float16; ``TerminalSpec.g_scale`` applies that x100 here, so the
numbers differ from a GBLM-Pruner file by exactly the factor 100 (and float16 rounding).
Differences from the reference on purpose: ``model.eval()`` (no dropout; LLaMA has none
anyway), float32 accumulators (theirs overflow-prone float16 for l1), and only the decoder-layer
weights get gradients (embeddings, norms, lm_head, biases are frozen: less memory and time).

Also here: a disk cache keyed by model, data and seed (one safetensors file, written
atomically), resumable partial sums for long runs, and a loader for precomputed files (ours or
GBLM-Pruner's / Pruner-Zero's ``torch.save`` dicts).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from ..errors import UserError
from .stats import GradientStats  # grad_l1, grad_l2 here: float32 on CPU
from ..models import cache_dir, find_decoder_layers, find_linears

log = logging.getLogger(__name__)


FORMAT = "prunerzero-gradients"
FORMAT_VERSION = "1"
LEGACY_SCALE = 100.0  # GBLM-Pruner / Pruner-Zero multiply gradients by --scale (default 100)

# Called after every batch with the number of samples done (a progress hook; tests raise from it).
ProgressHook = Callable[[int], None]


# ---------------------------------------------------------------- structure


def prunable_weights(model: nn.Module) -> dict[str, nn.Module]:
    """Full linear name (e.g. "model.layers.0.self_attn.q_proj") -> module, in model order."""
    layers_name, layers = find_decoder_layers(model)
    return {
        f"{layers_name}.{i}.{name}": module
        for i, layer in enumerate(layers)
        for name, module in find_linears(layer).items()
    }


def _out_in_shape(module: nn.Module) -> tuple[int, int]:
    shape = tuple(module.weight.shape)
    return shape if isinstance(module, nn.Linear) else (shape[1], shape[0])  # Conv1D: (in, out)


def _grad_matrix(module: nn.Module) -> torch.Tensor:
    """The weight's gradient as (out, in) float32 on CPU (Conv1D stores (in, out): transpose)."""
    grad = module.weight.grad
    grad = grad if isinstance(module, nn.Linear) else grad.t()
    return grad.detach().to("cpu", torch.float32)


def _check_ids(calib_ids: torch.Tensor) -> torch.Tensor:
    if not isinstance(calib_ids, torch.Tensor) or calib_ids.dim() != 2 or calib_ids.dtype.is_floating_point:
        raise UserError("calibration ids must be an integer tensor of shape (nsamples, seqlen)")
    if calib_ids.shape[0] < 1 or calib_ids.shape[1] < 2:
        raise UserError(f"gradients need >= 1 sample of >= 2 tokens, got shape {tuple(calib_ids.shape)}")
    return calib_ids.long()


# ---------------------------------------------------------------- computation


def _lm_loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over all predicted tokens of ``ids`` (B, T).

    Computed here rather than via ``labels=`` so every causal LM behaves alike (same as HF's
    shift-by-one loss with labels = input ids, which is what GBLM-Pruner passes).
    """
    logits = model(input_ids=ids, use_cache=False).logits  # (B, T, V)
    logits = logits[:, :-1].float().reshape(-1, logits.shape[-1])  # (B*(T-1), V)
    return F.cross_entropy(logits, ids[:, 1:].reshape(-1))


def _accumulate(
    model: nn.Module,
    calib_ids: torch.Tensor,
    l1: dict[str, torch.Tensor],
    sumsq: dict[str, torch.Tensor],
    *,
    start: int = 0,
    batch_size: int = 1,
    dtype: torch.dtype | None = None,
    progress: bool = True,
    after_batch: Callable[[int], None] | None = None,
) -> None:
    """Add |g| and g^2 of samples ``start:`` into ``l1`` / ``sumsq`` (each (out, in) float32, CPU).

    Only the prunable weights get ``requires_grad``; all flags, ``.grad`` and train/eval mode are
    put back afterwards, even when interrupted.
    """
    device = next(model.parameters()).device
    modules = prunable_weights(model)
    params = list(model.parameters())
    saved_flags = [p.requires_grad for p in params]
    saved_grads = {name: m.weight.grad for name, m in modules.items()}
    was_training = model.training
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
    n = calib_ids.shape[0]
    bar = tqdm(total=n, initial=start, desc="gradients", unit="sample", disable=not progress)
    try:
        model.eval()
        for p in params:
            p.requires_grad_(False)
        for m in modules.values():
            m.weight.requires_grad_(True)
        for lo in range(start, n, batch_size):
            ids = calib_ids[lo : lo + batch_size].to(device)  # (b, T)
            for m in modules.values():
                m.weight.grad = None  # fresh gradient per batch, never summed across batches
            with autocast:
                loss = _lm_loss(model, ids)
            loss.backward()
            for name, m in modules.items():
                g = _grad_matrix(m)  # (out, in)
                l1[name].add_(g.abs())
                sumsq[name].addcmul_(g, g)
            done = min(lo + batch_size, n)
            bar.update(done - lo)
            if after_batch is not None:
                after_batch(done)
    finally:
        bar.close()
        for p, flag in zip(params, saved_flags):
            p.requires_grad_(flag)
        for name, m in modules.items():
            m.weight.grad = saved_grads[name]
        model.train(was_training)


def _zeros(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    shapes = {name: _out_in_shape(m) for name, m in prunable_weights(model).items()}
    return ({k: torch.zeros(s) for k, s in shapes.items()}, {k: torch.zeros(s) for k, s in shapes.items()})


def compute_gradient_stats(
    model: nn.Module,
    calib_ids: torch.Tensor,
    *,
    batch_size: int = 1,
    dtype: torch.dtype | None = None,
    progress: bool = True,
) -> GradientStats:
    """Per-weight l1 = sum|g| and l2 = sqrt(sum g^2) over calibration samples, unscaled.

    ``calib_ids`` (n, seqlen). With ``batch_size=1`` (the reference) g is each sample's gradient.
    With ``batch_size=b>1`` g is the gradient of the batch-mean loss, so the norms are over n/b
    batch gradients: faster, but an approximation (averaging shrinks them by roughly 1/sqrt(b)
    and mixes samples' signs). ``dtype`` (e.g. torch.bfloat16) runs forward/backward under
    autocast; the accumulation stays float32. Memory: the accumulators are 2x the prunable
    weights in float32, plus one gradient.
    """
    calib_ids = _check_ids(calib_ids)
    if batch_size < 1:
        raise UserError(f"gradient batch size must be >= 1, got {batch_size}")
    l1, sumsq = _zeros(model)
    _accumulate(model, calib_ids, l1, sumsq, batch_size=batch_size, dtype=dtype, progress=progress)
    return {name: (l1[name], sumsq[name].sqrt_()) for name in l1}


# ---------------------------------------------------------------- cache


def _key_fields(model: nn.Module, calib_ids: torch.Tensor, model_id: str, data_id: str, seed: int,
                batch_size: int, dtype: torch.dtype | None) -> dict[str, str]:
    ids = calib_ids.detach().to("cpu", torch.int64).contiguous()
    shapes = [[name, *_out_in_shape(m)] for name, m in prunable_weights(model).items()]
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "model_id": model_id,
        "data_id": data_id,
        "nsamples": str(ids.shape[0]),
        "seqlen": str(ids.shape[1]),
        "seed": str(seed),
        "batch_size": str(batch_size),
        "dtype": "float32" if dtype is None else str(dtype).removeprefix("torch."),
        "ids_sha256": hashlib.sha256(ids.numpy().tobytes()).hexdigest(),
        "shapes_sha256": hashlib.sha256(json.dumps(shapes).encode()).hexdigest(),
    }


def cache_key(fields: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]


def _save_atomic(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """Write to a temporary sibling and rename, so a killed run never leaves a half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_or_compute_gradients(
    model: nn.Module,
    calib_ids: torch.Tensor,
    *,
    model_id: str,
    data_id: str,
    seed: int,
    cache: Path | None = None,
    batch_size: int = 1,
    dtype: torch.dtype | None = None,
    progress: bool = True,
    checkpoint_every: int | None = None,
    checkpoint_seconds: float = 60.0,
    on_progress: ProgressHook | None = None,
) -> tuple[GradientStats, dict]:
    """Gradient statistics from ``<cache>/<key>.safetensors``, computing and caching them if absent.

    ``cache`` defaults to ``cache_dir()/"gradients"``. The key hashes model_id, data_id, nsamples,
    seqlen, seed, batch_size, dtype, the calibration ids' bytes and the prunable weights' shapes
    (not their values: pass a model_id that names the weights). While computing, partial sums are
    saved to ``<key>.partial.safetensors`` every ``checkpoint_every`` samples and/or every
    ``checkpoint_seconds`` (stretched so writing costs at most ~10% of the run) and picked up by
    the next call; the partial file is deleted when the full one is written.
    Returns (stats, info) with info = {cache_file, cached, seconds, nsamples, seqlen, resumed_from}.
    """
    calib_ids = _check_ids(calib_ids)
    if batch_size < 1:
        raise UserError(f"gradient batch size must be >= 1, got {batch_size}")
    t0 = time.monotonic()
    fields = _key_fields(model, calib_ids, model_id, data_id, seed, batch_size, dtype)
    folder = Path(cache) if cache is not None else cache_dir() / "gradients"
    key = cache_key(fields)
    final, partial = folder / f"{key}.safetensors", folder / f"{key}.partial.safetensors"
    n, seqlen = calib_ids.shape
    info = {"cache_file": str(final), "cached": False, "seconds": 0.0, "nsamples": n, "seqlen": seqlen,
            "resumed_from": 0}
    if final.exists():
        stats = load_gradient_file(final, model)
        info.update(cached=True, seconds=time.monotonic() - t0)
        return stats, info

    l1, sumsq = _zeros(model)
    start = 0
    if partial.exists():
        try:
            with safe_open(str(partial), "pt") as f:
                meta = f.metadata() or {}
                if any(meta.get(k) != v for k, v in fields.items()):
                    raise ValueError("key fields differ")
                for name in l1:
                    l1[name].copy_(f.get_tensor(f"{name}.l1"))
                    sumsq[name].copy_(f.get_tensor(f"{name}.sumsq"))
                start = int(meta["done"])
            log.info("resuming gradients from %s (%d/%d samples done)", partial, start, n)
        except Exception as exc:  # unreadable or foreign: start over rather than fail
            log.warning("ignoring partial gradient file %s (%s)", partial, exc)
            l1, sumsq = _zeros(model)
            start = 0
    info["resumed_from"] = start

    state = {"last_done": start, "last_time": time.monotonic(), "write_s": 0.0}

    def after_batch(done: int) -> None:
        now = time.monotonic()
        due_count = checkpoint_every is not None and done - state["last_done"] >= checkpoint_every
        due_time = now - state["last_time"] >= max(checkpoint_seconds, 10 * state["write_s"])
        if done < n and (due_count or due_time):
            tensors = {f"{k}.l1": v for k, v in l1.items()} | {f"{k}.sumsq": v for k, v in sumsq.items()}
            _save_atomic(tensors, partial, {**fields, "done": str(done)})
            state.update(last_done=done, last_time=time.monotonic(), write_s=time.monotonic() - now)
        if on_progress is not None:
            on_progress(done)

    if start < n:
        _accumulate(model, calib_ids, l1, sumsq, start=start, batch_size=batch_size, dtype=dtype,
                    progress=progress, after_batch=after_batch)
    stats = {name: (l1[name], sumsq[name].sqrt_()) for name in l1}
    meta = {**fields, "l1": "sum_n |dL_n/dW|", "l2": "sqrt(sum_n (dL_n/dW)^2)", "scale": "1",
            "layout": "(out, in) float32", "loss": "mean next-token cross-entropy per sample"}
    _save_atomic(_flatten(stats), final, meta)
    partial.unlink(missing_ok=True)
    info["seconds"] = time.monotonic() - t0
    return stats, info


def _flatten(stats: GradientStats) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name, (g1, g2) in stats.items():
        out[f"{name}.l1"], out[f"{name}.l2"] = g1, g2
    return out


# ---------------------------------------------------------------- precomputed files

_LEGACY_KEY = re.compile(r"^(?P<linear>.+)_layer_(?P<index>\d+)$")  # "self_attn.q_proj_layer_0"


def read_gradient_file(path: str | Path, model: nn.Module, *, legacy_norm: str = "auto",
                       legacy_scale: float = LEGACY_SCALE) -> tuple[GradientStats, dict]:
    """Read and validate a gradient file; returns (stats, info about what the file held).

    Accepted: our safetensors (keys "<full name>.l1" / ".l2", unscaled), or a ``torch.save`` dict
    as GBLM-Pruner / Pruner-Zero write it: one norm per file, keys "<linear>_layer_<i>" (or full
    names), float16 (out, in), multiplied by ``legacy_scale`` (their --scale, default 100), which
    is divided out here. ``legacy_norm`` "auto" reads l1 vs l2 from the file name
    ("..._norm_l1_...", else l2). A file with one norm fills both l1 and l2 with it (info["norms"]).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"gradient file not found: {path}")
    expected = prunable_weights(model)
    layers_name, _ = find_decoder_layers(model)
    info: dict = {"file": str(path)}
    by_norm: dict[str, dict[str, torch.Tensor]] = {"l1": {}, "l2": {}}
    if path.suffix == ".safetensors":
        try:
            raw = load_file(str(path))
        except Exception as exc:
            raise UserError(f"cannot read gradient file {path}: {exc}") from None
        for key, tensor in raw.items():
            base, _, norm = key.rpartition(".")
            if norm in by_norm:
                by_norm[norm][base] = tensor
        info.update(format=FORMAT, scale_removed=1.0)
    else:
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise UserError(f"cannot read gradient file {path} as a torch.save dict: {exc}") from None
        if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
            raise UserError(f"gradient file {path}: expected a dict of name -> tensor")
        norm = legacy_norm
        if norm == "auto":  # GBLM-Pruner names them gradients_aggregrate_norm_l{1,2}_model_<name>.pth
            norm = "l1" if re.search(r"(?<![a-z0-9])l1(?![0-9])", path.name.lower()) else "l2"
        if norm not in by_norm:
            raise UserError(f"legacy gradient norm must be auto, l1 or l2, got {legacy_norm!r}")
        for key, tensor in raw.items():
            m = _LEGACY_KEY.match(key)
            full = f"{layers_name}.{m['index']}.{m['linear']}" if m else key
            by_norm[norm][full] = tensor.float() / legacy_scale
        info.update(format="gblm-pruner torch.save", scale_removed=legacy_scale)
    norms = [k for k in ("l1", "l2") if by_norm[k]]
    if not norms:
        raise UserError(f"gradient file {path} holds no gradient tensors")
    info["norms"] = norms
    if len(norms) == 1:  # one norm only: use it for both, and say so
        other = "l2" if norms[0] == "l1" else "l1"
        by_norm[other] = by_norm[norms[0]]
        log.warning("gradient file %s has only %s norms; using them for %s too", path, norms[0], other)

    stats: GradientStats = {}
    for name, module in expected.items():
        shape = _out_in_shape(module)
        pair = {}
        for norm in sorted(("l1", "l2"), key=lambda k: k not in norms):  # the file's own norm first
            t = by_norm[norm].get(name)
            if t is None:
                raise UserError(f"gradient file {path}: no {norm} gradients for {name}")
            if tuple(t.shape) != shape:
                raise UserError(f"gradient file {path}: {name} has shape {tuple(t.shape)}, the model's (out, in) is {shape}")
            if not torch.isfinite(t).all():  # e.g. GBLM-Pruner's float16 l1 sums overflow to inf
                raise UserError(f"gradient file {path}: {name} ({norm}) has inf/nan values")
            pair[norm] = t.to(torch.float32)
        stats[name] = (pair["l1"], pair["l2"])
    return stats, info


def load_gradient_file(path: str | Path, model: nn.Module, *, legacy_norm: str = "auto",
                       legacy_scale: float = LEGACY_SCALE) -> GradientStats:
    """Precomputed gradient statistics for ``model`` (see :func:`read_gradient_file`)."""
    return read_gradient_file(path, model, legacy_norm=legacy_norm, legacy_scale=legacy_scale)[0]
