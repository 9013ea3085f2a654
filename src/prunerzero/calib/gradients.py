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

Also here: a disk cache keyed by model, data and seed (one safetensors file, filled chunk by
chunk and renamed when complete), resumable partial sums for long runs, a loader that reads a
cached file one linear at a time, and a loader for precomputed files (ours or GBLM-Pruner's /
Pruner-Zero's ``torch.save`` dicts).

Large models: ``chunk_layers=k`` computes G for k decoder layers at a time, accumulating on the
layers' own devices; see docs/LARGE_MODELS.md for the memory of each step.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import struct
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Iterator, Mapping

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn
from tqdm.auto import tqdm

from ..io import write_json as atomic_write_json
from ..errors import UserError
from .stats import GradientStats  # grad_l1, grad_l2 here: float32 on CPU
from ..models import cache_dir, find_decoder_layers, find_linears
from ..placement import input_device, module_device

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
    return [name for name in prunable_weights(model) if any(name.startswith(w) for w in wanted)]


# ---------------------------------------------------------------- computation

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
    modules = {name: m for name, m in prunable_weights(model).items() if name in acc}
    offloaded = [name for name, m in modules.items() if m.weight.device.type == "meta"]
    if offloaded:
        raise UserError(f"gradients need every decoder layer on a device, but {offloaded[0]} is offloaded to "
                        "cpu/disk by the device map; give it more --max-memory or more GPUs, or pass --gradients FILE")
    device = input_device(model)
    params = list(model.parameters())
    saved_flags = [p.requires_grad for p in params]
    saved_grads = {name: m.weight.grad for name, m in modules.items()}
    was_training = model.training
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
    modules = prunable_weights(model)
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
    return {name: out[name] for name in prunable_weights(model)}  # model order


# ---------------------------------------------------------------- cache


def _key_fields(model: nn.Module, calib_ids: torch.Tensor, model_id: str, data_id: str, seed: int,
                batch_size: int, dtype: torch.dtype | None) -> dict[str, str]:
    """What the cached numbers depend on. Not on chunking: chunked and unchunked runs share a file."""
    ids = calib_ids.detach().to("cpu", torch.int64).contiguous()
    shapes = [[name, *_out_in_shape(m)] for name, m in prunable_weights(model).items()]
    fields = {
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
    weights = {p.dtype for m in prunable_weights(model).values() for p in m.parameters(recurse=False)}
    if weights != {torch.float32}:  # bf16 / fp16 weights give other gradients; float32 keeps the old keys
        fields["weights_dtype"] = ",".join(sorted(str(d).removeprefix("torch.") for d in weights))
    return fields


def cache_key(fields: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]


class _GradientFileWriter:
    """A safetensors file laid out up front (every tensor's shape is known) and filled in place.

    The header is written first and the file extended to its full size; each finished chunk's
    tensors are then written at their offsets. So the whole result never has to sit in memory
    (550 GB of float32 l1/l2 for a 70B model), and the finished file is an ordinary safetensors
    file that ``safe_open`` reads one tensor at a time.
    """

    def __init__(self, path: Path, shapes: dict[str, tuple[int, int]], metadata: dict[str, str],
                 norms: tuple[str, str] = ("l1", "l2")) -> None:
        if sys.byteorder != "little":
            raise UserError("gradient files are written little-endian, as safetensors requires")
        self.path, self.norms = path, norms
        header: dict = {"__metadata__": metadata}
        self.offsets: dict[str, int] = {}
        offset = 0
        for name, shape in shapes.items():
            for norm in norms:
                nbytes = 4 * shape[0] * shape[1]
                header[f"{name}.{norm}"] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
                self.offsets[f"{name}.{norm}"] = offset
                offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # data aligned to 8 bytes
        self.header, self.size = struct.pack("<Q", len(raw)) + raw, offset

    def create(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "wb") as f:
            f.write(self.header)
            f.truncate(len(self.header) + self.size)  # sparse: untouched tensors read as zeros

    def write(self, stats: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Write the pairs of some linears at their places (one tensor at a time through CPU memory)
        and flush them to disk."""
        with open(self.path, "r+b") as f:
            for name, pair in stats.items():
                for norm, tensor in zip(self.norms, pair):
                    f.seek(len(self.header) + self.offsets[f"{name}.{norm}"])
                    f.write(tensor.detach().to("cpu", torch.float32).contiguous().numpy().data)
            f.flush()
            os.fsync(f.fileno())


def _checkpoint(path: Path, acc: Accumulators, metadata: dict[str, str]) -> None:
    """Running sums to ``path``, atomically, one tensor at a time through CPU memory."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        writer = _GradientFileWriter(tmp, {name: tuple(l1.shape) for name, (l1, _) in acc.items()}, metadata,
                                     norms=("l1", "sumsq"))
        writer.create()
        writer.write(acc)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _read_metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), "pt") as f:
        return f.metadata() or {}


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
    chunk_layers: int | None = None,
) -> tuple[GradientStats, dict]:
    """Gradient statistics from ``<cache>/<key>.safetensors``, computing and caching them if absent.

    ``cache`` defaults to ``cache_dir()/"gradients"``. The key hashes model_id, data_id, nsamples,
    seqlen, seed, batch_size, dtype, the calibration ids' bytes and the prunable weights' shapes and
    dtype (not their values: pass a model_id that names the weights), never ``chunk_layers``.

    While computing (``chunk_layers`` as in :func:`compute_gradient_stats`):
      ``<key>.partial.safetensors``  the result file, laid out in full; finished chunks are
                                     written into it (and leave memory)
      ``<key>.progress.json``        which decoder layers in it are final
      ``<key>.chunk.safetensors``    running sums of the chunk in progress, saved every
                                     ``checkpoint_every`` samples and/or ``checkpoint_seconds``
                                     (stretched so writing costs at most ~10% of the run)
    A later call picks all of it up, whatever its own chunking; the partial file is renamed to
    the final one when every layer is done. ``on_progress`` gets the number of (sample, chunk)
    passes done after every batch.
    Returns (stats, info): stats a :class:`GradientFile` that reads the cached file one linear at a
    time, info = {cache_file, cached, seconds, nsamples, seqlen, resumed_from, resumed_layers, chunks}.
    """
    calib_ids = _check_ids(calib_ids)
    if batch_size < 1:
        raise UserError(f"gradient batch size must be >= 1, got {batch_size}")
    t0 = time.monotonic()
    fields = _key_fields(model, calib_ids, model_id, data_id, seed, batch_size, dtype)
    folder = Path(cache) if cache is not None else cache_dir() / "gradients"
    key = cache_key(fields)
    final = folder / f"{key}.safetensors"
    partial, progress_file, chunk_file = (folder / f"{key}.{s}" for s in ("partial.safetensors", "progress.json",
                                                                          "chunk.safetensors"))
    n, seqlen = calib_ids.shape
    info = {"cache_file": str(final), "cached": False, "seconds": 0.0, "nsamples": n, "seqlen": seqlen,
            "resumed_from": 0, "resumed_layers": 0, "chunks": 0}
    if final.exists():
        stats = load_gradient_file(final, model)
        info.update(cached=True, seconds=time.monotonic() - t0)
        return stats, info

    modules = prunable_weights(model)
    _, layers = find_decoder_layers(model)
    meta = {**fields, "l1": "sum_n |dL_n/dW|", "l2": "sqrt(sum_n (dL_n/dW)^2)", "scale": "1",
            "layout": "(out, in) float32", "loss": "mean next-token cross-entropy per sample"}
    writer = _GradientFileWriter(partial, {name: _out_in_shape(m) for name, m in modules.items()}, meta)

    complete: set[int] = set()
    try:
        saved = json.loads(progress_file.read_text())
        if saved["fields"] != fields or _read_metadata(partial) != meta:
            raise ValueError("key fields differ")
        complete = {int(i) for i in saved["complete_layers"]}
    except Exception as exc:  # nothing to resume, or unreadable / foreign: start over
        if partial.exists() or progress_file.exists():
            log.warning("starting gradients afresh: %s / %s not resumable (%s)", partial.name, progress_file.name, exc)
        writer.create()
        atomic_write_json(progress_file, {"fields": fields, "complete_layers": []})

    resumed: tuple[list[int], int, Accumulators] | None = None
    if chunk_file.exists():
        try:
            with safe_open(str(chunk_file), "pt") as f:
                cmeta = f.metadata() or {}
                if any(cmeta.get(k) != v for k, v in fields.items()):
                    raise ValueError("key fields differ")
                chunk = [int(i) for i in json.loads(cmeta["layers"])]
                if complete & set(chunk):
                    raise ValueError("its layers are already complete")
                acc = _zeros(model, _names_of_layers(model, chunk), on_weight_device=chunk_layers is not None)
                for name, (l1, sumsq) in acc.items():
                    l1.copy_(f.get_tensor(f"{name}.l1"))
                    sumsq.copy_(f.get_tensor(f"{name}.sumsq"))
                resumed = (chunk, int(cmeta["done"]), acc)
            log.info("resuming gradients of layers %s from %s (%d/%d samples done)", chunk, chunk_file, resumed[1], n)
        except Exception as exc:
            log.warning("ignoring gradient checkpoint %s (%s)", chunk_file, exc)
            resumed = None
    remaining = [i for i in range(len(layers)) if i not in complete and not (resumed and i in resumed[0])]
    plan: list[tuple[list[int], int, Accumulators | None]] = [resumed] if resumed else []
    plan += [(chunk, 0, None) for chunk in layer_chunks(model, chunk_layers, remaining)]
    info.update(resumed_from=resumed[1] if resumed else 0, resumed_layers=len(complete), chunks=len(plan))

    steps = {"base": 0}
    state = {"last_done": 0, "last_time": time.monotonic(), "write_s": 0.0}
    bar = tqdm(total=n * len(plan), initial=resumed[1] if resumed else 0, desc="gradients", unit="sample",
               disable=not progress)
    try:
        for chunk, start, acc in plan:
            if acc is None:
                acc = _zeros(model, _names_of_layers(model, chunk), on_weight_device=chunk_layers is not None)
            state.update(last_done=start, last_time=time.monotonic())

            def after_batch(done: int, chunk=chunk, acc=acc) -> None:
                now = time.monotonic()
                due_count = checkpoint_every is not None and done - state["last_done"] >= checkpoint_every
                due_time = now - state["last_time"] >= max(checkpoint_seconds, 10 * state["write_s"])
                if done < n and (due_count or due_time):
                    _checkpoint(chunk_file, acc, {**fields, "done": str(done), "layers": json.dumps(chunk)})
                    state.update(last_done=done, last_time=time.monotonic(), write_s=time.monotonic() - now)
                if on_progress is not None:
                    on_progress(steps["base"] + done)

            if start < n:
                _accumulate(model, calib_ids, acc, start=start, batch_size=batch_size, dtype=dtype, bar=bar,
                            after_batch=after_batch)
            writer.write({name: (l1, sumsq.sqrt_()) for name, (l1, sumsq) in acc.items()})
            complete.update(chunk)
            atomic_write_json(progress_file, {"fields": fields, "complete_layers": sorted(complete)})
            chunk_file.unlink(missing_ok=True)
            steps["base"] += n
            del acc
    finally:
        bar.close()
    os.replace(partial, final)
    progress_file.unlink(missing_ok=True)
    info["seconds"] = time.monotonic() - t0
    return load_gradient_file(final, model), info


# ---------------------------------------------------------------- precomputed files

_LEGACY_KEY = re.compile(r"^(?P<linear>.+)_layer_(?P<index>\d+)$")  # "self_attn.q_proj_layer_0"


class GradientFile(Mapping):
    """Our safetensors gradient file as GradientStats, read one linear at a time (``safe_open``
    maps the file; only the tensors asked for are read into memory). Names and shapes are checked
    against the model when opened; values are checked for inf/nan when read."""

    def __init__(self, path: Path, names: dict[str, str], shapes: dict[str, tuple[int, int]]) -> None:
        self.path = path
        self._names = names  # "<linear>.l1" / ".l2" -> key in the file
        self._shapes = shapes

    def __getitem__(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if name not in self._shapes:
            raise KeyError(name)
        pair = []
        with safe_open(str(self.path), "pt") as f:
            for norm in ("l1", "l2"):
                t = f.get_tensor(self._names[f"{name}.{norm}"]).to(torch.float32)
                if not torch.isfinite(t).all():
                    raise UserError(f"gradient file {self.path}: {name} ({norm}) has inf/nan values")
                pair.append(t)
        return pair[0], pair[1]

    def __iter__(self) -> Iterator[str]:
        return iter(self._shapes)

    def __len__(self) -> int:
        return len(self._shapes)

    def materialize(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return {name: self[name] for name in self}


def _open_safetensors(path: Path, expected: dict[str, nn.Module]) -> tuple[GradientFile, list[str]]:
    try:
        with safe_open(str(path), "pt") as f:
            shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    except Exception as exc:
        raise UserError(f"cannot read gradient file {path}: {exc}") from None
    by_norm: dict[str, dict[str, str]] = {"l1": {}, "l2": {}}
    for key in shapes:
        base, _, norm = key.rpartition(".")
        if norm in by_norm:
            by_norm[norm][base] = key
    norms = [k for k in ("l1", "l2") if by_norm[k]]
    if not norms:
        raise UserError(f"gradient file {path} holds no gradient tensors")
    if len(norms) == 1:
        log.warning("gradient file %s has only %s norms; using them for %s too", path, norms[0],
                    "l2" if norms[0] == "l1" else "l1")
    names: dict[str, str] = {}
    for name, module in expected.items():
        shape = _out_in_shape(module)
        for norm in ("l1", "l2"):
            source = norm if norm in norms else norms[0]
            key = by_norm[source].get(name)
            if key is None:
                raise UserError(f"gradient file {path}: no {source} gradients for {name}")
            if shapes[key] != shape:
                raise UserError(f"gradient file {path}: {name} has shape {shapes[key]}, the model's (out, in) is {shape}")
            names[f"{name}.{norm}"] = key
    return GradientFile(path, names, {name: _out_in_shape(m) for name, m in expected.items()}), norms


def read_gradient_file(path: str | Path, model: nn.Module, *, legacy_norm: str = "auto",
                       legacy_scale: float = LEGACY_SCALE) -> tuple[GradientStats, dict]:
    """Read and validate a gradient file; returns (stats, info about what the file held).

    Accepted: our safetensors (keys "<full name>.l1" / ".l2", unscaled; returned as a
    :class:`GradientFile` that reads one linear at a time), or a ``torch.save`` dict as GBLM-Pruner /
    Pruner-Zero write it: one norm per file, keys "<linear>_layer_<i>" (or full names), float16
    (out, in), multiplied by ``legacy_scale`` (their --scale, default 100), which is divided out
    here. ``legacy_norm`` "auto" reads l1 vs l2 from the file name ("..._norm_l1_...", else l2).
    A file with one norm fills both l1 and l2 with it (info["norms"]).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"gradient file not found: {path}")
    expected = prunable_weights(model)
    layers_name, _ = find_decoder_layers(model)
    info: dict = {"file": str(path)}
    if path.suffix == ".safetensors":
        lazy, norms = _open_safetensors(path, expected)
        info.update(format=FORMAT, scale_removed=1.0, norms=norms)
        return lazy, info
    by_norm: dict[str, dict[str, torch.Tensor]] = {"l1": {}, "l2": {}}
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

    stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
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
