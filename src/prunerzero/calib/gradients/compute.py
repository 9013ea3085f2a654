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

Large models: ``chunk_layers=k`` computes G for k decoder layers at a time, accumulating on the
layers' own devices; see docs/LARGE_MODELS.md for the memory of each step. The disk cache around
this is ``cache``; files computed elsewhere are read by ``files``.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ...errors import UserError
from ...models import find_decoder_layers, prunable_linears
from ...placement import input_device, module_device
from ...precision import bf16_autocast
from ..stats import GradientStats  # grad_l1, grad_l2 here: float32 on CPU

# Called after every batch with the number of samples done (a progress hook; tests raise from it).
ProgressHook = Callable[[int], None]

# ---------------------------------------------------------------- structure


def _out_in_shape(module: nn.Module) -> tuple[int, int]:
    shape = tuple(module.weight.shape)
    return shape if isinstance(module, nn.Linear) else (shape[1], shape[0])  # Conv1D: (in, out)


def _check_ids(calib_ids: torch.Tensor) -> torch.Tensor:
    if not isinstance(calib_ids, torch.Tensor) or calib_ids.dim() != 2 or calib_ids.dtype.is_floating_point:
        raise UserError("calibration ids must be an integer tensor of shape (nsamples, seqlen)")
    if calib_ids.shape[0] < 1 or calib_ids.shape[1] < 2:
        raise UserError(f"gradients need >= 1 sample of >= 2 tokens, got shape {tuple(calib_ids.shape)}")
    return calib_ids.long()


def layer_chunks(model: nn.Module, chunk_layers: int | None, layers: list[int] | None = None) -> list[list[int]]:
    """Decoder-layer indices in chunks holding at most `chunk_layers` layers *per device* (None:
    one chunk with every layer). On one device: consecutive groups of `chunk_layers`. With layers
    spread over GPUs, chunk c takes the c-th group from every GPU, so all GPUs hold accumulators at
    once and the number of chunks (full forward passes per sample) is set by the fullest GPU."""
    _, decoder = find_decoder_layers(model)
    indices = list(range(len(decoder))) if layers is None else list(layers)
    if chunk_layers is None:
        return [indices] if indices else []
    if chunk_layers < 1:
        raise UserError(f"gradient chunks must hold >= 1 decoder layer, got {chunk_layers}")
    by_device: dict[str, list[int]] = {}
    for i in indices:
        by_device.setdefault(str(module_device(decoder[i])), []).append(i)
    n_chunks = max((-(-len(group) // chunk_layers) for group in by_device.values()), default=0)
    return [sorted(i for group in by_device.values() for i in group[c * chunk_layers : (c + 1) * chunk_layers])
            for c in range(n_chunks)]


def _names_of_layers(model: nn.Module, layer_indices: list[int]) -> list[str]:
    layers_name, _ = find_decoder_layers(model)
    wanted = {f"{layers_name}.{i}." for i in layer_indices}
    return [name for name in prunable_linears(model) if any(name.startswith(w) for w in wanted)]


# Running sums of one set of weights: name -> (sum |g|, sum g^2), (out, in) float32 on any device.
Accumulators = dict[str, tuple[torch.Tensor, torch.Tensor]]


def _lm_loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over all predicted tokens of ``ids`` (B, T).

    Computed here rather than via ``labels=`` so every causal LM behaves alike (same as HF's
    shift-by-one loss with labels = input ids, which is what GBLM-Pruner passes).
    """
    logits = model(input_ids=ids, use_cache=False).logits  # (B, T, V)
    logits = logits[:, :-1].float().reshape(-1, logits.shape[-1])  # (B*(T-1), V)
    return F.cross_entropy(logits, ids[:, 1:].reshape(-1).to(logits.device))


def _accumulate(
    model: nn.Module,
    calib_ids: torch.Tensor,
    acc: Accumulators,
    *,
    start: int = 0,
    batch_size: int = 1,
    dtype: torch.dtype | None = None,
    bar: tqdm | None = None,
    after_batch: Callable[[int], None] | None = None,
) -> None:
    """Add |g| and g^2 of samples ``start:`` into ``acc`` for the weights it names.

    Only those weights get ``requires_grad``, so the backward pass stops at the lowest of their
    layers and no other gradient is ever stored. Each gradient is folded into its accumulators
    (on whatever device they live) the moment backward produces it and then freed, so at most
    one weight's gradient exists at a time. All flags, ``.grad`` and train/eval mode are put back
    afterwards, even when interrupted.
    """
    modules = {name: m for name, m in prunable_linears(model).items() if name in acc}
    offloaded = [name for name, m in modules.items() if m.weight.device.type == "meta"]
    if offloaded:
        raise UserError(f"gradients need every decoder layer on a device, but {offloaded[0]} is offloaded to "
                        "cpu/disk by the device map; give it more --max-memory or more GPUs, or pass --gradients FILE")
    device = input_device(model)
    params = list(model.parameters())
    saved_flags = [p.requires_grad for p in params]
    saved_grads = {name: m.weight.grad for name, m in modules.items()}
    was_training = model.training
    if dtype == torch.bfloat16:
        autocast = bf16_autocast(device.type)  # fast on CPUs without bf16 hardware too
    else:
        autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()

    def fold(name: str, module: nn.Module) -> Callable[[torch.Tensor], None]:
        l1, sumsq = acc[name]

        def hook(weight: torch.Tensor) -> None:
            grad = weight.grad if isinstance(module, nn.Linear) else weight.grad.t()  # (out, in)
            g = grad.detach().to(l1.device, torch.float32)
            l1.add_(g.abs())
            sumsq.addcmul_(g, g)
            weight.grad = None  # fresh gradient per batch, never summed across batches

        return hook

    handles = []
    n = calib_ids.shape[0]
    try:
        model.eval()
        for p in params:
            p.requires_grad_(False)
        for name, m in modules.items():
            m.weight.grad = None
            m.weight.requires_grad_(True)
            handles.append(m.weight.register_post_accumulate_grad_hook(fold(name, m)))
        for lo in range(start, n, batch_size):
            ids = calib_ids[lo : lo + batch_size].to(device)  # (b, T)
            with autocast:
                loss = _lm_loss(model, ids)
            loss.backward()
            done = min(lo + batch_size, n)
            if bar is not None:
                bar.update(done - lo)
            if after_batch is not None:
                after_batch(done)
    finally:
        for h in handles:
            h.remove()
        for p, flag in zip(params, saved_flags):
            p.requires_grad_(flag)
        for name, m in modules.items():
            m.weight.grad = saved_grads[name]
        model.train(was_training)


def _zeros(model: nn.Module, names: list[str], on_weight_device: bool) -> Accumulators:
    """float32 zeros (out, in) per weight: on the CPU, or on the device of each weight."""
    modules = prunable_linears(model)
    out: Accumulators = {}
    for name in names:
        device = modules[name].weight.device if on_weight_device else torch.device("cpu")
        shape = _out_in_shape(modules[name])
        out[name] = (torch.zeros(shape, device=device), torch.zeros(shape, device=device))
    return out


def compute_gradient_stats(
    model: nn.Module,
    calib_ids: torch.Tensor,
    *,
    batch_size: int = 1,
    dtype: torch.dtype | None = None,
    progress: bool = True,
    chunk_layers: int | None = None,
) -> GradientStats:
    """Per-weight l1 = sum|g| and l2 = sqrt(sum g^2) over calibration samples, unscaled, on the CPU.

    ``calib_ids`` (n, seqlen). With ``batch_size=1`` (the reference) g is each sample's gradient.
    With ``batch_size=b>1`` g is the gradient of the batch-mean loss, so the norms are over n/b
    batch gradients: faster, but an approximation (averaging shrinks them by roughly 1/sqrt(b)
    and mixes samples' signs). ``dtype`` (e.g. torch.bfloat16) runs forward/backward under
    autocast; the accumulation stays float32.

    ``chunk_layers`` None: every weight at once, accumulators on the CPU (2x the prunable weights
    in float32). ``chunk_layers=k``: k decoder layers per device at a time (see
    :func:`layer_chunks`), their accumulators on their own device, moved to the CPU when the
    chunk is done; one forward and a partial backward per sample and chunk. Same numbers either
    way (docs/LARGE_MODELS.md has the memory of each).
    """
    calib_ids = _check_ids(calib_ids)
    if batch_size < 1:
        raise UserError(f"gradient batch size must be >= 1, got {batch_size}")
    chunks = layer_chunks(model, chunk_layers)
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    n = calib_ids.shape[0]
    with tqdm(total=n * len(chunks), desc="gradients", unit="sample", disable=not progress) as bar:
        for chunk in chunks:
            acc = _zeros(model, _names_of_layers(model, chunk), on_weight_device=chunk_layers is not None)
            _accumulate(model, calib_ids, acc, batch_size=batch_size, dtype=dtype, bar=bar)
            for name, (l1, sumsq) in acc.items():
                out[name] = (l1.cpu(), sumsq.sqrt_().cpu())
            del acc
    return {name: out[name] for name in prunable_linears(model)}  # model order
